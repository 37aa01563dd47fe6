"""Benchmark of the data rights: export and erasure of a user with N messages.

    python bench/bench_data_rights.py [--messages 1000,10000]

Runs against a throw-away test database made from DATABASE_URL (SQLite by default; set
DATABASE_URL=postgres://… to measure PostgreSQL) and a temporary MEDIA_ROOT. For each size it
measures, on separate but identical users, the wall time (without tracing) and the peak Python
memory (tracemalloc, which slows the run, so its time is not reported). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
os.environ.setdefault("MEDIA_ROOT", tempfile.mkdtemp(prefix="parley-bench-media-"))
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-" + uuid.uuid4().hex)

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

MESSAGES_PER_CONVERSATION = 200
TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit; sed do eiusmod tempor. " * 5).strip()


def build_user(n_messages: int):
    """A user with `n_messages` messages in conversations of 200, a ledger row per reply."""
    from billing.models import DailyUsage, UsageRecord
    from conversations.models import Conversation, Message

    user = get_user_model().objects.create_user(username=f"bench-{uuid.uuid4().hex[:8]}", email="", password=None)
    start = timezone.now() - timedelta(days=3)
    messages, usage = [], []
    for c in range((n_messages + MESSAGES_PER_CONVERSATION - 1) // MESSAGES_PER_CONVERSATION):
        conversation = Conversation.objects.create(owner=user, title=f"Bench {c}", model="demo:echo", created_at=start)
        count = min(MESSAGES_PER_CONVERSATION, n_messages - c * MESSAGES_PER_CONVERSATION)
        for m in range(count):
            assistant = m % 2 == 1
            message = Message(
                conversation=conversation,
                role="assistant" if assistant else "user",
                content=f"{m}: {TEXT}",
                model="demo:echo" if assistant else "",
                input_tokens=120,
                output_tokens=80 if assistant else 0,
                cost=Decimal("0.0000450000") if assistant else Decimal("0"),
                created_at=start + timedelta(seconds=c * 1000 + m),
            )
            messages.append(message)
            if assistant:
                usage.append(
                    UsageRecord(
                        user=user, conversation_id=conversation.id, message_id=message.id, provider="demo", model="echo",
                        input_tokens=120, output_tokens=80, cost=Decimal("0.0000450000"), outcome="ok",
                    )
                )
    Message.objects.bulk_create(messages, batch_size=1000)
    UsageRecord.objects.bulk_create(usage, batch_size=1000)
    DailyUsage.objects.create(
        day=start.date(), user=user, provider="demo", model="echo", requests=len(usage),
        input_tokens=120 * len(usage), output_tokens=80 * len(usage), cost=Decimal("0.0000450000") * len(usage),
    )
    return user


def run_export(user):
    from accounts import data_rights
    from accounts.models import DataExport

    export = DataExport.objects.create(user=user)
    data_rights.export_build(export_id=export.pk)
    export.refresh_from_db()
    assert export.status == "ready", export.error
    return export.size_bytes


def run_erasure(user):
    from accounts import data_rights

    erasure = data_rights.erasure_request(user=user, queue=False)
    erasure = data_rights.erasure_run(erasure_id=erasure.pk)
    assert erasure.status == "done"
    return erasure.receipt["messages"]


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def traced(fn, *args):
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn(*args)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", default="1000,10000", help="comma-separated sizes")
    sizes = [int(s) for s in parser.parse_args().messages.split(",")]

    from django.test.utils import setup_test_environment

    setup_test_environment()
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    rows = []
    try:
        for size in sizes:
            export_time, size_bytes = timed(run_export, build_user(size))
            export_peak = traced(run_export, build_user(size))
            erase_time, erased = timed(run_erasure, build_user(size))
            erase_peak = traced(run_erasure, build_user(size))
            assert erased == size
            rows.append((size, export_time, export_peak, size_bytes, erase_time, erase_peak))
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)

    vendor = connection.vendor
    print(f"Data rights benchmark ({vendor}, {MESSAGES_PER_CONVERSATION} messages per conversation, ~{len(TEXT)} chars each)")
    header = f"{'messages':>9} | {'export s':>8} | {'export peak MiB':>15} | {'zip MiB':>7} | {'erase s':>7} | {'erase peak MiB':>14}"
    print(header)
    print("-" * len(header))
    for size, export_time, export_peak, size_bytes, erase_time, erase_peak in rows:
        print(
            f"{size:>9} | {export_time:>8.2f} | {export_peak / 2**20:>15.2f} | {size_bytes / 2**20:>7.2f} | "
            f"{erase_time:>7.2f} | {erase_peak / 2**20:>14.2f}"
        )


if __name__ == "__main__":
    main()
