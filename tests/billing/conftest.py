from decimal import Decimal

import pytest

from accounts.models import Team, TeamMembership


@pytest.fixture
def make_team(db):
    def make(name: str, *members, **extra):
        team = Team.objects.create(name=name, **extra)
        for member in members:
            TeamMembership.objects.create(team=team, user=member)
        return team

    return make


def usage_kwargs(user, **overrides):
    """Arguments of one ordinary ledger record; tests override what they look at."""
    values = {
        "user": user,
        "conversation_id": None,
        "message_id": None,
        "attempt": 1,
        "provider": "openai",
        "model": "gpt-4o-mini",
        "key_id": None,
        "input_tokens": 100,
        "output_tokens": 50,
        "cached_tokens": 0,
        "cost": Decimal("0.0000450000"),
        "estimated": False,
        "ttft_ms": 120,
        "latency_ms": 900,
        "outcome": "ok",
    }
    values.update(overrides)
    return values
