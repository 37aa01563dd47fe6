"""Fixtures for the security tests. These run the REAL chat path (the demo adapter, the seeded
prices, the real budgets, limits, ledger and keys): nothing here stands in for another module."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each async test runs on its own event loop; channels_redis binds its pools to the loop
    that first used it, so every test gets a new layer object."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _quick_demo(settings):
    settings.DEMO_DELAY_MS = 0  # the demo reply streams at once; pacing is not what these test


def signed_in_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


async def ws_open(
    application, path: str, *, cookie: str | None, origin: str | None = "http://testserver", host: str | None = None
):
    """A socket through the whole ASGI application (origin check, session auth, router). `host`
    is the Host header a browser sends (the test client sends none)."""
    headers = []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if host is not None:
        headers.append((b"host", host.encode()))
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def session_cookie_of(user) -> str:
    client = await sync_to_async(signed_in_client)(user)
    return client.cookies["sessionid"].value


async def frames_until_close(communicator, timeout: float = 10) -> tuple[list[dict], int | None]:
    """Every JSON frame the server sends until it closes the socket, and the close code."""
    import json

    frames = []
    while True:
        message = await communicator.receive_output(timeout=timeout)
        if message["type"] == "websocket.close":
            return frames, message.get("code")
        if message["type"] == "websocket.send" and message.get("text"):
            frames.append(json.loads(message["text"]))
