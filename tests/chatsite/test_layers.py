"""chatsite.layers.InMemoryChannelLayer: upstream's layer without a sweep of every channel on every
call. It must still deliver, fan out, skip a full member, and expire messages and memberships."""

import time

import pytest
from channels.exceptions import ChannelFull

from chatsite import layers


async def test_group_send_reaches_every_member_in_order_and_copies_the_message():
    layer = layers.InMemoryChannelLayer()
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("chat.g", a)
    await layer.group_add("chat.g", b)
    message = {"type": "chat.frame", "frame": {"seq": 1}}
    await layer.group_send("chat.g", message)
    await layer.group_send("chat.g", {"type": "chat.frame", "frame": {"seq": 2}})
    message["frame"]["seq"] = 99  # the sender changing its dict afterwards changes nothing sent
    for channel in (a, b):
        assert (await layer.receive(channel))["frame"]["seq"] == 1
        assert (await layer.receive(channel))["frame"]["seq"] == 2


async def test_a_full_member_is_skipped_and_the_others_still_receive():
    layer = layers.InMemoryChannelLayer(capacity=1)
    full, free = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("chat.g", full)
    await layer.send(full, {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send(full, {"type": "x"})
    await layer.group_add("chat.g", free)
    await layer.group_send("chat.g", {"type": "y"})
    assert (await layer.receive(free))["type"] == "y"
    assert (await layer.receive(full))["type"] == "x"


async def test_expired_messages_and_their_channel_memberships_are_still_swept(monkeypatch):
    layer = layers.InMemoryChannelLayer(expiry=1)
    stale, live = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("chat.g", stale)
    await layer.send(stale, {"type": "old"})
    clock = time.time()
    monkeypatch.setattr(time, "time", lambda: clock + 5)  # the message is past its expiry
    monkeypatch.setattr(layers, "SWEEP_SECONDS", 0)
    layer._next_sweep = 0.0
    await layer.group_add("chat.g", live)
    await layer.group_send("chat.g", {"type": "new"})
    # The sweep dropped the expired message and, as upstream does, the channel from its groups.
    assert stale not in layer.groups.get("chat.g", {})
    assert (await layer.receive(live))["type"] == "new"


async def test_the_sweep_runs_at_most_once_per_interval(monkeypatch):
    layer = layers.InMemoryChannelLayer()
    sweeps = []
    monkeypatch.setattr(layers._UpstreamInMemoryChannelLayer, "_clean_expired", lambda self: sweeps.append(1))
    channel = await layer.new_channel()
    await layer.group_add("chat.g", channel)
    for _ in range(50):
        await layer.group_send("chat.g", {"type": "f"})
    assert len(sweeps) == 1


async def test_a_flat_message_reaches_each_member_as_its_own_copy():
    """A chat frame (strings and numbers only) is copied shallowly: still nothing shared with the
    sender, nor between two receivers."""
    layer = layers.InMemoryChannelLayer()
    a, b = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("chat.g", a)
    await layer.group_add("chat.g", b)
    message = {"type": "chat.frame", "kind": "delta", "seq": 1, "message_id": None, "text": "hi"}
    await layer.group_send("chat.g", message)
    message["seq"] = 99
    got_a, got_b = await layer.receive(a), await layer.receive(b)
    got_a["text"] = "changed by a"
    assert got_b == {"type": "chat.frame", "kind": "delta", "seq": 1, "message_id": None, "text": "hi"}
    assert got_a["seq"] == 1


async def test_a_channel_keeps_one_queue_while_messages_wait():
    layer = layers.InMemoryChannelLayer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "x", "n": 1})
    queue = layer.channels[channel]
    await layer.send(channel, {"type": "x", "n": 2})
    assert layer.channels[channel] is queue and queue.qsize() == 2
    assert [(await layer.receive(channel))["n"] for _ in range(2)] == [1, 2]
    assert channel not in layer.channels  # an idle channel keeps no queue


@pytest.mark.usefixtures("needs_redis")
async def test_on_redis_a_publish_connection_the_server_closed_is_replaced_not_failed():
    # As after a Redis restart: the layer's pooled connection is dead, and the next frame a reply
    # publishes (its "start") must not fail the reply. Each web process's first reply after a
    # restart ended as "The reply failed." while every page and the cache had recovered.
    import redis
    from channels.layers import channel_layers
    from django.conf import settings

    layer = channel_layers.make_backend("default")
    try:
        channel = await layer.new_channel()
        await layer.group_add("chat.restart", channel)
        await layer.group_send("chat.restart", {"type": "chat.frame", "n": 1})
        assert (await layer.receive(channel))["n"] == 1
        publisher = layer._get_layer()._shards[0]._redis
        connection_id = await publisher.client_id()  # the pool's one idle connection, used again next
        assert redis.Redis.from_url(settings.REDIS_URL).client_kill_filter(_id=connection_id) == 1
        await layer.group_send("chat.restart", {"type": "chat.frame", "n": 2})
        assert (await layer.receive(channel))["n"] == 2
    finally:
        await layer.flush()
