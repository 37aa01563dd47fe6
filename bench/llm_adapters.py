"""Adapter overhead against the local fake provider (no network, no pacing): how long one call
takes end to end, and how many deltas per second one process relays, for each provider.

    .venv/bin/python bench/llm_adapters.py [--calls 200] [--concurrency 20] [--words 200]

`--concurrent-paced` measures instead what a Daphne process pays per relayed delta: N streams at
once (default 100) of `--words` deltas each, paced by the fake (default 20 ms, as a real model),
the fake in its own process so that only the adapters' CPU is counted (process CPU time of this
process, divided by the deltas received), `--rounds` times per provider:

    .venv/bin/python bench/llm_adapters.py --concurrent-paced [--streams 100] [--words 200] [--pace-ms 20]
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

import django  # noqa: E402

django.setup()

from billing.keys import KeyLease  # noqa: E402
from conversations.llm import get_adapter, warm_up  # noqa: E402
from conversations.llm.base import ChatMessage, ChatRequest, TextDelta  # noqa: E402
from tests.fakeprovider import FakeProvider, Script  # noqa: E402
from tests.fakeprovider.standalone import standalone  # noqa: E402


async def one_call(provider: str, key: KeyLease, request: ChatRequest) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    deltas = 0
    async for event in get_adapter(provider).stream(request, key=key):
        if isinstance(event, TextDelta):
            deltas += 1
            if first is None:
                first = time.perf_counter() - started
    return time.perf_counter() - started, first or 0.0, deltas


async def run(provider: str, fake: FakeProvider, calls: int, concurrency: int, words: int) -> None:
    base_url = fake.openai_base_url if provider == "openai" else fake.anthropic_base_url
    key = KeyLease(id=uuid.uuid4(), name="bench", provider=provider, base_url=base_url, secret="sk-bench")
    model = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "demo": "echo"}[provider]
    text = " ".join(["word"] * words)
    fake.script("sk-bench", Script(text=text))
    request = ChatRequest(model=model, messages=[ChatMessage(role="user", content=text)], max_tokens=words + 10)
    await one_call(provider, key, request)  # first call: pool, SSL context

    totals, firsts = [], []
    for _ in range(calls):
        total, first, _deltas = await one_call(provider, key, request)
        totals.append(total * 1000)
        firsts.append(first * 1000)

    semaphore = asyncio.Semaphore(concurrency)

    async def limited():
        async with semaphore:
            return await one_call(provider, key, request)

    started = time.perf_counter()
    results = await asyncio.gather(*(limited() for _ in range(calls)))
    elapsed = time.perf_counter() - started
    relayed = sum(r[2] for r in results)
    quantiles = statistics.quantiles(totals, n=20)
    print(
        f"{provider:9} sequential: p50 {statistics.median(totals):6.1f} ms  p95 {quantiles[18]:6.1f} ms"
        f"  first delta p50 {statistics.median(firsts):5.1f} ms | {concurrency} at once:"
        f" {calls / elapsed:6.1f} calls/s, {relayed / elapsed:8.0f} deltas/s"
    )


async def paced(provider: str, port: int, streams: int, words: int, rounds: int) -> None:
    base_url = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    key = KeyLease(id=uuid.uuid4(), name="bench", provider=provider, base_url=base_url, secret="sk-bench")
    model = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}[provider]
    request = ChatRequest(model=model, messages=[ChatMessage(role="user", content="hi")], max_tokens=words + 10)
    await one_call(provider, key, request)  # first call: pool, SSL context, lazy imports
    per_delta = []
    for _ in range(rounds):
        cpu, wall = time.process_time(), time.perf_counter()
        results = await asyncio.gather(*(one_call(provider, key, request) for _ in range(streams)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        relayed = sum(r[2] for r in results)
        assert relayed == streams * words, relayed
        per_delta.append(cpu / relayed * 1e6)
        print(f"{provider:9} {streams} streams x {words} deltas: wall {wall:5.2f} s, CPU {cpu:5.2f} s, {per_delta[-1]:6.1f} µs/delta")
    print(f"{provider:9} median {statistics.median(per_delta):6.1f} µs of CPU per delta")


def run_paced(args: argparse.Namespace) -> None:
    with standalone(text=" ".join(["word"] * args.words), pace_ms=args.pace_ms) as port:
        for provider in ("openai", "anthropic"):
            asyncio.run(paced(provider, port, args.streams, args.words, args.rounds))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--concurrent-paced", action="store_true", help="CPU per delta of N paced streams at once")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--pace-ms", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from django.conf import settings

    settings.DEMO_DELAY_MS = 0
    warm_up()
    if args.concurrent_paced:
        run_paced(args)
        return
    fake = FakeProvider().start()
    try:
        for provider in ("openai", "anthropic", "demo"):
            asyncio.run(run(provider, fake, args.calls, args.concurrency, args.words))
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
