"""Trying to make Parley spend past a budget, lose a ledger row or charge twice, through the real
stack: the websocket, the fake provider, the real budgets and ledger (PostgreSQL and Redis when
DATABASE_URL and REDIS_URL are set)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from accounts import services as accounts_services
from accounts.models import Team, TeamMembership
from billing import budgets, ledger
from billing.models import Budget, Reservation, UsageRecord
from conversations.models import Message

from .conftest import db, replies_finished, ws_frames_until_end, ws_open

pytestmark = pytest.mark.django_db(transaction=True)


async def _turn_with_a_change_mid_reply(user, conversation, content: str, change) -> list[dict]:
    """Every frame of a turn over a real socket, with `change()` awaited once two deltas have
    arrived, while the reply still streams."""
    ws = await ws_open(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": content, "client_id": str(uuid.uuid4())})
    frames = []
    while len([f for f in frames if f["type"] == "delta"]) < 2:
        frames.append(await ws.receive_json_from(timeout=10))
    await change()
    frames += await ws_frames_until_end(ws)
    await replies_finished()
    await ws.disconnect()
    return frames


async def test_a_team_deleted_while_a_members_reply_streams_keeps_the_reply_and_its_ledger_row(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """The ledger files a call under the member's first team, taken as the reply starts. An
    operator deleting that team meanwhile must not make the reply's closing save fail: the reply
    is kept, the call is in the ledger (under no team, as the team's older rows now are) with the
    provider's own counts, and the member's own budget is charged exactly that, once."""
    user = await db(make_user)("member")
    team = await db(Team.objects.create)(name="Doomed")
    await db(TeamMembership.objects.create)(team=team, user=user)
    await db(budgets.budget_set)(team=team, period="month", limit="5")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    words = " ".join(f"w{i}" for i in range(40))
    await db(add_key)("openai", "sk-doomed", text=words, pace_ms=30, input_tokens=50, output_tokens=40)
    conversation = await db(conversation_for)(user)

    frames = await _turn_with_a_change_mid_reply(
        user, conversation, "tell me", lambda: db(accounts_services.team_delete)(team=team)
    )

    done = frames[-1]
    assert done["type"] == "done" and done["finish_reason"] == "stop", frames[-3:]
    reply = await db(Message.objects.get)(role="assistant")
    assert reply.status == "done" and reply.content == words
    record = await db(UsageRecord.objects.get)()
    assert (record.team_id, record.input_tokens, record.output_tokens, record.estimated) == (None, 50, 40, False)
    own = await db(Budget.objects.get)(user=user)
    assert own.spent == record.cost == reply.cost > Decimal("0") and own.reserved == 0
    assert not await db(Reservation.objects.filter(state=Reservation.State.HELD).exists)()
    assert await db(ledger.rollup_differences)() == []  # the dashboard's rollup agrees


def test_a_reply_whose_process_died_after_a_failed_call_is_not_billed_for_that_call(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """The first key answered 503 before any output: that call is in the ledger, free (the
    provider bills nothing for it). The process then died (or stalled past the reaper's patience)
    before the next call went out: the buffer still names the failed call. The reaper must not
    bill its input a second time over: the reply, the budget and the ledger all say it cost
    nothing, and the hold is released."""
    from datetime import timedelta

    from django.utils import timezone

    from conversations import failover, tasks, turns
    from conversations.llm.base import ErrorKind, ProviderError

    user = make_user("crashed")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-503", mode="error", status=503)
    conversation = conversation_for(user)
    result, plan = turns._turn_prepare(user=user, conversation_id=conversation.id, content="hello", client_id=uuid.uuid4())
    assert plan is not None, result
    # What the running reply wrote before it died: the failed first call, recorded as failover does.
    failover._call_failed_record(
        ledger_owner=lambda: turns._ledger_owner(plan=plan), attempt=1, provider="openai", model="gpt-4o-mini",
        key_id=plan.key_id, exc=ProviderError(ErrorKind.UNAVAILABLE, "503"), latency_ms=5,
    )
    Message.objects.filter(id=plan.message_id).update(heartbeat_at=timezone.now() - timedelta(minutes=10))

    assert tasks.replies_reap_stale() == 1

    ledger_total = sum(UsageRecord.objects.values_list("cost", flat=True))
    reply = Message.objects.get(id=plan.message_id)
    budget = Budget.objects.get(user=user)
    assert (reply.status, reply.error_code) == ("error", "interrupted")
    assert budget.spent == reply.cost == ledger_total == Decimal("0")
    assert budget.reserved == 0
    assert UsageRecord.objects.count() == 1


async def test_team_members_racing_with_resends_never_overspend_the_team_or_a_personal_budget(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """Three members of a team send at once, each message twice with the same client_id, from
    their own database threads; one of them also has a personal budget smaller than the team's.
    Every admitted call costs exactly its worst case, so the budgets fill to the cent: no budget
    passes its limit, each resend is one message and one charge, and the ledger holds every call."""
    import asyncio

    from asgiref.sync import ThreadSensitiveContext

    from billing import prices
    from conversations import context as context_mod
    from conversations import turns

    from .conftest import MAX_OUTPUT, OPENAI_MODEL

    price = priced[OPENAI_MODEL]
    built = context_mod.context_build(
        system_prompt="", summary="", history=[context_mod.HistoryItem(id=uuid.uuid4(), role="user", content="race")],
        model_id=OPENAI_MODEL, context_window=price.context_window, max_tokens=MAX_OUTPUT,
    )
    worst = prices.worst_case_cost(
        price=price, input_tokens=built.input_tokens, max_output_tokens=MAX_OUTPUT, input_estimated=built.estimated
    )
    billed = built.input_tokens
    if built.estimated:  # the hold's margin, billed in full: each call costs exactly its hold
        billed = int((built.input_tokens * prices.ESTIMATED_INPUT_MARGIN).to_integral_value(rounding="ROUND_CEILING"))
    assert prices.cost_of(price=price, input_tokens=billed, output_tokens=MAX_OUTPUT) == worst
    team = await db(Team.objects.create)(name="Racers")
    members = [await db(make_user)(f"racer{i}") for i in range(3)]
    for member in members:
        await db(TeamMembership.objects.create)(team=team, user=member)
    await db(budgets.budget_set)(team=team, period="day", limit=worst * 7)
    await db(budgets.budget_set)(user=members[0], period="month", limit=worst * 2)
    await db(add_key)("openai", "sk-racers", text="ok", input_tokens=billed, output_tokens=MAX_OUTPUT)
    sends = []
    for member in members:
        for _ in range(5):
            conversation = await db(conversation_for)(member)
            client_id = uuid.uuid4()
            sends += [(member, conversation, client_id)] * 2

    async def one(member, conversation, client_id):
        async with ThreadSensitiveContext():
            return await turns.turn_start(user=member, conversation=conversation, content="race", client_id=client_id)

    results = await asyncio.gather(*(one(*send) for send in sends))
    await replies_finished()

    started = {r.reply_id for r in results if r.reply_id is not None}
    team_budget = await db(Budget.objects.get)(team=team)
    own = await db(Budget.objects.get)(user=members[0])
    records = await db(list)(UsageRecord.objects.values_list("user_id", "cost"))
    assert len(started) == 7 == len(records) == len(fake_provider.requests_for("sk-racers"))
    assert team_budget.spent == worst * 7 == sum(cost for _u, cost in records) and team_budget.reserved == 0
    assert own.spent == sum(cost for u, cost in records if u == members[0].pk) <= own.limit and own.reserved == 0
    assert await db(Message.objects.filter(role="user").count)() == 15
    assert not await db(Reservation.objects.filter(state=Reservation.State.HELD).exists)()


async def test_a_turn_whose_socket_is_gone_before_its_budget_hold_is_taken_still_runs_its_reply(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """A turn queues for its budget's lock behind another turn (another process holds the row).
    Meanwhile its tab closes, and the server cancels the socket's handler (Daphne does, ten
    seconds after a close). The turn's database step still commits a hold and a reply row in its
    thread: the reply must then run (a reply belongs to its turn, not to a socket), be billed
    what the provider reports and settle, not sit "pending" holding the budget and the
    conversation until the reaper bills a call that was never made."""
    import asyncio
    import threading

    from django.db import connection, transaction

    user = await db(make_user)("leaver")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-leaver", text="still answered", input_tokens=10, output_tokens=3)
    conversation = await db(conversation_for)(user)
    locked, release = threading.Event(), threading.Event()

    def other_turn_holding_the_budget():
        with transaction.atomic():
            Budget.objects.select_for_update().filter(user=user).first()
            locked.set()
            release.wait(20)
        connection.close()

    ws = await ws_open(user, conversation.id)  # before the lock: on SQLite the login's session write would queue behind it
    holder = threading.Thread(target=other_turn_holding_the_budget)
    holder.start()
    try:
        assert await asyncio.to_thread(locked.wait, 10)
        await ws.send_json_to({"type": "user_message", "content": "are you there?", "client_id": str(uuid.uuid4())})
        await asyncio.sleep(0.5)  # the turn is in its database step, waiting for the lock
        ws.future.cancel()  # the socket's application instance, cancelled as Daphne does
    finally:
        release.set()
        await asyncio.to_thread(holder.join, 10)

    def reply_ended():
        return Message.objects.filter(role="assistant").exclude(status__in=["pending", "streaming"]).exists()

    for _ in range(200):  # ten seconds, far more than a reply to the fake provider takes
        if await db(reply_ended)():
            break
        await asyncio.sleep(0.05)
    await replies_finished()
    reply = await db(Message.objects.get)(role="assistant")
    record = await db(UsageRecord.objects.get)()
    budget = await db(Budget.objects.get)(user=user)
    assert (reply.status, reply.content) == ("done", "still answered")
    assert (record.input_tokens, record.output_tokens, record.estimated) == (10, 3, False)
    assert budget.spent == record.cost == reply.cost and budget.reserved == 0
    assert len(fake_provider.requests_for("sk-leaver")) == 1


async def test_regenerate_spam_from_two_tabs_charges_each_reply_once_and_never_past_the_budget(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """Two tabs of one conversation each fire Regenerate ten times at once, twice over, on a
    budget with room for three replies at their worst case: one reply runs at a time, each
    started reply is one provider call, one ledger row and one charge, and the budget holds."""
    import asyncio

    from asgiref.sync import ThreadSensitiveContext

    from conversations import turns

    from .conftest import turn_over_socket

    user = await db(make_user)("spammer")
    await db(add_key)("openai", "sk-spam", text="again", input_tokens=20, output_tokens=150)
    conversation = await db(conversation_for)(user)
    first = await turn_over_socket(user, conversation.id, "regenerate me")
    assert first[-1]["type"] == "done"
    first_cost = Decimal(first[-1]["usage"]["cost"])
    hold = await db(lambda: Reservation.objects.get().amount)()
    await db(budgets.budget_set)(user=user, period="month", limit=first_cost + hold * 3)

    async def regenerate():
        async with ThreadSensitiveContext():
            return await turns.turn_regenerate(user=user, conversation=conversation)

    started = []
    for _wave in range(2):
        results = await asyncio.gather(*(regenerate() for _ in range(20)))
        started += [r.reply_id for r in results if r.reply_id is not None]
        assert {r.error.code for r in results if r.error is not None} <= {"busy", "budget_exceeded"}
        await replies_finished()

    budget = await db(Budget.objects.get)(user=user)
    records = await db(list)(UsageRecord.objects.values_list("message_id", "cost"))
    assert 1 <= len(started) <= 3
    assert len(records) == len(started) + 1 == len({m for m, _c in records}) == len(fake_provider.requests_for("sk-spam"))
    assert budget.spent == sum(c for _m, c in records) <= budget.limit and budget.reserved == 0


def test_a_title_call_whose_team_is_deleted_meanwhile_is_in_the_ledger_and_charged_once(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """A follow-up call (the conversation's title) is filed under the member's team as it starts.
    The team deleted while it runs: the call is still in the ledger (under no team), the member's
    own budget charged exactly what that row says, and the title is the model's."""
    import threading
    import time

    from django.db import connection

    from conversations import services

    user = make_user("titled")
    team = Team.objects.create(name="Gone")
    TeamMembership.objects.create(team=team, user=user)
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-title-slow", text="Spring in Busan", pace_ms=150, input_tokens=30, output_tokens=4)
    conversation = conversation_for(user, title="")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Busan in the spring")

    def title():
        try:
            services.conversation_title_generate(conversation_id=conversation.id)
        finally:
            connection.close()

    worker = threading.Thread(target=title)
    worker.start()
    for _ in range(200):
        if fake_provider.requests_for("sk-title-slow"):
            break
        time.sleep(0.02)
    accounts_services.team_delete(team=team)
    worker.join(20)

    record = UsageRecord.objects.get()
    own = Budget.objects.get(user=user)
    assert (record.team_id, record.input_tokens, record.output_tokens) == (None, 30, 4)
    assert own.spent == record.cost > 0 and own.reserved == 0
    conversation.refresh_from_db()
    assert conversation.title == "Spring in Busan"


async def test_a_budget_deleted_and_set_again_while_a_reply_streams_is_charged_that_reply(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """An operator removes a person's budget and sets a new one (another limit) while their reply
    streams: the new budget takes over the reply's hold, and is charged the reply when it ends,
    so it shows what the ledger says was spent this period."""
    user = await db(make_user)("reset")
    old = await db(budgets.budget_set)(user=user, period="month", limit="5")
    words = " ".join(f"w{i}" for i in range(30))
    await db(add_key)("openai", "sk-reset", text=words, pace_ms=30, input_tokens=40, output_tokens=30)
    conversation = await db(conversation_for)(user)

    taken_over = []

    async def reset() -> None:
        await db(budgets.budget_delete)(budget=old)
        taken_over.append(await db(budgets.budget_set)(user=user, period="month", limit="3"))

    frames = await _turn_with_a_change_mid_reply(user, conversation, "go", reset)
    [new] = taken_over
    assert new.reserved > 0  # the reply's hold, taken over

    assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "stop"
    record = await db(UsageRecord.objects.get)()
    budget = await db(Budget.objects.get)(user=user)
    assert budget.pk == new.pk and budget.spent == record.cost > 0 and budget.reserved == 0


async def test_a_reply_running_across_midnight_settles_into_the_new_day_and_the_day_after_is_fresh(
    priced, add_key, fake_provider, make_user, conversation_for
):
    """A daily budget in the person's time zone, used up yesterday, with a reply that started
    before midnight and ends after it: the reply is charged to the day it ends in (as its ledger
    row is dated), the hold is released, and the new day's spend is that reply alone."""
    from datetime import timedelta

    user = await db(make_user)("midnight", timezone="Asia/Seoul")
    budget = await db(budgets.budget_set)(user=user, period="day", limit="1")
    words = " ".join(f"w{i}" for i in range(30))
    await db(add_key)("openai", "sk-midnight", text=words, pace_ms=30, input_tokens=40, output_tokens=30)
    conversation = await db(conversation_for)(user)

    # Midnight in Seoul passes: the stored spend is now yesterday's (set as it would have been
    # left: a day spent to within this reply's hold). Written directly: no service moves the clock.
    frames = await _turn_with_a_change_mid_reply(
        user, conversation, "go", lambda: db(Budget.objects.filter(pk=budget.pk).update)(
            period_start=budget.period_start - timedelta(days=1), spent=Decimal("0.99")
        )
    )

    record = await db(UsageRecord.objects.get)()
    budget = await db(Budget.objects.get)(pk=budget.pk)
    assert frames[-1]["finish_reason"] == "stop"
    assert budget.spent == record.cost > 0 and budget.reserved == 0
    statuses = await db(budgets.budget_status)(user=user)
    assert statuses[0].spent == record.cost and statuses[0].remaining == Decimal("1") - record.cost
