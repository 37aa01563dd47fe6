"""The whole chat turn through the real stack: real prices, budgets, rate limits, ledger and keys
(secrets encrypted in the database), the real SDK adapters, real context building, the real ASGI
application with its session auth and origin check. The one fake is the provider at the other
end of the wire (tests/fakeprovider), scripted per API key.

Every helper here goes through a service function or a socket, never a table, except where a
test sets up a state it cannot reach otherwise (a spent budget), and says so.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from billing import keys as keys_mod
from billing import prices
from tests.conversations.conftest import _fresh_channel_layer  # noqa: F401 - autouse: a layer per test loop

OPENAI_MODEL = "openai:gpt-4o-mini"
ANTHROPIC_MODEL = "anthropic:claude-sonnet-4-6"
# Round prices so a test can say what a call costs: USD per million tokens.
PRICES = {
    OPENAI_MODEL: {"input_per_million": "2", "output_per_million": "8"},
    ANTHROPIC_MODEL: {"input_per_million": "3", "output_per_million": "15"},
}
MAX_OUTPUT = 200


@pytest.fixture(autouse=True)
def real_stack(settings, transactional_db):
    """Fast failure paths, generous per-minute limits (tests that want a limit set one)."""
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 10_000
    settings.RATE_LIMIT_TOKENS_PER_MINUTE = 100_000_000
    settings.KEY_RETRY_BACKOFF = 0.01
    settings.LLM_CONNECT_TIMEOUT = 5.0
    settings.LLM_FIRST_TOKEN_TIMEOUT = 10.0
    settings.LLM_TOTAL_TIMEOUT = 60.0
    settings.DEMO_DELAY_MS = 0
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def priced(transactional_db):
    """Real price rows (a transactional test starts without the seeded ones) for the models the
    tests use, the demo model at zero as the seed has it."""
    for model_id, row in PRICES.items():
        prices.price_set(model_id=model_id, context_window=128_000, max_output_tokens=MAX_OUTPUT, **row)
    if prices.price_for(model_id="demo:echo") is None:
        prices.price_set(model_id="demo:echo", input_per_million="0", output_per_million="0", context_window=8192)
    return {model_id: prices.price_for(model_id=model_id) for model_id in [*PRICES, "demo:echo"]}


@pytest.fixture
def add_key(fake_provider):
    """add_key(provider, secret, name=..., priority=...): a real provider key pointing at the fake."""

    def add(provider: str, secret: str, *, name: str | None = None, priority: int = 100, **script):
        if script:
            fake_provider.script(secret, **script)
        base_url = fake_provider.openai_base_url if provider == "openai" else fake_provider.anthropic_base_url
        return keys_mod.key_add(
            provider=provider, name=name or f"{provider}-{uuid.uuid4().hex[:8]}", secret=secret, base_url=base_url, priority=priority
        )

    return add


@pytest.fixture
def conversation_for(transactional_db):
    def make(owner, model: str = OPENAI_MODEL, **fields):
        from conversations.models import Conversation

        # Titled, so the title task makes no extra provider call unless a test wants one.
        fields.setdefault("title", "integration")
        return Conversation.objects.create(owner=owner, model=model, **fields)

    return make


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def ws_open(user, conversation_id):
    from chatsite.asgi import application

    cookie = await sync_to_async(session_cookie)(user)
    communicator = WebsocketCommunicator(
        application,
        f"/ws/chat/{conversation_id}/",
        headers=[(b"origin", b"http://testserver"), (b"cookie", f"sessionid={cookie}".encode())],
    )
    connected, _code = await communicator.connect()
    assert connected
    return communicator


async def ws_turn(ws, text: str, *, client_id: str | None = None, timeout: float = 30) -> list[dict]:
    """Send one message; every frame up to the turn's end: "done", or an error refusing it
    before any reply started (an error with no message_id)."""
    await ws.send_json_to({"type": "user_message", "content": text, "client_id": client_id or str(uuid.uuid4())})
    return await ws_frames_until_end(ws, timeout=timeout)


async def turn_over_socket(user, conversation_id, text: str) -> list[dict]:
    """One turn from a socket of its own: opened, one message sent, every reply task of the
    process ended, closed. The turn's frames (ws_turn)."""
    ws = await ws_open(user, conversation_id)
    frames = await ws_turn(ws, text)
    await replies_finished()
    await ws.disconnect()
    return frames


async def ws_frames_until_end(ws, *, timeout: float = 30) -> list[dict]:
    frames = []
    while True:
        frame = await ws.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] == "done" or (frame["type"] == "error" and not frame.get("message_id")):
            return frames


def of_type(frames: list[dict], kind: str) -> list[dict]:
    return [f for f in frames if f["type"] == kind]


async def replies_finished() -> None:
    """Every reply task of this process has ended, follow-ups included."""
    from conversations import turns

    await turns.replies_wait(timeout=60)
    assert not turns._RUNNING


def db(fn):
    """A sync ORM callable, awaitable from a test."""
    return database_sync_to_async(fn)


def spent_and_reserved(user) -> tuple[Decimal, Decimal]:
    from billing.models import Budget

    budget = Budget.objects.get(user=user)
    return budget.spent, budget.reserved


class Capture(logging.Handler):
    """Every log record of every logger, formatted with its traceback, at any level."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.texts: list[str] = []
        self._formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")

    def emit(self, record):
        self.records.append(record)
        self.texts.append(self._formatter.format(record) + repr(getattr(record, "args", None)))


@pytest.fixture
def all_logs():
    """A DEBUG handler first on the root logger (before any filter of the site's own handler can
    touch a record), with the root at DEBUG as an operator's LOG_LEVEL=DEBUG would set it."""
    root = logging.getLogger()
    handler = Capture()
    previous = root.level
    root.handlers.insert(0, handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def eventually(check, *, timeout: float = 20, interval: float = 0.02):
    """Wait (polling, never asserting on time) until `check()` is truthy; returns its value."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > end:
            raise AssertionError("the condition never came true")
        await asyncio.sleep(interval)
