"""Two channels_redis behaviours bench/bench_chat.py ran into, reproduced in a few seconds each.

    .venv/bin/python bench/redis_layer_checks.py [--redis redis://127.0.0.1:6379/10]

1. Idle receive: with redis-py 8 (default socket_timeout=5 s) and Parley's host config
   (`"hosts": [REDIS_URL]`), a receive that waits 5 s raises redis.exceptions.TimeoutError (in
   Daphne: the consumer dies and the socket closes with 1011). With the host given as
   {"address": ..., "socket_timeout": None} it waits as long as it is asked to.
2. Cancelled receive: all channels of a process share one Redis inbox, read by whichever
   receive() holds the lock. Cancelling a receive() on one channel (as conversations.turns does
   to its stop listener when a reply ends) can drop a message popped for ANOTHER channel. The
   check counts messages lost on channel X while receives on other channels are cancelled, and
   again while they are ended by a message instead.
"""

import argparse
import asyncio
import random
import time

from channels_redis.core import RedisChannelLayer


async def idle_receive(hosts) -> str:
    layer = RedisChannelLayer(hosts=hosts)
    channel = await layer.new_channel()
    started = time.monotonic()
    try:
        await asyncio.wait_for(layer.receive(channel), 7)
        outcome = "a message?"
    except TimeoutError:
        outcome = "still waiting after 7 s (fine)"
    except Exception as exc:  # noqa: BLE001 - what the consumer would see
        outcome = f"{type(exc).__module__}.{type(exc).__name__} after {time.monotonic() - started:.1f} s"
    await layer.flush()
    return outcome


async def cancelled_receives(address: str, *, cancel: bool, n: int = 2000) -> int:
    layer = RedisChannelLayer(hosts=[{"address": address, "socket_timeout": None}])
    x = await layer.new_channel()
    got: set[int] = set()

    async def receive_x():
        while len(got) < n:
            got.add((await layer.receive(x))["n"])

    async def churn():
        while len(got) < n:
            other = await layer.new_channel()
            task = asyncio.create_task(layer.receive(other))
            await asyncio.sleep(random.uniform(0, 0.01))
            if cancel:
                task.cancel()
            else:
                await layer.send(other, {"type": "end"})
            await asyncio.gather(task, return_exceptions=True)

    receiver, churner = asyncio.create_task(receive_x()), asyncio.create_task(churn())
    for i in range(n):
        await layer.send(x, {"type": "m", "n": i})
        await asyncio.sleep(0.001)
    await asyncio.wait({receiver}, timeout=5)
    for task in (receiver, churner):
        task.cancel()
    await asyncio.gather(receiver, churner, return_exceptions=True)
    await layer.flush()
    return n - len(got)


async def main(address: str) -> None:
    print("1. idle receive, hosts=[URL]:", await idle_receive([address]))
    print("   idle receive, socket_timeout=None:", await idle_receive([{"address": address, "socket_timeout": None}]))
    print("2. lost of 2000 on X, other receives cancelled:", await cancelled_receives(address, cancel=True))
    print("   lost of 2000 on X, other receives ended by a message:", await cancelled_receives(address, cancel=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/10")
    asyncio.run(main(parser.parse_args().redis))
