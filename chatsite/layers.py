"""The channel layer of the embedded default (one process, no Redis).

Channels' InMemoryChannelLayer sweeps expired messages and group memberships on every receive()
and group_send(): it walks every channel's queue and every group. Each open socket waits in
receive(), and a running reply publishes 25 frames a second, so with K sockets each frame costs
O(K) and K streams cost O(K^2): at a few hundred streams the process does little else. It also
starts a task per group member for each group_send.

This is the same layer with the sweep run at most once per SWEEP_SECONDS (an expired message lives
that much longer at most; capacity and expiry behave as upstream), and group_send putting the
message on each member's queue directly (send() never waits: it fails at once when a queue is full,
and a full member is skipped, as upstream). Per message it also skips two costs of upstream's:
a new asyncio.Queue built (and dropped) on every send and receive to an existing channel, and a
deepcopy of a message whose values are all strings and numbers (a chat frame), where a shallow copy
is the same copy, several times cheaper.
"""

from __future__ import annotations

import asyncio
import time
from copy import deepcopy

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as _UpstreamInMemoryChannelLayer

SWEEP_SECONDS = 1.0
_SCALARS = (str, int, float, bool, type(None))


def _copy(message: dict) -> dict:
    """What upstream's deepcopy gives the receiver: nothing it shares with the sender."""
    if all(type(value) in _SCALARS for value in message.values()):
        return dict(message)
    return deepcopy(message)


class InMemoryChannelLayer(_UpstreamInMemoryChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_SECONDS
        super()._clean_expired()

    def _queue(self, channel) -> asyncio.Queue:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels[channel] = asyncio.Queue(maxsize=self.get_capacity(channel))
        return queue

    async def send(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_channel_name(channel)
        assert "__asgi_channel__" not in message
        try:
            self._queue(channel).put_nowait((time.time() + self.expiry, _copy(message)))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    async def receive(self, channel):
        self.require_valid_channel_name(channel)
        self._clean_expired()
        queue = self._queue(channel)
        try:
            _, message = await queue.get()
        finally:
            if queue.empty():  # as upstream: an idle channel keeps no queue
                self.channels.pop(channel, None)
        return message

    async def group_send(self, group, message):
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            try:
                await self.send(channel, message)
            except ChannelFull:
                pass
