"""Bench-only settings: chatsite.settings with channels_redis' pub/sub layer instead of its core one.

`bench_chat.py --db postgres --pubsub-layer` runs Daphne with this module to compare the two
layers on the same machine (see BENCHMARKS.md, "Chat streaming"); the application's own
settings are unchanged.
"""

from chatsite.settings import *  # noqa: F403
from chatsite.settings import CHANNEL_LAYERS, REDIS_URL

if REDIS_URL:
    CHANNEL_LAYERS["default"] = {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
