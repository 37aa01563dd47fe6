"""Issue 4 through the real stack: concurrent turns never overspend a budget, a team's spent
budget refuses over the websocket naming the team, every way a reply ends settles its
reservation, and the usage API shows what a real turn cost."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.test import Client
from django.utils import timezone

from accounts.models import Team, TeamMembership
from billing import budgets, prices
from billing.models import Budget, Reservation, UsageRecord
from conversations import context as context_mod
from conversations import turns
from conversations.models import Message
from conversations.turns import money_str

from .conftest import (
    ANTHROPIC_MODEL,
    MAX_OUTPUT,
    OPENAI_MODEL,
    db,
    eventually,
    of_type,
    replies_finished,
    spent_and_reserved,
    turn_over_socket,
    ws_frames_until_end,
    ws_open,
    ws_turn,
)

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "What does a worst case cost?"


def _counted(price, model_id: str = OPENAI_MODEL):
    """QUESTION alone in a new conversation, as the turn counts it: the real context builder."""
    return context_mod.context_build(
        system_prompt="",
        summary="",
        history=[context_mod.HistoryItem(id=uuid.uuid4(), role="user", content=QUESTION)],
        model_id=model_id,
        context_window=price.context_window,
        max_tokens=MAX_OUTPUT,
    )


def _worst_case(price) -> tuple[int, Decimal]:
    """(the input a provider may bill, worst-case cost) of QUESTION alone in a new conversation:
    the turn's count, with the margin its hold adds when that count is an estimate, so a call
    billed that input and MAX_OUTPUT costs exactly the hold."""
    built = _counted(price)
    worst = prices.worst_case_cost(
        price=price, input_tokens=built.input_tokens, max_output_tokens=MAX_OUTPUT, input_estimated=built.estimated
    )
    billed = built.input_tokens
    if built.estimated:
        billed = int((built.input_tokens * prices.ESTIMATED_INPUT_MARGIN).to_integral_value(rounding="ROUND_CEILING"))
    assert prices.cost_of(price=price, input_tokens=billed, output_tokens=MAX_OUTPUT) == worst
    return billed, worst


async def test_thirty_turns_at_once_never_overspend_a_budget_of_ten_worst_cases(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("thirty")
    input_tokens, worst = _worst_case(priced[OPENAI_MODEL])
    limit = worst * 10
    await db(budgets.budget_set)(user=user, period="month", limit=limit)
    # Each admitted call really costs its worst case, so however the 30 interleave (some may
    # finish before others reserve), the budget holds exactly ten.
    await db(add_key)("openai", "sk-thirty", text="Ten of us.", input_tokens=input_tokens, output_tokens=MAX_OUTPUT)
    conversations = [await db(conversation_for)(user) for _ in range(30)]

    async def one(conversation):
        # Each turn's database work in its own thread, as thirty requests to several server
        # processes would run: the reservations really race in the database.
        async with ThreadSensitiveContext():
            return await turns.turn_start(user=user, conversation=conversation, content=QUESTION, client_id=uuid.uuid4())

    results = await asyncio.gather(*(one(c) for c in conversations))
    await replies_finished()

    admitted = [r for r in results if r.reply_id is not None]
    refused = [r for r in results if r.error is not None]
    assert len(admitted) == 10 and len(refused) == 20
    assert {r.error.code for r in refused} == {"budget_exceeded"}
    budget = await db(Budget.objects.get)(user=user)
    assert budget.spent == limit and budget.spent <= budget.limit and budget.reserved == 0
    assert sum(await db(list)(UsageRecord.objects.values_list("cost", flat=True))) == limit
    assert len(fake_provider.requests_for("sk-thirty")) == 10
    assert not await db(Reservation.objects.filter(state=Reservation.State.HELD).exists)()
    # Every refused turn kept its user message and made no reply.
    assert await db(Message.objects.filter(role="user").count)() == 30
    assert await db(Message.objects.filter(role="assistant").count)() == 10


async def test_turns_racing_in_one_conversation_start_one_reply_and_hold_nothing_for_the_others(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """The hold and the reply row are one transaction: a turn that loses the race for the
    conversation (busy, by the history read or by the one-running-reply constraint) keeps no hold."""
    user = await db(make_user)("racer")
    input_tokens, worst = _worst_case(priced[OPENAI_MODEL])
    await db(budgets.budget_set)(user=user, period="month", limit=worst * 100)
    # Paced, so the one reply is still being written while the others race (one second): a reply
    # already finished frees the conversation, and a turn starting after that is rightly answered.
    await db(add_key)(
        "openai", "sk-race", text="Only one of us.", input_tokens=input_tokens, output_tokens=MAX_OUTPUT, pace_ms=250
    )
    conversation = await db(conversation_for)(user)

    async def one():
        async with ThreadSensitiveContext():
            return await turns.turn_start(user=user, conversation=conversation, content=QUESTION, client_id=uuid.uuid4())

    results = await asyncio.gather(*(one() for _ in range(8)))
    await replies_finished()

    assert len([r for r in results if r.reply_id is not None]) == 1
    assert {r.error.code for r in results if r.error is not None} == {"busy"}
    assert len(fake_provider.requests_for("sk-race")) == 1
    assert not await db(Reservation.objects.filter(state=Reservation.State.HELD).exists)()
    budget = await db(Budget.objects.get)(user=user)
    assert budget.reserved == 0 and budget.spent == worst  # the one reply, at its worst case
    assert await db(Message.objects.filter(role="user").count)() == 8  # every question kept


async def test_a_spent_team_budget_refuses_over_the_websocket_naming_the_team(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("student")
    team = await db(Team.objects.create)(name="Physics")
    await db(TeamMembership.objects.create)(team=team, user=user)
    input_tokens, worst = _worst_case(priced[OPENAI_MODEL])
    await db(budgets.budget_set)(team=team, period="month", limit=worst)
    await db(budgets.budget_set)(user=user, period="month", limit="5")  # the user's own has room
    await db(add_key)("openai", "sk-team", input_tokens=input_tokens, output_tokens=MAX_OUTPUT)
    conversation = await db(conversation_for)(user)

    ws = await ws_open(user, conversation.id)
    first = await ws_turn(ws, QUESTION)  # spends the team's whole budget, for real
    await replies_finished()
    assert first[-1]["type"] == "done" and first[-1]["finish_reason"] == "stop"
    refused = await ws_turn(ws, "one more")
    await ws.disconnect()

    assert [f["type"] for f in refused] == ["ack", "error"]
    error = refused[-1]
    assert error["code"] == "budget_exceeded"
    assert "Physics" in error["message"] and "team" in error["message"]
    assert error["budget"]["scope"] == "team" and error["budget"]["name"] == "Physics" and error["budget"]["period"] == "month"
    assert len(fake_provider.requests_for("sk-team")) == 1
    team_budget = await db(Budget.objects.get)(team=team)
    assert team_budget.spent == worst and team_budget.reserved == 0
    assert await db(Message.objects.filter(content="one more").exists)()


async def test_a_stopped_reply_settles_its_reservation_and_pays_for_what_was_used(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("stopper")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-stop", text=" ".join(f"word{i}" for i in range(200)), pace_ms=20)
    conversation = await db(conversation_for)(user)

    ws = await ws_open(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": "talk for a long time", "client_id": str(uuid.uuid4())})
    while (await ws.receive_json_from(timeout=10))["type"] != "delta":
        pass
    assert (await db(spent_and_reserved)(user))[1] > 0  # the worst case is held while it streams
    await ws.send_json_to({"type": "stop"})
    frames = await ws_frames_until_end(ws)
    await replies_finished()
    await ws.disconnect()

    done = frames[-1]
    assert done["finish_reason"] == "cancelled"
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert reply.status == Message.Status.CANCELLED and reply.content.startswith("word0")
    spent, reserved = await db(spent_and_reserved)(user)
    # No leak (the hold is gone) and no free ride (the provider billed the input it was sent).
    assert reserved == 0 and spent > 0
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    assert record.outcome == "cancelled" and record.cost == spent and record.input_tokens > 0
    assert done["usage"]["cost"] == money_str(spent)
    assert not await db(Reservation.objects.filter(state=Reservation.State.HELD).exists)()


@pytest.mark.parametrize("ending", ["stopped", "overloaded"])
async def test_an_anthropic_reply_ended_early_is_billed_the_input_anthropic_counted(
    ending, priced, add_key, fake_provider, make_user, conversation_for
):
    # Anthropic counts the input in message_start, before any text. A reply that ends before its
    # last message_delta (the person stops it, or an overloaded_error comes mid-stream) is billed
    # that count, not our own estimate of it; the output, never reported, is counted.
    user = await db(make_user)(f"ant-{ending}")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    words = " ".join(f"word{i}" for i in range(200))
    if ending == "stopped":
        await db(add_key)("anthropic", "sk-ant-early", text=words, pace_ms=20, input_tokens=1234)
    else:
        await db(add_key)("anthropic", "sk-ant-early", mode="stream_error", cut_after=3, text=words, input_tokens=1234)
    conversation = await db(conversation_for)(user, model=ANTHROPIC_MODEL)

    ws = await ws_open(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": "talk for a long time", "client_id": str(uuid.uuid4())})
    if ending == "stopped":
        while (await ws.receive_json_from(timeout=10))["type"] != "delta":
            pass
        await ws.send_json_to({"type": "stop"})
    frames = await ws_frames_until_end(ws)
    await replies_finished()
    await ws.disconnect()

    done = frames[-1]
    assert done["finish_reason"] == ("cancelled" if ending == "stopped" else "error")
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert reply.content.startswith("word0")
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    output_tokens = context_mod.count_tokens(text=reply.content, model_id=ANTHROPIC_MODEL)[0]
    assert (record.input_tokens, record.output_tokens, record.estimated) == (1234, output_tokens, True)
    expected = prices.cost_of(price=priced[ANTHROPIC_MODEL], input_tokens=1234, output_tokens=output_tokens)
    assert record.cost == expected and done["usage"]["input_tokens"] == 1234
    assert await db(spent_and_reserved)(user) == (expected, Decimal("0"))


async def test_a_cut_stream_settles_its_reservation(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("cut")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-cut", mode="cut", cut_after=4, text="a b c d e f g h")
    conversation = await db(conversation_for)(user)

    frames = await turn_over_socket(user, conversation.id, "cut me off")

    assert frames[-1]["finish_reason"] == "error"
    spent, reserved = await db(spent_and_reserved)(user)
    assert reserved == 0 and spent > 0
    assert not await db(Reservation.objects.filter(state=Reservation.State.HELD).exists)()


async def test_a_reply_failing_over_keeps_its_hold_for_its_next_call_past_the_first_ones_expiry(
    priced, add_key, fake_provider, make_user, conversation_for, settings
):
    """A hold lasts one call (LLM_TOTAL_TIMEOUT and a margin). A reply whose first key hangs and
    whose next key answers makes two: once the first call's hold would have lapsed, the expiry
    task must not release it while the second call still runs, or the room goes to another reply
    and the first one's settle takes the budget past its limit."""
    settings.LLM_FIRST_TOKEN_TIMEOUT = 1.0  # the first call's hang: the next one starts a second later
    user = await db(make_user)("patient")
    input_tokens, worst = _worst_case(priced[OPENAI_MODEL])
    limit = worst * Decimal("1.5")  # room for one reply's hold, not two
    await db(budgets.budget_set)(user=user, period="month", limit=limit)
    await db(add_key)("openai", "sk-hangs", priority=200, mode="hang")
    await db(add_key)(
        "openai", "sk-answers", priority=100, text="Still here, still held.", pace_ms=300,
        input_tokens=input_tokens, output_tokens=MAX_OUTPUT,
    )
    first, second = await db(conversation_for)(user), await db(conversation_for)(user)

    started = await turns.turn_start(user=user, conversation=first, content=QUESTION, client_id=uuid.uuid4())
    hold = await db(Reservation.objects.get)(state=Reservation.State.HELD)
    lapses = hold.expires_at  # where the first call's hold ends
    await eventually(lambda: fake_provider.requests_for("sk-answers"))  # the second call is out

    # The expiry task, run as if the first call's hold had lapsed while the second call streams
    # (half a second past it: the second call went out a second after the first).
    await db(budgets.reservations_expire)(now=lapses + timedelta(seconds=0.5))
    assert await db(spent_and_reserved)(user) == (Decimal("0"), worst)  # still held
    rival = await turns.turn_start(user=user, conversation=second, content=QUESTION, client_id=uuid.uuid4())
    assert rival.error is not None and rival.error.code == "budget_exceeded"

    await replies_finished()
    reply = await db(Message.objects.get)(id=started.reply_id)
    assert (reply.status, reply.content) == (Message.Status.DONE, "Still here, still held.")
    spent, reserved = await db(spent_and_reserved)(user)
    assert (spent, reserved) == (worst, Decimal("0")) and spent <= limit
    assert len(fake_provider.requests_for("sk-answers")) == 1


async def test_a_reply_whose_hold_was_released_mid_call_makes_no_next_call(
    priced, add_key, fake_provider, make_user, conversation_for, settings
):
    """A hold already released (its process stalled past the expiry) is not called on again."""
    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.5
    user = await db(make_user)("stalled")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-hangs-too", priority=200, mode="hang")
    await db(add_key)("openai", "sk-never-asked", priority=100)
    conversation = await db(conversation_for)(user)

    started = await turns.turn_start(user=user, conversation=conversation, content=QUESTION, client_id=uuid.uuid4())
    await eventually(lambda: fake_provider.requests_for("sk-hangs-too"))
    await db(budgets.reservations_expire)(now=timezone.now() + timedelta(days=1))  # released mid-call
    await replies_finished()

    assert fake_provider.requests_for("sk-never-asked") == []
    reply = await db(Message.objects.get)(id=started.reply_id)
    assert (reply.status, reply.error_code) == (Message.Status.ERROR, "provider_unavailable")
    assert await db(spent_and_reserved)(user) == (Decimal("0"), Decimal("0"))


async def test_a_provider_error_before_any_output_charges_nothing(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("refused")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-400", mode="error", status=400, message="Invalid 'temperature'.")
    conversation = await db(conversation_for)(user)

    frames = await turn_over_socket(user, conversation.id, "anything")

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error"
    assert "temperature" not in error["message"]  # the provider's own words are not passed on
    assert await db(spent_and_reserved)(user) == (Decimal("0"), Decimal("0"))
    assert await db(list)(UsageRecord.objects.values_list("cost", "outcome")) == [(Decimal("0"), "error")]


async def test_the_usage_api_shows_a_real_turns_spend(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("reader")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-usage", text="Counted and shown.")
    conversation = await db(conversation_for)(user)

    ws = await ws_open(user, conversation.id)
    done = (await ws_turn(ws, "what did this cost"))[-1]
    await replies_finished()
    await ws.disconnect()

    def usage() -> dict:
        client = Client()
        client.force_login(user)
        response = client.get("/api/v1/usage/")
        assert response.status_code == 200
        return response.json()

    body = await sync_to_async(usage)()
    cost = done["usage"]["cost"]
    assert Decimal(cost) > 0 and Decimal(body["spent"]) == Decimal(cost)
    (row,) = body["by_model"]
    assert row["model"] == OPENAI_MODEL and row["requests"] == 1 and Decimal(row["spent"]) == Decimal(cost)
    assert (row["input_tokens"], row["output_tokens"]) == (done["usage"]["input_tokens"], done["usage"]["output_tokens"])
    (budget,) = body["budgets"]
    assert budget["scope"] == "user" and Decimal(budget["spent"]) == Decimal(cost)
    assert Decimal(budget["remaining"]) == Decimal("5") - Decimal(cost)


async def test_a_provider_counting_more_input_than_our_estimate_never_takes_a_budget_past_its_limit(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # Anthropic publishes no tiktoken encoding: the turn counts with cl100k, an estimate, and
    # Anthropic bills by its own tokenizer's count, here a third more.
    price = priced[ANTHROPIC_MODEL]
    built = _counted(price, ANTHROPIC_MODEL)
    assert built.estimated
    billed_input = built.input_tokens * 4 // 3 + 1
    user = await db(make_user)("tokenizer")
    # Room for the call as we count it, not as the provider will bill it.
    limit = prices.cost_of(price=price, input_tokens=built.input_tokens, output_tokens=MAX_OUTPUT)
    await db(budgets.budget_set)(user=user, period="month", limit=limit)
    await db(add_key)("anthropic", "sk-ant-more", input_tokens=billed_input, output_tokens=MAX_OUTPUT)
    conversation = await db(conversation_for)(user, model=ANTHROPIC_MODEL)

    refused = await turn_over_socket(user, conversation.id, QUESTION)

    assert [f["type"] for f in refused] == ["ack", "error"] and refused[-1]["code"] == "budget_exceeded"
    assert "could cost up to" in refused[-1]["message"]
    assert fake_provider.requests_for("sk-ant-more") == []
    budget = await db(Budget.objects.get)(user=user)
    assert budget.spent == 0 and budget.reserved == 0

    # With room for the hold's margin, the call runs, and what the provider billed fits.
    worst = prices.worst_case_cost(price=price, input_tokens=built.input_tokens, max_output_tokens=MAX_OUTPUT, input_estimated=True)
    await db(budgets.budget_set)(user=user, period="month", limit=worst)
    answered = await turn_over_socket(user, conversation.id, QUESTION)

    assert answered[-1]["type"] == "done" and answered[-1]["finish_reason"] in ("stop", "length")
    budget = await db(Budget.objects.get)(user=user)
    billed = prices.cost_of(price=price, input_tokens=billed_input, output_tokens=MAX_OUTPUT)
    assert budget.spent == billed and billed <= budget.limit and budget.reserved == 0


def test_a_reply_whose_process_and_buffer_are_both_gone_is_billed_its_input_and_frees_its_hold(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """The process died once the call went out, and Redis lost the stream buffer too (a restart:
    it keeps nothing on disk). The reaper still bills the input the call was sent, estimated, at
    the price of the reply's start, and releases the rest of the hold at once, not at its expiry."""
    from django.core.cache import cache
    from django.utils import timezone

    from conversations import tasks

    user = make_user("dead")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-dead")
    conversation = conversation_for(user)
    price = prices.price_for(model_id=OPENAI_MODEL)
    billed, worst = _worst_case(price)

    # Prepared as the turn does, then never run: the process is gone before any frame.
    result, plan = turns._turn_prepare(user=user, conversation_id=conversation.id, content=QUESTION, client_id=uuid.uuid4())
    assert plan is not None, result
    assert spent_and_reserved(user) == (Decimal("0"), worst)
    cache.clear()
    Message.objects.filter(id=plan.message_id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))

    assert tasks.replies_reap_stale() == 1

    reply = Message.objects.get(id=plan.message_id)
    cost = prices.cost_of(price=price, input_tokens=plan.input_tokens, output_tokens=0)
    assert (reply.status, reply.error_code, reply.input_tokens, reply.output_tokens, reply.cost) == (
        "error", "interrupted", plan.input_tokens, 0, cost
    )
    assert spent_and_reserved(user) == (cost, Decimal("0"))
    assert Reservation.objects.get().state == Reservation.State.SETTLED
    record = UsageRecord.objects.get()
    assert (record.message_id, record.input_tokens, record.output_tokens, record.cost, record.estimated, record.outcome) == (
        plan.message_id, plan.input_tokens, 0, cost, True, "error"
    )
    assert tasks.replies_reap_stale() == 0  # once
    assert UsageRecord.objects.count() == 1
