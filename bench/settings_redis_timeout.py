"""Bench-only settings: chatsite.settings with the channel layer's Redis socket timeout removed.

redis-py 8 gives every connection `socket_timeout=5` by default; channels_redis blocks in
BZPOPMIN for up to 5 s while a socket waits for its next message, so an idle socket's receive
raises redis.exceptions.TimeoutError and Daphne closes it (1011). `bench_chat.py
--redis-socket-timeout-fix` runs Daphne with this module to measure Parley as it would be with
the fix (see BENCHMARKS.md, "Chat streaming"); the application's own settings are unchanged.
"""

from chatsite.settings import *  # noqa: F403
from chatsite.settings import CHANNEL_LAYERS, REDIS_URL

if REDIS_URL:
    CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [{"address": REDIS_URL, "socket_timeout": None}]
