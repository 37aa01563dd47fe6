"""Conditions every deployment meets (Redis restarting, a scanner's Host header) are told in the
log in one line, without a traceback, and a condition that repeats every second does not fill the
log with it."""

import asyncio
import io
import logging
import shutil

import pytest

from tests.chatsite.test_readyz_redis import free_port, start_redis, stop
from tests.conftest import need


@pytest.fixture
def console_output():
    """The configured console handler (its filters and format), writing into a buffer."""
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.filters)
    buffer = io.StringIO()
    old_stream = handler.setStream(buffer)
    yield buffer
    handler.setStream(old_stream)


def test_redis_going_down_under_the_channel_layer_logs_one_line_not_a_traceback_a_second(console_output, tmp_path):
    need(bool(shutil.which("redis-server")), "needs redis-server on PATH")
    from channels_redis.pubsub import RedisPubSubChannelLayer

    port = free_port()
    redis = start_redis(port, tmp_path)

    async def subscribed_while_redis_goes_down() -> None:
        layer = RedisPubSubChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0"])
        channel = await layer.new_channel()
        receiving = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0.5)  # subscribed: the layer's receive loop is reading from Redis
        stop(redis)
        # channels_redis retries its read once a second and logs every failure.
        await asyncio.sleep(4)
        receiving.cancel()
        try:
            await receiving
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - only the log matters here
            pass
        try:
            await layer.flush()
        except Exception:  # noqa: BLE001 - Redis is down; nothing to clean up there
            pass

    try:
        asyncio.run(subscribed_while_redis_goes_down())
    finally:
        if redis.poll() is None:
            stop(redis)
    output = console_output.getvalue()
    lines = [line for line in output.splitlines() if "channels_redis" in line]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert "WARNING" in lines[0] and "Redis" in lines[0], lines


@pytest.mark.django_db
def test_a_request_for_a_host_not_served_is_one_warning_line_without_a_traceback(client, console_output):
    """Scanners and load balancers probing by address send Hosts the site does not serve all
    day; each was an ERROR with a 14-line traceback."""
    response = client.get("/accounts/login/", HTTP_HOST="scanner.example")
    assert response.status_code == 400
    output = console_output.getvalue()
    lines = [line for line in output.splitlines() if "django.security" in line]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert "WARNING" in lines[0] and "scanner.example" in lines[0]


def test_redis_failing_on_is_told_again_once_a_minute_with_how_many_were_left_out(monkeypatch):
    import sys
    from types import SimpleNamespace

    from chatsite import logging as site_logging

    now = [1000.0]
    monkeypatch.setattr(site_logging, "time", SimpleNamespace(monotonic=lambda: now[0]))
    expected = site_logging.ExpectedConditionsFilter()

    def told() -> logging.LogRecord | None:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError:
            record = logging.LogRecord("channels_redis.pubsub", logging.ERROR, __file__, 1, "read failed", None, sys.exc_info())
        return record if expected.filter(record) else None

    lines = []
    for _ in range(5):  # once a second for a while, and more: one line
        lines.append(told())
        now[0] += 5
    assert lines[0] is not None and lines[1:] == [None] * 4
    assert (lines[0].levelname, lines[0].exc_info) == ("WARNING", None)
    assert "Redis is unreachable" in lines[0].getMessage() and "more" not in lines[0].getMessage()

    now[0] += 60
    again = told()
    assert again is not None and again.getMessage().endswith("; 4 more in the last minute")
    assert told() is None


def test_sockets_refused_while_redis_is_down_log_one_line_not_a_traceback_each(console_output):
    """While Redis is down, every socket a chat tab opens (and reopens, every few seconds) fails to
    subscribe to the channel layer, and Daphne logged each as an ERROR with a 40-line traceback."""
    import redis
    from channels_redis.pubsub import RedisPubSubChannelLayer

    from tests.chatsite.test_readyz_redis import free_port

    async def a_socket_opening() -> None:
        # What the consumer does before its handshake: a channel of its own on the layer.
        layer = RedisPubSubChannelLayer(hosts=[f"redis://127.0.0.1:{free_port()}/0"])
        try:
            await layer.new_channel()
        finally:
            try:
                await layer.flush()
            except Exception:  # noqa: BLE001 - Redis is down; nothing to clean up there
                pass

    for _ in range(3):
        with pytest.raises(redis.exceptions.ConnectionError) as failed:
            asyncio.run(a_socket_opening())
        # As daphne.server.Server.application_checker logs an application that raised.
        logging.getLogger("daphne.server").error("Exception inside application: %s", failed.value, exc_info=failed.value)
    output = console_output.getvalue()
    lines = [line for line in output.splitlines() if "daphne.server" in line]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    assert "WARNING" in lines[0] and "Redis" in lines[0], lines


def test_other_application_errors_still_log_their_traceback(console_output):
    try:
        raise KeyError("a real bug")
    except KeyError as exc:
        logging.getLogger("daphne.server").error("Exception inside application: %s", exc, exc_info=exc)
    output = console_output.getvalue()
    assert "ERROR" in output and "Traceback" in output and "a real bug" in output
