"""Fixtures for the admin tests: a ledger with its rollups, and operators of each kind.

`billing.ledger.usage_record` (billing's) is still a stub here, so `make_ledger` writes the
ledger rows with bulk_create and derives the three rollups from those very rows, the way the
ledger's transaction does one call at a time (DailyUsage by UTC day x user x team x provider x
model; KeyDailyStats and LatencyBucket through billing.stats.latency_bucket)."""

import datetime
import random
from collections import defaultdict
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import data_rights
from accounts.models import DataExport, ErasureRequest, Team, TeamMembership
from billing import budgets
from billing.models import Budget, DailyUsage, ProviderKey, UsageRecord
from billing.models_stats import KeyDailyStats, LatencyBucket
from billing.stats import latency_bucket

PROVIDERS_MODELS = [("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-sonnet-4-5"), ("demo", "echo")]


def _rollups(records: list[UsageRecord]) -> None:
    """Rebuild the rollups from these ledger rows (all of them: a second batch adds to the first)."""
    for model in (DailyUsage, KeyDailyStats, LatencyBucket):
        model.objects.all().delete()
    daily: dict = defaultdict(lambda: defaultdict(Decimal))
    keys: dict = defaultdict(lambda: defaultdict(int))
    buckets: dict = defaultdict(int)
    for r in records:
        day = timezone.localdate(r.created_at)  # the site's TIME_ZONE (UTC), as the ledger does
        d = daily[(day, r.user_id, r.team_id, r.provider, r.model)]
        d["requests"] += 1
        d["errors"] += r.outcome == "error"
        d["input_tokens"] += r.input_tokens
        d["output_tokens"] += r.output_tokens
        d["cached_tokens"] += r.cached_tokens
        d["cost"] += r.cost
        k = keys[(day, r.provider, r.key_id)]
        k["requests"] += 1
        k["errors"] += r.outcome == "error"
        k["cancelled"] += r.outcome == "cancelled"
        for metric, value in (("ttft", r.ttft_ms), ("total", r.latency_ms)):
            if value is not None:
                buckets[(day, r.provider, r.key_id, metric, latency_bucket(value))] += 1
    DailyUsage.objects.bulk_create(
        [
            DailyUsage(day=day, user_id=u, team_id=t, provider=p, model=m,
                       requests=int(v["requests"]), errors=int(v["errors"]), input_tokens=int(v["input_tokens"]),
                       output_tokens=int(v["output_tokens"]), cached_tokens=int(v["cached_tokens"]), cost=v["cost"])
            for (day, u, t, p, m), v in daily.items()
        ],
        batch_size=2000,
    )
    KeyDailyStats.objects.bulk_create(
        [KeyDailyStats(day=day, provider=p, key_id=k, **v) for (day, p, k), v in keys.items()], batch_size=2000
    )
    LatencyBucket.objects.bulk_create(
        [LatencyBucket(day=day, provider=p, key_id=k, metric=m, bucket=b, count=n)
         for (day, p, k, m, b), n in buckets.items()],
        batch_size=2000,
    )


@pytest.fixture
def make_ledger(db):
    """make_ledger(n, users=[...], teams=[...], days=30) -> list of UsageRecord (saved)."""

    def make(n: int, *, users, teams=(), keys=(), days: int = 30, seed: int = 7, end: datetime.datetime | None = None):
        rnd = random.Random(seed)
        end = end or timezone.now()
        span = days * 86400
        records = []
        for _ in range(n):
            provider, model = rnd.choice(PROVIDERS_MODELS)
            user = rnd.choice(users)
            team = rnd.choice([*teams, None]) if teams else None
            key = rnd.choice([k for k in keys if k.provider == provider] or [None])
            outcome = rnd.choices(["ok", "error", "cancelled"], weights=[90, 7, 3])[0]
            records.append(
                UsageRecord(
                    created_at=end - datetime.timedelta(seconds=rnd.randrange(span)),
                    user=user, team=team, provider=provider, model=model, key=key,
                    input_tokens=rnd.randrange(2000), output_tokens=rnd.randrange(800),
                    cost=Decimal(rnd.randrange(1, 10**8)) / Decimal(10**10),
                    ttft_ms=rnd.randrange(50, 4000) if outcome != "error" else None,
                    latency_ms=rnd.randrange(200, 40_000), outcome=outcome,
                    error_kind="server" if outcome == "error" else "",
                )  # fmt: skip
            )
        UsageRecord.objects.bulk_create(records, batch_size=2000)
        _rollups(list(UsageRecord.objects.all()))
        return records

    return make


@pytest.fixture
def teams(db):
    return [Team.objects.create(name="Physics"), Team.objects.create(name="Chemistry")]


@pytest.fixture
def members(make_user, teams):
    people = [make_user(f"member{i}") for i in range(4)]
    for i, person in enumerate(people):
        TeamMembership.objects.create(team=teams[i % 2], user=person)
    return people


@pytest.fixture
def provider_keys(db):
    return [
        ProviderKey.objects.create(name="oa-main", provider="openai", secret_encrypted="x", secret_last4="AAAA"),
        ProviderKey.objects.create(name="an-main", provider="anthropic", secret_encrypted="x", secret_last4="BBBB"),
    ]


@pytest.fixture
def superuser(make_user):
    return make_user("root", is_staff=True, is_superuser=True)


@pytest.fixture
def su_client(client, superuser):
    client.force_login(superuser)
    return client


# `billing.budgets.budget_set` and `accounts.data_rights.*` belong to other branches and are stubs
# here: these fixtures monkeypatch a simple behaviour (create the row the real service would).
@pytest.fixture
def fake_budget_set(monkeypatch):
    calls = []

    def budget_set(*, user=None, team=None, period, limit, actor=None):
        calls.append({"user": user, "team": team, "period": period, "limit": limit, "actor": actor})
        budget, _ = Budget.objects.update_or_create(user=user, team=team, period=period, defaults={"limit": limit})
        return budget

    monkeypatch.setattr(budgets, "budget_set", budget_set, raising=False)
    return calls


@pytest.fixture
def fake_rights(monkeypatch):
    calls = {"export": [], "erase": []}

    def export_request(*, user):
        calls["export"].append(user.pk)
        return DataExport.objects.create(user=user)

    def erasure_preview(*, user):
        return {"conversations": 3, "messages": 42, "exports": 1}

    def erasure_request(*, user, requested_by=None):
        calls["erase"].append((user.pk, getattr(requested_by, "pk", None)))
        return ErasureRequest.objects.create(user_id=user.pk, requested_by_id=getattr(requested_by, "pk", None))

    monkeypatch.setattr(data_rights, "export_request", export_request)
    monkeypatch.setattr(data_rights, "erasure_preview", erasure_preview)
    monkeypatch.setattr(data_rights, "erasure_request", erasure_request)
    return calls
