"""Run the fake provider standalone, for benchmarks and manual runs:

    python -m tests.fakeprovider --port 8999 --pace-ms 20

Any key answers with the default script; point a provider key's base URL at
http://127.0.0.1:PORT/v1 (openai) or http://127.0.0.1:PORT (anthropic).
"""

import argparse
import asyncio
import contextlib

from .server import FakeProvider, Script


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakeprovider")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8999)
    parser.add_argument("--pace-ms", type=float, default=20, help="delay between streamed deltas")
    parser.add_argument("--first-delay-ms", type=float, default=0, help="delay before the response starts")
    parser.add_argument("--text", default=" ".join(["The fake provider streams this reply word by word."] * 4))
    args = parser.parse_args()
    fake = FakeProvider(
        host=args.host,
        port=args.port,
        default=Script(text=args.text, pace_ms=args.pace_ms, first_delay_ms=args.first_delay_ms),
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(fake.serve_forever())


if __name__ == "__main__":
    main()
