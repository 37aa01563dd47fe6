"""The ledger writes the dashboard's per-key and latency rollups in its own transaction, on the
same UTC day as the DailyUsage row, and a repeated record (same message and attempt) counts once."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from billing import keys
from billing.ledger import usage_record
from billing.models import DailyUsage
from billing.models_stats import KeyDailyStats, LatencyBucket

pytestmark = pytest.mark.django_db(transaction=True)


def _record(user, key, **extra):
    values = {
        "user": user, "conversation_id": None, "message_id": None, "attempt": 1, "provider": "openai",
        "model": "gpt-4o-mini", "key_id": key.pk, "input_tokens": 10, "output_tokens": 5, "cached_tokens": 0,
        "cost": Decimal("0.0000100000"), "estimated": False, "ttft_ms": 300, "latency_ms": 900, "outcome": "ok",
    }
    values.update(extra)
    return usage_record(**values)


def test_a_ledger_row_brings_its_key_and_latency_statistics_once(make_user, fake_provider):
    user = make_user("stats")
    key = keys.key_add(provider="openai", name="stats-key", secret="sk-stats-0001", base_url=fake_provider.openai_base_url)
    message_id = uuid.uuid4()
    late_evening = dt.datetime(2026, 5, 1, 23, 59, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))  # 2 May in UTC

    _record(user, key, message_id=message_id, at=late_evening)
    _record(user, key, message_id=message_id, at=late_evening)  # a repeat: the same row, no second count
    _record(user, key, message_id=message_id, attempt=2, outcome="error", ttft_ms=None, at=late_evening)

    (daily,) = DailyUsage.objects.all()
    (stats,) = KeyDailyStats.objects.all()
    assert daily.day == stats.day == dt.date(2026, 5, 2)
    assert (stats.key_id, stats.requests, stats.errors) == (key.pk, 2, 1)
    assert sum(LatencyBucket.objects.filter(metric="ttft").values_list("count", flat=True)) == 1
    assert sum(LatencyBucket.objects.filter(metric="total").values_list("count", flat=True)) == 2
