"""Where the time of one chat turn goes, part by part, in one process (no Daphne, no sockets).

    .venv/bin/python bench/chat_turn_parts.py [--n 100] [--db sqlite|postgres]

Times, each N times on a fresh conversation, the synchronous pieces bench/bench_chat.py's
first-delta path runs before and after the provider call (each wrapped as the turn's threads run
it: channels.db.database_sync_to_async's close_old_connections() around the call, on a thread
whose SQLite connection is kept, as turns._thread_keeps_its_connection sets), the key choice,
what opening a connection would add, and the openai SDK's time to the first delta against the
fake provider next to a raw aiohttp request. Wall and CPU time, median and p95, in milliseconds.
The preparation is timed twice: back to back, and after --cold-ms of other Python work each time
(as in the server, where the event loop's work between turns leaves the CPU caches cold).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_chat import Stack, make_sockets_data, pct, reply_text  # noqa: E402

_BLOB = [{"k": list(range(50)), "s": "x" * 200} for _ in range(400)]


def other_work(ms: float) -> None:
    """`ms` of unrelated Python work (JSON, regular expressions, Decimal), as a server's event loop
    does between two turns: what it leaves in the CPU's caches is not the preparation's code."""
    import decimal
    import json
    import re

    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        json.loads(json.dumps(_BLOB))
        [re.sub(r"\d", "y", str(i)) for i in range(200)]
        decimal.Decimal("1.23") * 7


def timed(fn, n: int, cold_ms: float = 0) -> tuple[list[float], list[float], int]:
    """Wall and CPU ms of each of n calls, and the SQL statements of one more (counted apart:
    capturing queries costs time). With cold_ms, each call comes after that much other work."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    walls, cpus = [], []
    for i in range(n):
        if cold_ms:
            other_work(cold_ms)
        w, c = time.perf_counter(), time.process_time()
        fn(i)
        walls.append((time.perf_counter() - w) * 1000)
        cpus.append((time.process_time() - c) * 1000)
    with CaptureQueriesContext(connection) as captured:
        fn(n)
    return walls, cpus, len(captured.captured_queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-name", default="parley_bench")
    parser.add_argument("--redis-db", type=int, default=10)
    parser.add_argument("--pace-ms", type=float, default=20)
    parser.add_argument("--first-delay-ms", type=float, default=0)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--cold-ms", type=float, default=20,
        help="also time the preparation after this many ms of other Python work before each call (0: not)",
    )
    args = parser.parse_args()
    stack = Stack(args)
    try:
        stack.prepare_database()
        port, _fake = stack.start_fake(text=reply_text(5))
        from bench_chat import add_key

        add_key(name="bench-parts", port=port, priority=100)
        rows = run_parts(args, port)
    finally:
        stack.close()
    print(f"# Parts of one turn, db={args.db}, N={args.n}, load {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print("| part | wall p50 ms | wall p95 ms | CPU p50 ms | SQL statements |\n|---|---:|---:|---:|---:|")
    for name, (walls, cpus, queries) in rows:
        print(f"| {name} | {pct(walls, 50):.2f} | {pct(walls, 95):.2f} | {pct(cpus, 50):.2f} | {queries} |")


def run_parts(args, port: int) -> list:
    from django.contrib.auth import get_user_model
    from django.db import close_old_connections, connection

    from billing import keys
    from conversations import turns
    from conversations.llm import get_adapter
    from conversations.models import Conversation

    n = args.n
    socks = make_sockets_data(n + 1, "parts")
    conversations = {c.id: c for c in Conversation.objects.filter(id__in=[s[0] for s in socks]).select_related("owner")}
    convs = [conversations[uuid.UUID(s[0])] for s in socks]
    users = {c.owner_id: get_user_model().objects.get(pk=c.owner_id) for c in convs}
    plans = []
    rows = []

    turns._thread_keeps_its_connection()  # this thread is a turn thread now

    def as_channels(fn):
        # What database_sync_to_async does around every call.
        def run(i):
            close_old_connections()
            try:
                return fn(i)
            finally:
                close_old_connections()

        return run

    def prepare(i):
        result, plan = turns._turn_prepare(
            user=users[convs[i].owner_id], conversation_id=convs[i].id, content=f"parts {i}", client_id=uuid.uuid4()
        )
        assert plan is not None, result
        plans.append(plan)

    rows.append(("`_turn_prepare` (user message, checks, context, reply row)", timed(as_channels(prepare), n)))
    if args.cold_ms:
        # As in the server, where the event loop's work between two turns evicts the preparation's
        # code and data from the CPU's caches: back to back, the loop above keeps them warm.
        socks_cold = make_sockets_data(n + 1, "parts-cold")
        cold = {c.id: c for c in Conversation.objects.filter(id__in=[s[0] for s in socks_cold]).select_related("owner")}
        convs_cold = [cold[uuid.UUID(s[0])] for s in socks_cold]
        users.update({c.owner_id: get_user_model().objects.get(pk=c.owner_id) for c in convs_cold})
        plans_cold: list = []

        def prepare_cold(i):
            result, plan = turns._turn_prepare(
                user=users[convs_cold[i].owner_id], conversation_id=convs_cold[i].id, content=f"cold {i}", client_id=uuid.uuid4()
            )
            assert plan is not None, result
            plans_cold.append(plan)

        label = f"`_turn_prepare` after {args.cold_ms:g} ms of other work each time (caches cold, as in the server)"
        rows.append((label, timed(as_channels(prepare_cold), n, cold_ms=args.cold_ms)))
    def fresh_connection(i):
        connection.close()  # what a thread without a kept connection pays on every call
        Conversation.objects.exists()

    rows.append(("a connection opened for a call (SQLite; turn threads keep theirs) or borrowed (PostgreSQL pool)", timed(fresh_connection, n)))
    leases = []
    rows.append(("`keys.key_choose` (part of the preparation above)", timed(lambda i: leases.append(keys.key_choose(provider="openai")), n)))
    rows.append(("`_reply_mark_streaming` (the streaming flip)", timed(as_channels(lambda i: turns._reply_mark_streaming(message_id=plans[i].message_id)), n)))
    rows.append(("`keys.key_report_success`", timed(lambda i: keys.key_report_success(key_id=leases[i].id), n)))

    def finish(i):
        outcome = turns._Outcome("stop", text="w001 w002 w003 w004 w005.", attempt=1, key_id=leases[i].id)
        turns._reply_finish(plan=plans[i], outcome=outcome)

    rows.append(("`_reply_finish` (message, ledger, stats, budget settle)", timed(as_channels(finish), n)))

    async def sdk_and_raw():
        import aiohttp
        from bench_chat import direct_first_delta

        from conversations.llm.base import TextDelta

        adapter = get_adapter("openai")
        sdk, raw = [], []
        async with aiohttp.ClientSession() as session:
            for i in range(n + 3):
                started = time.monotonic()
                async for event in adapter.stream(plans[i % len(plans)].request, key=leases[0]):
                    if isinstance(event, TextDelta) and event.text:
                        if i >= 3:
                            sdk.append((time.monotonic() - started) * 1000)
                        break
                value = await direct_first_delta(session, port, f"raw {i}")
                if i >= 3:
                    raw.append(value)
        return sdk, raw

    sdk, raw = asyncio.run(sdk_and_raw())
    rows.append((f"openai adapter: request -> first delta (fake pace {args.pace_ms} ms)", (sdk, [float("nan")], 0)))
    rows.append(("raw aiohttp: request -> first delta (same fake)", (raw, [float("nan")], 0)))
    return rows


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    main()
