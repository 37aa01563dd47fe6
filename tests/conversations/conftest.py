"""Fixtures for the chat tests.

`chat_backends` is the ONE place where the modules other branches write at the same time
(billing prices/budgets/limits/ledger/keys, the llm adapters and context building) are given a
simple behaviour. After the merge, switch this fixture to the real modules here and nowhere else.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from billing import budgets, keys, ledger, limits, prices
from billing.keys import KeyLease
from conversations import context as context_mod
from conversations import llm
from conversations.llm.base import ChatMessage, Finish, ProviderError, TextDelta, Usage
from tests.e2e.conftest import live_server_url  # noqa: F401 - a live Daphne, for the API's wire-level tests

PER_MILLION = Decimal("1000000")


@dataclass
class Backends:
    """Scripted stand-ins and what they were asked. Tests set the knobs they need."""

    price_table: dict = field(default_factory=dict)
    reservations: dict = field(default_factory=dict)  # id -> amount
    settlements: list = field(default_factory=list)  # (reservation_id, actual)
    usage: list = field(default_factory=list)  # kwargs of every usage_record call
    budget_error: Exception | None = None
    rate_error: Exception | None = None
    key_pool: list = field(default_factory=list)  # KeyLease objects key_choose may hand out
    key_failures: list = field(default_factory=list)
    key_successes: list = field(default_factory=list)
    scripts: list = field(default_factory=list)  # one list of events per provider call, consumed in order
    calls: list = field(default_factory=list)  # (provider, key name, ChatRequest)
    delta_delay: float = 0.0
    drop_oldest: int = 0  # context_build trims this many of the oldest history items
    gate: asyncio.Event | None = None  # "gate" in a script waits on this

    def key(self, name: str) -> KeyLease:
        lease = KeyLease(id=uuid.uuid4(), name=name, provider="openai", base_url="", secret=f"sk-test-{name}")
        self.key_pool.append(lease)
        return lease

    def open_gate(self):
        self.gate.set()


def _echo_script(request, delay: float) -> list:
    last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
    words = f"You said: {last_user}".split(" ")
    if "long" in last_user:
        words = words * 60
    script: list = []
    for index, word in enumerate(words):
        if delay:
            script.append(("sleep", delay))
        script.append(TextDelta(word if index == 0 else " " + word))
    script.append(Usage(input_tokens=sum(len(m.content.split()) for m in request.messages), output_tokens=len(words)))
    script.append(Finish("stop"))
    return script


class FakeAdapter:
    def __init__(self, provider: str, backends: Backends):
        self.provider = provider
        self.backends = backends

    async def stream(self, request, *, key):
        b = self.backends
        b.calls.append((self.provider, key.name if key else None, request))
        script = b.scripts.pop(0) if b.scripts else _echo_script(request, b.delta_delay)
        for item in script:
            if isinstance(item, ProviderError):
                raise item
            if item == "hang":
                await asyncio.Event().wait()
            elif item == "gate":
                await b.gate.wait()
            elif isinstance(item, tuple) and item[0] == "sleep":
                await asyncio.sleep(item[1])
            else:
                yield item


def _quote(provider: str, model: str, label: str, inp: str, out: str, window: int = 8000, max_out: int = 500):
    return prices.PriceQuote(
        provider=provider,
        model=model,
        label=label,
        input_per_million=Decimal(inp),
        output_per_million=Decimal(out),
        cached_input_per_million=None,
        context_window=window,
        max_output_tokens=max_out,
    )


@pytest.fixture
def chat_backends(monkeypatch) -> Backends:
    b = Backends()
    b.gate = asyncio.Event()
    b.price_table = {
        "demo:echo": _quote("demo", "echo", "Echo (demo)", "0", "0"),
        "openai:gpt-test": _quote("openai", "gpt-test", "GPT test", "1", "2"),
        "anthropic:claude-test": _quote("anthropic", "claude-test", "Claude test", "3", "15"),
    }

    def price_for(*, model_id, at=None):
        return b.price_table.get(model_id)

    def cost_of(*, price, input_tokens, output_tokens, cached_tokens=0):
        raw = (price.input_per_million * input_tokens + price.output_per_million * output_tokens) / PER_MILLION
        return raw.quantize(Decimal("0.0000000001"))

    def budget_reserve(*, user, amount):
        if b.budget_error:
            raise b.budget_error
        rid = uuid.uuid4()
        b.reservations[rid] = amount
        return rid

    def budget_settle(*, reservation_id, actual):
        b.settlements.append((reservation_id, actual))

    def reservation_keep(*, reservation_id, ttl_seconds=None):
        return reservation_id in b.reservations and reservation_id not in {r for r, _actual in b.settlements}

    def rate_limit_check(*, user, tokens):
        if b.rate_error:
            raise b.rate_error

    def usage_record(**kwargs):
        b.usage.append(kwargs)

    def key_choose(*, provider, exclude=()):
        return next((k for k in b.key_pool if k.provider == provider and k.id not in set(exclude)), None)

    def get_adapter(provider):
        if provider not in {"demo", "openai", "anthropic"}:
            raise KeyError(provider)
        return FakeAdapter(provider, b)

    def count_tokens(*, text, model_id):
        return len(text.split()), True

    def context_build(*, system_prompt, summary, history, model_id, context_window, max_tokens):
        dropped = history[: min(b.drop_oldest, len(history) - 1)]
        kept = history[len(dropped) :]
        messages = [ChatMessage("system", system_prompt)] if system_prompt else []
        if summary:
            messages.append(ChatMessage("system", "Summary: " + summary))
        messages += [ChatMessage(h.role, h.content) for h in kept]
        tokens = sum(len(m.content.split()) for m in messages)
        return context_mod.BuiltContext(messages=messages, input_tokens=tokens, estimated=True, dropped_ids=[h.id for h in dropped])

    monkeypatch.setattr(prices, "price_for", price_for)
    monkeypatch.setattr(prices, "cost_of", cost_of)
    monkeypatch.setattr(prices, "prices_available", lambda: list(b.price_table.values()))
    monkeypatch.setattr(budgets, "budget_reserve", budget_reserve)
    monkeypatch.setattr(budgets, "budget_settle", budget_settle)
    monkeypatch.setattr(budgets, "reservation_keep", reservation_keep)
    monkeypatch.setattr(limits, "rate_limit_check", rate_limit_check)
    monkeypatch.setattr(ledger, "usage_record", usage_record)
    monkeypatch.setattr(keys, "key_choose", key_choose)
    monkeypatch.setattr(keys, "key_report_success", lambda *, key_id: b.key_successes.append(key_id))
    def key_report_failure(*, key_id, kind, retry_after=None, attempt=1, version=None):
        b.key_failures.append((key_id, kind))
        # billing.keys' rule: a refused request is not retried; a key's failure moves on.
        return keys.KeyFailureOutcome(retry=kind not in ("bad_request", "context_too_long"), backoff=0.001)

    monkeypatch.setattr(keys, "key_report_failure", key_report_failure)
    monkeypatch.setattr(keys, "providers_with_usable_keys", lambda: {k.provider for k in b.key_pool})
    monkeypatch.setattr(llm, "get_adapter", get_adapter)
    monkeypatch.setattr(context_mod, "count_tokens", count_tokens)
    monkeypatch.setattr(context_mod, "context_build", context_build)
    return b


# --- helpers for websocket tests ------------------------------------------------------------------
@pytest.fixture
def conversation_factory(db):
    from conversations.models import Conversation

    def make(owner, **fields):
        fields.setdefault("model", "demo:echo")
        return Conversation.objects.create(owner=owner, **fields)

    return make


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


async def ws_connect(user, conversation_id, *, origin: str = "http://testserver", headers: tuple = (), cookies: str = ""):
    """A socket through the real stack (origin check, session auth, router); `cookies` go beside
    the session's, in its one Cookie header."""
    from chatsite.asgi import application

    headers = [(b"origin", origin.encode()), *headers]
    if user is not None:
        cookie = await sync_to_async(session_cookie)(user)
        headers.append((b"cookie", "; ".join(filter(None, [f"sessionid={cookie}", cookies])).encode()))
    communicator = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, _code = await communicator.connect()
    return communicator, connected


async def receive_until(communicator, frame_type: str, timeout: float = 10) -> list[dict]:
    """Every frame up to and including the first of `frame_type`."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] == frame_type:
            return frames


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """Each async test runs on its own event loop; channels_redis binds locks and pools to the
    loop that first used it, so every test gets a new layer object."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # The users these tests make only need to exist; hashing them properly costs seconds.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _auth_urls(settings):
    # login/logout come from the accounts branch; until the merge they are added for these tests.
    settings.ROOT_URLCONF = "tests.urls_with_auth"
