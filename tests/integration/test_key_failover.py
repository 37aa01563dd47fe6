"""Issue 5 through the real stack: key failover inside one turn, cooldowns and the circuit
breaker, invalid keys, every key down, rotation while replies stream, and a canary secret that
must never show up anywhere but in the provider's Authorization header."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from accounts.models import AuditEvent
from billing import budgets, keys, prices
from billing.models import ProviderKey, UsageRecord
from conversations import turns
from conversations.models import Message

from .conftest import (
    ANTHROPIC_MODEL,
    db,
    eventually,
    of_type,
    replies_finished,
    spent_and_reserved,
    turn_over_socket,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def later(monkeypatch):
    """later(seconds): billing.keys sees the clock moved on (cooldowns end without sleeping)."""
    real = keys.clock

    def move(seconds: float) -> None:
        monkeypatch.setattr(keys, "clock", lambda: real() + timedelta(seconds=seconds))

    return move


async def _key(key_id) -> ProviderKey:
    return await db(ProviderKey.objects.get)(pk=key_id)


async def _turn(user, conversation, text="hello there"):
    frames = await turn_over_socket(user, conversation.id, text)
    return frames


async def test_a_429_fails_over_to_the_next_key_in_the_same_turn_and_cools_the_key_down(
    priced, add_key, fake_provider, make_user, conversation_for, later
):
    user = await db(make_user)("failover")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    a = await db(add_key)("openai", "sk-key-a", priority=200, mode="error", status=429, retry_after="30")
    b = await db(add_key)("openai", "sk-key-b", priority=100, text="Answered by B.")
    conversation = await db(conversation_for)(user)

    frames = await _turn(user, conversation)

    assert of_type(frames, "error") == []
    assert frames[-1]["finish_reason"] == "stop"
    assert "".join(d["text"] for d in of_type(frames, "delta")) == "Answered by B."
    assert (len(fake_provider.requests_for("sk-key-a")), len(fake_provider.requests_for("sk-key-b"))) == (1, 1)
    key_a = await _key(a.id)
    # Out for the Retry-After the provider sent (30 s), counted from when it said so.
    (refused,) = fake_provider.requests_for("sk-key-a")
    assert key_a.health == ProviderKey.Health.COOLING_DOWN and key_a.cooldown_until.timestamp() >= refused.received_at + 30
    # One ledger row per provider call: the 429 costs nothing, B's answer is what was charged.
    rows = await db(list)(UsageRecord.objects.order_by("attempt").values_list("attempt", "key_id", "outcome", "cost"))
    assert [r[:3] for r in rows] == [(1, a.id, "error"), (2, b.id, "ok")] and rows[0][3] == 0
    assert await db(spent_and_reserved)(user) == (rows[1][3], Decimal("0"))

    # While it cools down, A is skipped: no call reaches it.
    await _turn(user, conversation, "and again")
    assert len(fake_provider.requests_for("sk-key-a")) == 1 and len(fake_provider.requests_for("sk-key-b")) == 2

    # After the cooldown it is first again, and one success makes it healthy.
    fake_provider.script("sk-key-a", text="A is back.")
    later(31)
    frames = await _turn(user, conversation, "third time")
    assert "".join(d["text"] for d in of_type(frames, "delta")) == "A is back."
    assert len(fake_provider.requests_for("sk-key-a")) == 2
    assert (await _key(a.id)).health == ProviderKey.Health.HEALTHY


async def test_a_key_answering_503_three_times_is_taken_out_and_back_after_its_cooldown(
    priced, add_key, fake_provider, make_user, conversation_for, later, settings
):
    settings.KEY_FAILURE_THRESHOLD = 3
    settings.KEY_CIRCUIT_COOLDOWN = 60
    user = await db(make_user)("circuit")
    flaky = await db(add_key)("openai", "sk-flaky", priority=200, mode="error", status=503)
    await db(add_key)("openai", "sk-steady", priority=100)
    conversation = await db(conversation_for)(user)

    for n in range(3):
        frames = await _turn(user, conversation, f"question {n}")
        assert frames[-1]["finish_reason"] == "stop" and of_type(frames, "error") == []
    assert len(fake_provider.requests_for("sk-flaky")) == 3
    key = await _key(flaky.id)
    assert key.health == ProviderKey.Health.FAILING and key.consecutive_failures == 3
    assert await db(AuditEvent.objects.filter(action="provider_key.circuit_open", target_id=str(flaky.id)).exists)()

    # Out: the next turn goes straight to the steady key.
    await _turn(user, conversation, "question 3")
    assert len(fake_provider.requests_for("sk-flaky")) == 3

    # Back after the cooldown ("half-open"): tried first, and one success closes the circuit.
    fake_provider.script("sk-flaky", text="Recovered.")
    later(61)
    frames = await _turn(user, conversation, "question 4")
    assert "".join(d["text"] for d in of_type(frames, "delta")) == "Recovered."
    key = await _key(flaky.id)
    assert (key.health, key.consecutive_failures, key.cooldown_until) == (ProviderKey.Health.HEALTHY, 0, None)


async def test_a_401_key_is_marked_invalid_audited_and_never_tried_again(priced, add_key, fake_provider, make_user, conversation_for, later):
    user = await db(make_user)("invalid")
    bad = await db(add_key)("openai", "sk-revoked", priority=200, mode="error", status=401)
    await db(add_key)("openai", "sk-good", priority=100)
    conversation = await db(conversation_for)(user)

    frames = await _turn(user, conversation)
    assert frames[-1]["finish_reason"] == "stop" and of_type(frames, "error") == []
    assert (await _key(bad.id)).health == ProviderKey.Health.INVALID
    audit = await db(AuditEvent.objects.get)(action="provider_key.invalid", target_id=str(bad.id))
    assert audit.data["error_kind"] == "auth"

    later(24 * 3600)  # no cooldown brings an invalid key back: only an administrator does
    await _turn(user, conversation, "again")
    assert len(fake_provider.requests_for("sk-revoked")) == 1
    assert len(fake_provider.requests_for("sk-good")) == 2


async def test_all_keys_down_is_provider_unavailable_keeps_the_message_and_charges_nothing(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = await db(make_user)("unlucky")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-down-1", priority=200, mode="error", status=503)
    await db(add_key)("openai", "sk-down-2", priority=100, mode="error", status=429)
    conversation = await db(conversation_for)(user)

    frames = await _turn(user, conversation, "is anyone there")

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_unavailable" and error["message"]
    assert frames[-1]["finish_reason"] == "error" and frames[-1]["usage"]["cost"] == "0.0000000000"
    assert len(fake_provider.requests_for("sk-down-1")) == 1 and len(fake_provider.requests_for("sk-down-2")) == 1
    user_message = await db(Message.objects.get)(role="user")
    assert user_message.content == "is anyone there"
    reply = await db(Message.objects.get)(role="assistant")
    assert reply.status == Message.Status.ERROR and reply.error_code == "provider_unavailable"
    assert await db(spent_and_reserved)(user) == (Decimal("0"), Decimal("0"))
    rows = await db(list)(UsageRecord.objects.order_by("attempt").values_list("attempt", "cost", "outcome", "error_kind"))
    assert rows == [(1, Decimal("0"), "error", "unavailable"), (2, Decimal("0"), "error", "rate_limited")]


async def test_a_key_whose_server_does_not_serve_the_model_passes_the_turn_to_one_that_does(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # Two "openai" keys: the official API first, and a local server (vLLM, Ollama) that serves a
    # model the official API does not have. A 404 for the model is no fault of the key, nor the
    # request's: the next key may serve it.
    user = await db(make_user)("mixed")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    official = await db(add_key)("openai", "sk-official", priority=200, models=["gpt-4o", "gpt-4o-mini"])
    local = await db(add_key)("openai", "sk-local-llama", priority=100, models=["llama3.1"], text="Answered locally.")
    await db(prices.price_set)(model_id="openai:llama3.1", input_per_million="0.1", output_per_million="0.1", context_window=8192)
    conversation = await db(conversation_for)(user, model="openai:llama3.1")

    frames = await _turn(user, conversation, "hello local model")

    assert of_type(frames, "error") == [], frames
    assert "".join(d["text"] for d in of_type(frames, "delta")) == "Answered locally."
    assert frames[-1]["finish_reason"] == "stop"
    rows = await db(list)(UsageRecord.objects.order_by("attempt").values_list("attempt", "key_id", "outcome", "cost"))
    assert [r[:3] for r in rows] == [(1, official.id, "error"), (2, local.id, "ok")] and rows[0][3] == 0
    key = await _key(official.id)
    assert (key.health, key.consecutive_failures) == (ProviderKey.Health.HEALTHY, 0)  # the key is fine


async def test_a_model_no_key_serves_is_model_unavailable_and_charges_nothing(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # A model the provider retired (or never had, or a local server never pulled) still has its
    # price row: the person is told the model is not available, not that the request was refused.
    user = await db(make_user)("retired")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    only = await db(add_key)("anthropic", "sk-ant-retired", models=["claude-haiku-4-5"])
    conversation = await db(conversation_for)(user, model=ANTHROPIC_MODEL)

    frames = await _turn(user, conversation, "are you still there")

    (error,) = of_type(frames, "error")
    assert error["code"] == "model_unavailable" and ANTHROPIC_MODEL in error["message"]
    assert frames[-1]["finish_reason"] == "error" and frames[-1]["usage"]["cost"] == "0.0000000000"
    assert await db(spent_and_reserved)(user) == (Decimal("0"), Decimal("0"))
    key = await _key(only.id)
    assert (key.health, key.consecutive_failures) == (ProviderKey.Health.HEALTHY, 0)


async def test_rotation_while_twenty_replies_stream(priced, add_key, fake_provider, make_user, conversation_for):
    """Add key B and drain key A while 20 replies stream on A; disable A once they end. None
    fails, and A gets no new call once it drains."""
    user = await db(make_user)("rotation")
    words = " ".join(f"w{i}" for i in range(20))
    a = await db(add_key)("openai", "sk-rotate-a", text=words, pace_ms=100)
    conversations = [await db(conversation_for)(user) for _ in range(25)]

    async def start(conversation, n):
        result = await turns.turn_start(user=user, conversation=conversation, content=f"go {n}", client_id=uuid.uuid4())
        assert result.error is None, result.error
        return result.reply_id

    first = [await start(c, n) for n, c in enumerate(conversations[:20])]
    await eventually(lambda: len(fake_provider.requests_for("sk-rotate-a")) == 20)
    assert turns._RUNNING  # still streaming on A

    await db(add_key)("openai", "sk-rotate-b", text=words)
    await db(keys.key_set_draining)(key_id=a.id)
    later = [await start(c, n) for n, c in enumerate(conversations[20:], start=20)]
    await replies_finished()
    await db(keys.key_disable)(key_id=a.id)

    replies = await db(list)(Message.objects.filter(role="assistant").values_list("id", "status", "content"))
    assert len(replies) == 25
    assert {(status, content) for _id, status, content in replies} == {(Message.Status.DONE, words)}
    assert len(fake_provider.requests_for("sk-rotate-a")) == 20
    assert len(fake_provider.requests_for("sk-rotate-b")) == 5
    by_key = await db(dict)(UsageRecord.objects.values_list("message_id", "key__name"))
    assert {by_key[m] for m in later} == {by_key[later[0]]} != {by_key[first[0]]}
    assert await db(lambda: ProviderKey.objects.get(pk=a.id).state)() == ProviderKey.State.DISABLED


async def test_a_canary_secret_never_leaks(priced, add_key, fake_provider, make_user, conversation_for, all_logs):
    """Through a 401, a 429 and a good answer: no log record at any level, no frame, no audit
    row and no page or API answer holds any of the three secrets."""
    tag = uuid.uuid4().hex[:12]
    secrets = {kind: f"sk-CANARY-{tag}-{kind}-{uuid.uuid4().hex}" for kind in ("401", "429", "ok")}
    # The providers quote (part of) the key back in their error bodies, as OpenAI's 401 does.
    await db(add_key)(
        "openai", secrets["401"], priority=300, mode="error", status=401, message=f"Incorrect API key provided: {secrets['401']}."
    )
    await db(add_key)(
        "openai", secrets["429"], priority=200, mode="error", status=429, message=f"Rate limit for key {secrets['429']}."
    )
    await db(add_key)("openai", secrets["ok"], priority=100, text="The canary sings.")
    user = await db(make_user)("canary")
    conversation = await db(conversation_for)(user)

    frames = await turn_over_socket(user, conversation.id, "sing")
    assert frames[-1]["finish_reason"] == "stop"
    assert {r.key for r in fake_provider.requests} == set(secrets.values())  # all three were really used

    def pages() -> list[str]:
        client = Client()
        client.force_login(user)
        admin = get_user_model().objects.create_superuser("root", "root@example.test", "correct horse battery 9")
        staff = Client()
        staff.force_login(admin)
        responses = [
            client.get(f"/api/v1/conversations/{conversation.id}/"),
            client.get("/api/v1/conversations/"),
            client.get("/api/v1/usage/"),
            client.get("/api/v1/models/"),
            staff.get(reverse("admin:billing_providerkey_changelist")),
            staff.get(reverse("admin:accounts_auditevent_changelist")),
            *(staff.get(reverse("admin:billing_providerkey_change", args=[k.pk])) for k in ProviderKey.objects.all()),
        ]
        assert [r.status_code for r in responses] == [200] * len(responses)
        return [r.content.decode() for r in responses]

    bodies = await sync_to_async(pages)()
    audit = await db(list)(AuditEvent.objects.values())
    needles = [*secrets.values(), f"CANARY-{tag}"]

    haystacks = {
        "logs": "\n".join(all_logs.texts),
        "frames": json.dumps(frames),
        "audit": json.dumps(audit, default=str),
        "pages": "\n".join(bodies),
    }
    assert all_logs.records  # the handler does hear the turn (key state changes are logged)
    assert {name: [n for n in needles if n in text] for name, text in haystacks.items()} == {name: [] for name in haystacks}
    assert await db(AuditEvent.objects.filter(action="provider_key.invalid").exists)()


async def test_failover_needs_no_second_socket_message(priced, add_key, fake_provider, make_user, conversation_for):
    """A turn that failed over sends exactly one start and one done: the user sees one reply."""
    user = await db(make_user)("onereply")
    await db(add_key)("openai", "sk-one-a", priority=200, mode="error", status=500)
    await db(add_key)("openai", "sk-one-b", priority=100, text="Just one.")
    conversation = await db(conversation_for)(user)
    frames = await _turn(user, conversation)
    assert [f["type"] for f in frames if f["type"] != "delta"] == ["ack", "start", "done"]


async def _turn_whose_key_failure_cannot_be_recorded(make_user, add_key, conversation_for, monkeypatch, name, script):
    """A turn of a new user (with a budget) whose first key answers as `script` says, a second key
    behind it ("sk-fault-b"), and reporting a key's failure failing (the database blinked)."""
    user = await db(make_user)(name)
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-fault-a", priority=200, **script)
    await db(add_key)("openai", "sk-fault-b", priority=100, text="Never asked.")
    conversation = await db(conversation_for)(user)

    def broken(**_kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(keys, "key_report_failure", broken)
    return user, await _turn(user, conversation)


async def test_a_fault_of_ours_during_failover_ends_the_reply_as_an_error_and_releases_its_hold(
    priced, add_key, fake_provider, make_user, conversation_for, monkeypatch
):
    """Not a provider's answer but our own bookkeeping failing between two calls: the reply ends
    (never left streaming) with the provider's failure, no other key is tried without the key's
    decision, and the worst-case hold goes back to the budget at once."""
    user, frames = await _turn_whose_key_failure_cannot_be_recorded(
        make_user, add_key, conversation_for, monkeypatch, "ourfault", {"mode": "error", "status": 503}
    )

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_unavailable" and "database" not in error["message"]
    assert frames[-1]["finish_reason"] == "error"
    assert fake_provider.requests_for("sk-fault-b") == []
    reply = await db(Message.objects.get)(role="assistant")
    assert reply.status == Message.Status.ERROR
    assert await db(spent_and_reserved)(user) == (Decimal("0"), Decimal("0"))


async def test_a_fault_of_ours_after_a_call_wrote_text_still_bills_that_call(
    priced, add_key, fake_provider, make_user, conversation_for, monkeypatch
):
    """The provider answered, then cut the stream; reporting that to the key's state fails (the
    database blinked). The provider has billed the input and the words it sent: the ledger must
    say so, and the budget be charged, not the call forgotten with its hold released."""
    user, frames = await _turn_whose_key_failure_cannot_be_recorded(
        make_user, add_key, conversation_for, monkeypatch, "faultaftertext",
        {"mode": "cut", "cut_after": 3, "text": "one two three four five"},
    )

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error" and "database" not in error["message"]
    assert "".join(d["text"] for d in of_type(frames, "delta")) == "one two three"
    assert fake_provider.requests_for("sk-fault-b") == []
    reply = await db(Message.objects.get)(role="assistant")
    assert (reply.content, reply.status) == ("one two three", Message.Status.ERROR)
    spent, reserved = await db(spent_and_reserved)(user)
    assert spent > 0 and reserved == 0
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    assert (record.cost, record.estimated, record.outcome) == (spent, True, "error")
    assert frames[-1]["usage"]["cost"] == turns.money_str(spent)
