"""The dashboard rollups' writer, and percentiles from bucket counts."""

import datetime
import threading
import uuid

import pytest
from django.db import connection, transaction

from billing.dashboard import DashboardRange, dashboard_by_key, dashboard_latency, percentile_ms
from billing.models_stats import LATENCY_BUCKETS_MS, KeyDailyStats, LatencyBucket
from billing.stats import latency_bucket, stats_record_call

DAY = datetime.date(2025, 6, 1)


def test_latency_buckets_are_inclusive_upper_bounds():
    assert latency_bucket(0) == 0
    assert latency_bucket(100) == 0
    assert latency_bucket(101) == 1
    assert latency_bucket(10**9) == len(LATENCY_BUCKETS_MS)  # the open bucket


def test_percentiles_come_from_cumulative_bucket_counts():
    assert percentile_ms({}, 0.5) is None
    counts = {0: 50, 5: 45, 9: 5}  # 50 calls <=100ms, 45 <=1000ms, 5 <=5000ms
    assert percentile_ms(counts, 0.50) == 100
    assert percentile_ms(counts, 0.95) == 1_000
    assert percentile_ms(counts, 0.99) == 5_000
    assert percentile_ms({len(LATENCY_BUCKETS_MS): 3}, 0.5) == -LATENCY_BUCKETS_MS[-1]  # "more than"


def test_stats_record_call_counts_per_key_and_keyless(db):
    key = uuid.uuid4()
    for outcome in ["ok", "ok", "error", "cancelled"]:
        stats_record_call(day=DAY, provider="openai", key_id=key, ttft_ms=150, latency_ms=900, outcome=outcome)
    stats_record_call(day=DAY, provider="demo", key_id=None, ttft_ms=None, latency_ms=5, outcome="ok")
    stats_record_call(day=DAY, provider="demo", key_id=None, ttft_ms=None, latency_ms=5, outcome="ok")
    row = KeyDailyStats.objects.get(key_id=key)
    assert (row.requests, row.errors, row.cancelled) == (4, 1, 1)
    keyless = KeyDailyStats.objects.get(provider="demo")  # one row, however many calls
    assert keyless.requests == 2 and keyless.key_id is None
    assert LatencyBucket.objects.get(key_id=key, metric="ttft").count == 4
    assert LatencyBucket.objects.get(key_id=key, metric="total").bucket == latency_bucket(900)
    assert not LatencyBucket.objects.filter(provider="demo", metric="ttft").exists()  # never reached


def test_dashboard_reads_what_the_writer_wrote(db):
    key = uuid.uuid4()
    for ms in [80] * 60 + [700] * 35 + [4000] * 5:
        stats_record_call(day=DAY, provider="anthropic", key_id=key, ttft_ms=ms, latency_ms=ms * 2, outcome="ok")
    stats_record_call(day=DAY + datetime.timedelta(days=5), provider="anthropic", key_id=key, ttft_ms=1, latency_ms=1, outcome="ok")
    rng = DashboardRange(DAY, DAY, "custom")
    [latency] = dashboard_latency(rng=rng)
    assert latency["calls"] == 100
    assert (latency["ttft_p50"], latency["ttft_p95"]) == (100, 750)
    assert (latency["total_p50"], latency["total_p95"]) == (200, 1_500)
    [by_key] = dashboard_by_key(rng=rng)
    assert by_key["requests"] == 100 and by_key["name"] is None  # no such key row: shown as deleted


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_calls_of_a_day_add_up_instead_of_failing(needs_postgres):
    """Two calls racing to create the same rollup rows: the loser of the INSERT updates instead."""
    key = uuid.uuid4()
    barrier = threading.Barrier(4)
    errors = []

    def call():
        try:
            barrier.wait()
            with transaction.atomic():  # as inside the ledger's transaction
                stats_record_call(day=DAY, provider="openai", key_id=key, ttft_ms=300, latency_ms=900, outcome="ok")
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert KeyDailyStats.objects.get(key_id=key).requests == 4
    assert LatencyBucket.objects.get(key_id=key, metric="total").count == 4
