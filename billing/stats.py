"""Writes the dashboard rollups of billing.models_stats. Called once per provider call from the
ledger's transaction (billing.ledger.usage_record), so a call and its statistics commit together."""

from __future__ import annotations

import bisect
import datetime
import uuid

from django.db import IntegrityError, models, transaction

from .models_stats import LATENCY_BUCKETS_MS, KeyDailyStats, LatencyBucket


def latency_bucket(ms: int) -> int:
    """The index of the bucket holding `ms` (bounds are inclusive upper limits)."""
    return bisect.bisect_left(LATENCY_BUCKETS_MS, max(0, int(ms)))


def _increment(model: type[models.Model], *, keys: dict, increments: dict[str, int]) -> None:
    """Add `increments` to the row named by `keys`, creating it on first use.

    A conditional UPDATE first: the common case is one statement, and concurrent writers add
    rather than overwrite. A first writer creates the row in a savepoint; losing that race to
    another first writer (IntegrityError) just means the row now exists, so update it."""
    updates = {name: models.F(name) + n for name, n in increments.items() if n}
    if not updates:
        return
    if model.objects.filter(**keys).update(**updates):
        return
    try:
        with transaction.atomic():
            model.objects.create(**keys, **increments)
    except IntegrityError:
        model.objects.filter(**keys).update(**updates)


def stats_record_call(
    *,
    day: datetime.date,
    provider: str,
    key_id: uuid.UUID | None,
    ttft_ms: int | None,
    latency_ms: int | None,
    outcome: str,
) -> None:
    """Count one provider call in the per-key rollup and its latencies in the histograms.

    `outcome` is a UsageRecord.Outcome value ("ok", "cancelled", "error"). Latencies that the
    call never reached (None) are not counted, so percentiles describe calls that had them."""
    where = {"day": day, "provider": provider, "key_id": key_id}
    _increment(
        KeyDailyStats,
        keys=where,
        increments={"requests": 1, "errors": int(outcome == "error"), "cancelled": int(outcome == "cancelled")},
    )
    for metric, value in ((LatencyBucket.Metric.TTFT, ttft_ms), (LatencyBucket.Metric.TOTAL, latency_ms)):
        if value is not None:
            _increment(
                LatencyBucket,
                keys={**where, "metric": metric, "bucket": latency_bucket(value)},
                increments={"count": 1},
            )
