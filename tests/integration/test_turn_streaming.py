"""Issue 3 over the real adapters: a turn streams through the official OpenAI and Anthropic SDKs
against the fake provider, end to end, and each way a provider call can go wrong ends the turn
with the user told why and the money right."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from billing import budgets, prices
from billing.models import Budget, UsageRecord
from billing.models_stats import KeyDailyStats
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

REPLY = "Streaming works through the real SDK, word by word, to the end."


def _fake_usage(request) -> int:
    """The fake provider's input count: 3 per message plus one per word (system included)."""
    words = sum(3 + len(str(m["content"]).split()) for m in request.messages)
    return words + (len(str(request.system).split()) if request.system else 0)


@pytest.mark.parametrize("model_id", [OPENAI_MODEL, ANTHROPIC_MODEL])
async def test_a_reply_streams_end_to_end_and_costs_what_the_price_row_says(
    model_id, priced, add_key, fake_provider, make_user, conversation_for
):
    provider = model_id.partition(":")[0]
    user = await db(make_user)("streamer")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)(provider, f"sk-{provider}-stream-1", text=REPLY, pace_ms=5)
    conversation = await db(conversation_for)(user, model=model_id, system_prompt="Be brief and kind.")

    ws = await ws_open(user, conversation.id)
    client_id = str(uuid.uuid4())
    frames = await ws_turn(ws, "Tell me how streaming works please", client_id=client_id)
    await replies_finished()
    await ws.disconnect()

    ack, start = frames[0], frames[1]
    assert ack["type"] == "ack" and ack["client_id"] == client_id
    assert start == {"type": "start", "message_id": start["message_id"], "model": model_id}
    deltas = of_type(frames, "delta")
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)) and len(deltas) >= 1
    assert "".join(d["text"] for d in deltas) == REPLY
    assert of_type(frames, "error") == []
    done = frames[-1]

    (request,) = fake_provider.requests_for(f"sk-{provider}-stream-1")
    assert request.model == model_id.partition(":")[2] and request.stream
    assert request.max_tokens == MAX_OUTPUT  # a non-OpenAI base URL gets the classic parameter
    input_tokens, output_tokens = _fake_usage(request), len(REPLY.split())
    expected = prices.cost_of(price=priced[model_id], input_tokens=input_tokens, output_tokens=output_tokens)
    assert expected > 0
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"input_tokens": input_tokens, "output_tokens": output_tokens, "cost": money_str(expected)}

    reply = await db(Message.objects.get)(id=start["message_id"])
    assert (reply.content, reply.status, reply.cost) == (REPLY, Message.Status.DONE, expected)
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    assert (record.key_id, record.cost, record.estimated, record.outcome) == (key.id, expected, False, "ok")
    assert (record.input_tokens, record.output_tokens) == (input_tokens, output_tokens)
    assert (record.provider, record.model) == tuple(model_id.split(":"))  # kept apart, as the rollups expect
    assert await db(spent_and_reserved)(user) == (expected, Decimal("0"))
    # The dashboard's per-key rollup was written with the ledger row.
    stats = await db(KeyDailyStats.objects.get)(key_id=key.id)
    assert (stats.requests, stats.errors) == (1, 0)


async def test_anthropic_cache_reads_count_as_input_and_cost_the_cached_price(priced, add_key, fake_provider, make_user, conversation_for):
    """Billing's convention: input_tokens is ALL the input, cached_tokens the cached part."""
    user = await db(make_user)("cacher")
    await db(prices.price_set)(
        model_id=ANTHROPIC_MODEL, input_per_million="3", output_per_million="15", cached_input_per_million="0.3"
    )
    price = await db(prices.price_for)(model_id=ANTHROPIC_MODEL)
    await db(add_key)("anthropic", "sk-ant-cache", text="Cached.", input_tokens=100, output_tokens=7, cached_tokens=900)
    conversation = await db(conversation_for)(user, model=ANTHROPIC_MODEL)

    ws = await ws_open(user, conversation.id)
    done = (await ws_turn(ws, "hello again"))[-1]
    await replies_finished()
    await ws.disconnect()

    expected = prices.cost_of(price=price, input_tokens=1000, output_tokens=7, cached_tokens=900)
    assert done["usage"] == {"input_tokens": 1000, "output_tokens": 7, "cost": money_str(expected)}
    record = await db(UsageRecord.objects.get)(outcome="ok")
    assert (record.input_tokens, record.cached_tokens, record.cost) == (1000, 900, expected)


@pytest.mark.parametrize("model_id", [OPENAI_MODEL, ANTHROPIC_MODEL])
async def test_a_context_too_long_400_tells_the_user_and_charges_nothing(model_id, priced, add_key, fake_provider, make_user, conversation_for):
    provider = model_id.partition(":")[0]
    user = await db(make_user)("verbose")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)(provider, f"sk-{provider}-ctx", mode="error", status=400, code="context_length_exceeded")
    await db(add_key)(provider, f"sk-{provider}-ctx-other", priority=1)
    conversation = await db(conversation_for)(user, model=model_id)

    frames = await turn_over_socket(user, conversation.id, "a very long question")

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error" and "too long" in error["message"]
    assert frames[-1]["finish_reason"] == "error" and frames[-1]["usage"]["cost"] == money_str(Decimal(0))
    # The request's own fault: not retried on the other key.
    assert fake_provider.requests_for(f"sk-{provider}-ctx-other") == []
    assert await db(spent_and_reserved)(user) == (Decimal("0"), Decimal("0"))
    records = await db(list)(UsageRecord.objects.values_list("cost", "error_kind"))
    assert records == [(Decimal("0"), "context_too_long")]
    user_message = await db(Message.objects.get)(role="user")
    assert user_message.content == "a very long question"


async def test_a_provider_that_hangs_times_out_and_the_user_hears_why(priced, add_key, fake_provider, make_user, conversation_for, settings):
    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.5
    user = await db(make_user)("patient")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)("openai", "sk-hangs", mode="hang")
    conversation = await db(conversation_for)(user)

    frames = await turn_over_socket(user, conversation.id, "are you there?")

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_unavailable" and "in time" in error["message"]
    assert frames[-1]["finish_reason"] == "error"
    reply = await db(Message.objects.get)(id=frames[-1]["message_id"])
    assert reply.status == Message.Status.ERROR
    assert await db(spent_and_reserved)(user) == (Decimal("0"), Decimal("0"))
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    assert (record.cost, record.error_kind, record.key_id) == (Decimal("0"), "timeout", key.id)


@pytest.mark.parametrize("model_id", [OPENAI_MODEL, ANTHROPIC_MODEL])
async def test_a_stream_cut_after_some_deltas_keeps_the_text_and_charges_what_was_used(
    model_id, priced, add_key, fake_provider, make_user, conversation_for
):
    provider = model_id.partition(":")[0]
    user = await db(make_user)("cutoff")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)(provider, f"sk-{provider}-cut", mode="cut", cut_after=3, text="one two three four five six")
    await db(add_key)(provider, f"sk-{provider}-cut-other", priority=1)
    conversation = await db(conversation_for)(user, model=model_id)

    frames = await turn_over_socket(user, conversation.id, "count to six")

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error" and "cut off" in error["message"]
    assert "".join(d["text"] for d in of_type(frames, "delta")) == "one two three"
    done = frames[-1]
    assert done["finish_reason"] == "error"
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert (reply.content, reply.status) == ("one two three", Message.Status.ERROR)
    # Not retried on the other key: the answer would repeat and the input be billed twice.
    assert fake_provider.requests_for(f"sk-{provider}-cut-other") == []
    # The provider billed the input and three words: estimated, charged, the hold released.
    spent, reserved = await db(spent_and_reserved)(user)
    assert spent > 0 and reserved == 0
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    assert record.estimated and record.cost == spent and record.outcome == "error"
    assert done["usage"]["cost"] == money_str(spent)


async def test_a_channel_layer_failing_as_the_reply_starts_ends_it_billed_and_keeps_the_socket_usable(
    priced, add_key, fake_provider, make_user, conversation_for, monkeypatch
):
    # The provider request goes out before the reply's layer set-up (the stop listener's group):
    # when that set-up fails, the call already made must be stopped, billed and settled, and
    # the reply end as an error the user hears, not hang until the reaper.
    from channels.layers import get_channel_layer

    from conversations import turns

    user = await db(make_user)("layerfault")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-layer-fault", text="a slow reply that never gets to finish", pace_ms=200)
    conversation = await db(conversation_for)(user)
    layer = get_channel_layer()
    real_group_add = layer.group_add

    async def group_add(group, channel):
        if group == turns.control_group_name(conversation.id):
            # As a layer over the network fails: after a while, the request already out.
            for _ in range(200):
                if fake_provider.requests_for("sk-layer-fault"):
                    break
                await asyncio.sleep(0.01)
            raise ConnectionError("the channel layer is away")
        return await real_group_add(group, channel)

    ws = await ws_open(user, conversation.id)
    monkeypatch.setattr(layer, "group_add", group_add)
    frames = await ws_turn(ws, "start and fail", timeout=10)
    await replies_finished()
    monkeypatch.setattr(layer, "group_add", real_group_add)

    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error" and error["message_id"] == frames[-1]["message_id"]
    assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "error"
    reply = await db(Message.objects.get)(id=frames[-1]["message_id"])
    assert reply.status == Message.Status.ERROR
    assert await db(Message.objects.filter(role="user", content="start and fail").exists)()
    # The request was made: billed as the estimate of its input, the hold released.
    assert len(fake_provider.requests_for("sk-layer-fault")) == 1
    spent, reserved = await db(spent_and_reserved)(user)
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    assert reserved == 0 and spent == record.cost > 0 and record.estimated
    # The socket still works: the next message streams a whole reply.
    await db(add_key)("openai", "sk-layer-back", text="Back again.", priority=200)
    again = await ws_turn(ws, "and now?")
    await replies_finished()
    await ws.disconnect()
    assert "".join(d["text"] for d in of_type(again, "delta")) == "Back again."
    assert again[-1]["finish_reason"] == "stop"


async def test_a_resend_of_the_same_client_id_never_charges_twice(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("resender")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-once", text="Only once.")
    conversation = await db(conversation_for)(user)
    client_id = str(uuid.uuid4())

    ws = await ws_open(user, conversation.id)
    first = await ws_turn(ws, "say it once", client_id=client_id)
    await replies_finished()
    spent_after_one = (await db(spent_and_reserved)(user))[0]
    await ws.send_json_to({"type": "user_message", "content": "say it once", "client_id": client_id})
    again = await ws.receive_json_from(timeout=10)
    assert await ws.receive_nothing(timeout=0.3)
    await replies_finished()
    await ws.disconnect()

    assert again == {"type": "ack", "client_id": client_id, "message_id": first[0]["message_id"]}
    assert len(fake_provider.requests_for("sk-once")) == 1
    assert await db(Message.objects.count)() == 2
    assert await db(UsageRecord.objects.count)() == 1
    assert spent_after_one > 0 and await db(spent_and_reserved)(user) == (spent_after_one, Decimal("0"))
    assert await db(lambda: Budget.objects.get(user=user).spent)() == spent_after_one


async def test_an_untitled_conversation_gets_a_title_from_a_real_billed_call(priced, add_key, fake_provider, make_user, conversation_for):
    user = await db(make_user)("titler")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-title", text="Paris trip ideas")
    conversation = await db(conversation_for)(user, title="")

    ws = await ws_open(user, conversation.id)
    await ws_turn(ws, "Where should I go in Paris?")
    await replies_finished()
    await ws.disconnect()

    chat, title = fake_provider.requests_for("sk-title")
    assert chat.max_tokens == MAX_OUTPUT and title.max_tokens == 24
    assert (await db(type(conversation).objects.get)(pk=conversation.pk)).title == "Paris trip ideas"
    # The title call is a provider call like any other: in the ledger and on the budget.
    costs = await db(list)(UsageRecord.objects.order_by("created_at").values_list("message_id", "cost"))
    assert len(costs) == 2 and costs[0][0] is not None and costs[1][0] is None
    assert await db(spent_and_reserved)(user) == (costs[0][1] + costs[1][1], Decimal("0"))


async def test_twelve_concurrent_replies_each_arrive_complete_and_in_order(
    priced, add_key, fake_provider, make_user, conversation_for, settings
):
    # On channels_redis, cancelling a receive that waits on the process's shared inbox lost a
    # message taken for another socket (bench/bench_chat.py saw deltas go missing from ~10
    # streams). The turn now ends its stop listener with a message; every delta must arrive.
    import asyncio

    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 1000
    words = " ".join(f"w{i}" for i in range(60))
    user = await db(make_user)("many")
    await db(add_key)("openai", "sk-many-streams", text=words, pace_ms=5)
    conversations = [await db(conversation_for)(user) for _ in range(12)]
    sockets = [await ws_open(user, c.id) for c in conversations]

    results = await asyncio.gather(*(ws_turn(ws, f"question {i}") for i, ws in enumerate(sockets)))
    await replies_finished()
    for ws in sockets:
        await ws.disconnect()

    for frames in results:
        deltas = of_type(frames, "delta")
        assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1)), "a delta went missing or came twice"
        assert "".join(d["text"] for d in deltas).split() == words.split()
        assert frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "stop"


_OPENAI_CHUNK = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":'


def _openai_raw(parts: list[bytes]) -> list[bytes]:
    return [
        _OPENAI_CHUNK + b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
        *(_OPENAI_CHUNK + b'[{"index":0,"delta":{"content":"' + p + b'"},"finish_reason":null}]}\n\n' for p in parts),
        _OPENAI_CHUNK + b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        _OPENAI_CHUNK + b'[],"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13}}\n\n',
        b"data: [DONE]\n\n",
    ]


def _anthropic_raw(parts: list[bytes]) -> list[bytes]:
    def event(name: bytes, data: bytes) -> bytes:
        return b"event: " + name + b"\ndata: " + data + b"\n\n"

    return [
        event(b"message_start", b'{"type":"message_start","message":{"id":"m1","type":"message","role":"assistant",'
              b'"content":[],"model":"m","usage":{"input_tokens":10,"output_tokens":0}}}'),
        event(b"content_block_start", b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}'),
        *(event(b"content_block_delta", b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
                + p + b'"}}') for p in parts),
        event(b"content_block_stop", b'{"type":"content_block_stop","index":0}'),
        event(b"message_delta", b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}'),
        event(b"message_stop", b'{"type":"message_stop"}'),
    ]


@pytest.mark.parametrize("model_id", [OPENAI_MODEL, ANTHROPIC_MODEL])
async def test_an_emoji_cut_between_two_stream_events_is_joined_saved_and_billed(
    model_id, priced, add_key, fake_provider, make_user, conversation_for
):
    # A server that writes ASCII-escaped JSON (Python's json.dumps) and cuts a token between the
    # two halves of a surrogate pair: each half parses alone, text no database or socket takes.
    provider = model_id.partition(":")[0]
    build = _openai_raw if provider == "openai" else _anthropic_raw
    user = await db(make_user)("emoji")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    parts = [b"smile \\ud83d", b"\\ude00! lone \\udc00 nul \\u0000 end \\ud83d"]
    await db(add_key)(provider, f"sk-{provider}-emoji", mode="raw", raw=build(parts), pace_ms=20)
    conversation = await db(conversation_for)(user, model=model_id)

    frames = await turn_over_socket(user, conversation.id, "smile please")

    assert of_type(frames, "error") == [], frames
    expected = "smile \U0001F600! lone \ufffd nul \ufffd end \ufffd"
    assert "".join(d["text"] for d in of_type(frames, "delta")) == expected
    done = frames[-1]
    assert done["finish_reason"] == "stop"
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert (reply.status, reply.content) == (Message.Status.DONE, expected)
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    spent, reserved = await db(spent_and_reserved)(user)
    assert (record.input_tokens, record.output_tokens) == (10, 3) and spent == record.cost > 0 and reserved == 0


async def test_a_key_deleted_while_its_reply_streams_does_not_lose_the_reply(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # An administrator deletes a provider key (admin, key_delete) while a reply it serves
    # streams. The reply must still be saved, billed and settled when it ends (its ledger row
    # without the key, as key_delete leaves the older rows), not fail its closing save.
    from billing import keys

    user = await db(make_user)("deleted-key")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)("openai", "sk-openai-deleted-1", text=REPLY, pace_ms=60)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL)
    ws = await ws_open(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": "hello there", "client_id": str(uuid.uuid4())})
    while (await ws.receive_json_from(timeout=10))["type"] != "delta":
        pass
    await db(keys.key_delete)(key_id=key.id)
    frames = []
    while not frames or frames[-1]["type"] != "done":
        frames.append(await ws.receive_json_from(timeout=20))
    await replies_finished()
    await ws.disconnect()

    assert of_type(frames, "error") == [] and frames[-1]["finish_reason"] == "stop"
    reply = await db(lambda: Message.objects.get(conversation=conversation, role="assistant"))()
    assert reply.status == "done" and reply.content == REPLY
    row = await db(lambda: UsageRecord.objects.get(message_id=reply.id))()
    assert row.key_id is None and row.cost == reply.cost and row.cost > 0
    assert await db(spent_and_reserved)(user) == (row.cost, Decimal("0"))


async def test_a_reasoning_model_thinking_past_the_first_token_allowance_answers_once_and_bills_its_thinking(
    priced, add_key, fake_provider, make_user, conversation_for, settings
):
    # A local reasoning model (vLLM with a reasoning parser) that thinks for longer than the
    # first-token allowance, and reports no usage: the reply arrives from the one call, the
    # thinking is not shown or saved, and what the provider bills for it is counted as output.
    from conversations.context import count_tokens

    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    thinking = "The user greets me in Korean so I should greet them back briefly and kindly"
    answer = "안녕하세요! Nice to meet you."
    user = await db(make_user)("thinker")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)("openai", "sk-openai-thinks", text=answer, reasoning=thinking, pace_ms=60, reports_usage=False)
    await db(add_key)("openai", "sk-openai-thinks-other", priority=1)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL)

    frames = await turn_over_socket(user, conversation.id, "안녕")

    assert of_type(frames, "error") == [], frames
    assert "".join(d["text"] for d in of_type(frames, "delta")) == answer
    done = frames[-1]
    assert done["finish_reason"] == "stop"
    assert fake_provider.requests_for("sk-openai-thinks-other") == []  # answered by the one call
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert (reply.status, reply.content) == (Message.Status.DONE, answer)
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    output_tokens = count_tokens(text=thinking, model_id=OPENAI_MODEL)[0] + count_tokens(text=answer, model_id=OPENAI_MODEL)[0]
    assert (record.key_id, record.outcome, record.estimated, record.output_tokens) == (key.id, "ok", True, output_tokens)
    assert done["usage"]["output_tokens"] == output_tokens
    assert await db(spent_and_reserved)(user) == (record.cost, Decimal("0"))


async def test_a_reasoning_model_that_thinks_through_its_whole_allowance_says_why_there_is_no_answer(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # The thinking fills max_tokens: the provider ends with finish_reason "length" and no answer
    # text. The person is told why the reply is empty (and what to change), live and after a
    # reload; the call is billed as the provider reported it, and the key did nothing wrong.
    from billing.models import ProviderKey

    thinking = "Let me weigh every option carefully before I answer this question in full detail"
    user = await db(make_user)("overthinker")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)("openai", "sk-openai-overthinks", text="The answer.", reasoning=thinking, input_tokens=30)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL, max_tokens=6)

    frames = await turn_over_socket(user, conversation.id, "a hard question")

    assert of_type(frames, "delta") == []
    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error"
    assert "thinking" in error["message"] and "6" in error["message"] and "Max tokens" in error["message"]
    done = frames[-1]
    assert done["finish_reason"] == "length"
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert (reply.status, reply.content, reply.finish_reason) == (Message.Status.ERROR, "", "length")
    assert reply.error_code == "thinking_exhausted"
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    expected = prices.cost_of(price=priced[OPENAI_MODEL], input_tokens=30, output_tokens=6)
    assert (record.input_tokens, record.output_tokens, record.estimated, record.cost) == (30, 6, False, expected)
    assert record.outcome == "ok"
    assert done["usage"] == {"input_tokens": 30, "output_tokens": 6, "cost": money_str(expected)}
    assert await db(spent_and_reserved)(user) == (expected, Decimal("0"))
    stored = await db(ProviderKey.objects.get)(id=key.id)
    assert (stored.health, stored.consecutive_failures) == (ProviderKey.Health.HEALTHY, 0)


async def test_a_reply_whose_process_died_while_its_model_was_thinking_is_billed_for_the_thinking(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # A reasoning model thinks (no answer text yet) and the process running the reply dies: the
    # reaper settles the call from the stream buffer. The provider bills the thinking as output,
    # so the reaper's bill must count it too, not the input alone.
    from conversations import turns

    thinking = " ".join(["think"] * 300)
    user = await db(make_user)("diedthinking")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("openai", "sk-openai-diesthinking", text="Done.", reasoning=thinking, pace_ms=20)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL)

    ws = await ws_open(user, conversation.id)
    await ws.send_json_to({"type": "user_message", "content": "think hard", "client_id": str(uuid.uuid4())})
    await eventually(lambda: fake_provider.requests_for("sk-openai-diesthinking"))
    await asyncio.sleep(0.8)  # some 40 words of thinking streamed, no answer yet

    assert await db(turns.replies_reap_stale)(stale_seconds=0) == 1
    done = (await ws_frames_until_end(ws))[-1]
    await replies_finished()
    await ws.disconnect()

    assert done["finish_reason"] == "error"
    (record,) = await db(list)(UsageRecord.objects.all())
    assert (record.error_kind, record.estimated) == ("interrupted", True)
    assert record.output_tokens >= 10  # the thinking the provider has billed so far
    assert done["usage"]["output_tokens"] == record.output_tokens
    expected = prices.cost_of(price=priced[OPENAI_MODEL], input_tokens=record.input_tokens, output_tokens=record.output_tokens)
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert (reply.status, reply.content, reply.cost, record.cost) == (Message.Status.ERROR, "", expected, expected)
    assert await db(spent_and_reserved)(user) == (expected, Decimal("0"))


async def _each_answered_in_full(user, conversation_id, questions) -> None:
    """Each question sent over a socket in turn: its reply streams REPLY whole and ends with
    stop, with no error frame."""
    for question in questions:
        frames = await turn_over_socket(user, conversation_id, question)
        assert of_type(frames, "error") == [], frames
        assert "".join(d["text"] for d in of_type(frames, "delta")) == REPLY
        assert frames[-1]["finish_reason"] == "stop"


async def test_a_server_that_ends_its_stream_with_done_but_no_finish_reason_answers_and_keeps_its_key_healthy(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # `data: [DONE]` is the end of an OpenAI stream; a server whose chunks all say finish_reason
    # null has still answered completely. Its replies are not errors, nor its key failing.
    from billing.models import ProviderKey

    user = await db(make_user)("nofinish")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)("openai", "sk-openai-nofinish", text=REPLY, sends_finish_reason=False)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL)

    await _each_answered_in_full(user, conversation.id, ("first question", "second question", "third question"))

    replies = await db(list)(Message.objects.filter(role="assistant").values_list("status", "content"))
    assert replies == [(Message.Status.DONE, REPLY)] * 3
    records = await db(list)(UsageRecord.objects.values_list("outcome", "estimated"))
    assert records == [("ok", False)] * 3  # the usage chunk the server sent is the provider's count
    stored = await db(ProviderKey.objects.get)(id=key.id)
    assert (stored.health, stored.consecutive_failures) == (ProviderKey.Health.HEALTHY, 0)


async def test_a_server_that_stalls_after_its_finish_and_usage_ends_the_reply_finished_and_billed_once(
    priced, add_key, fake_provider, make_user, conversation_for, settings
):
    # The last chunks (finish reason, usage) arrive, then the server keeps the connection open
    # without `data: [DONE]`. The reply is complete: it ends as finished after a short grace,
    # billed once with the usage the server reported, not cut off when the read allowance ends.
    settings.LLM_FIRST_TOKEN_TIMEOUT = 4.0
    user = await db(make_user)("stallend")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)("openai", "sk-openai-stallend", text=REPLY, input_tokens=33, stalls_before_done=True)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL)

    started = asyncio.get_running_loop().time()
    await _each_answered_in_full(user, conversation.id, ("a question",))

    assert asyncio.get_running_loop().time() - started < 3.0
    reply = await db(Message.objects.get)(role="assistant")
    output_tokens = len(REPLY.split())
    expected = prices.cost_of(price=priced[OPENAI_MODEL], input_tokens=33, output_tokens=output_tokens)
    assert (reply.status, reply.content, reply.cost) == (Message.Status.DONE, REPLY, expected)
    (record,) = await db(list)(UsageRecord.objects.all())
    assert (record.key_id, record.outcome, record.estimated) == (key.id, "ok", False)
    assert (record.input_tokens, record.output_tokens, record.cost) == (33, output_tokens, expected)
    assert await db(spent_and_reserved)(user) == (expected, Decimal("0"))


async def test_a_server_that_refuses_stream_options_still_answers_and_is_billed_on_the_count(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # vLLM before 0.5 answers a request carrying stream_options (asked for the usage) with a
    # 400. The reply must still come, billed on our own count; the server is not asked again.
    from conversations.context import count_tokens

    user = await db(make_user)("oldvllm")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)("openai", "sk-openai-oldvllm", text=REPLY, refuses_stream_options=True)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL)

    await _each_answered_in_full(user, conversation.id, ("first question", "second question"))

    asked = [r.stream_options for r in fake_provider.requests_for("sk-openai-oldvllm")]
    assert asked == [{"include_usage": True}, None, None]  # refused once, then never sent again
    records = await db(list)(UsageRecord.objects.order_by("created_at").values_list("key_id", "outcome", "estimated", "output_tokens"))
    output_tokens = count_tokens(text=REPLY, model_id=OPENAI_MODEL)[0]
    assert records == [(key.id, "ok", True, output_tokens)] * 2
    spent, reserved = await db(spent_and_reserved)(user)
    assert spent > 0 and reserved == 0


async def test_an_anthropic_refusal_tells_the_user_bills_the_call_and_leaves_the_turn_out_of_the_context(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # Claude's streaming classifiers end a reply with stop_reason "refusal", no message of their
    # own. Anthropic: the person must be told, and the refused turn taken out of the context,
    # or every later message of the conversation is refused too.
    user = await db(make_user)("refused-ant")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    await db(add_key)("anthropic", "sk-ant-refuses", mode="refusal", cut_after=2, text="Here is how you would", input_tokens=40)
    conversation = await db(conversation_for)(user, model=ANTHROPIC_MODEL)

    frames = await turn_over_socket(user, conversation.id, "the question it refuses")

    assert "".join(d["text"] for d in of_type(frames, "delta")) == "Here is"
    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error" and "declined" in error["message"]
    done = frames[-1]
    assert done["finish_reason"] == "error"
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert (reply.status, reply.content) == (Message.Status.ERROR, "Here is")  # what came stays on the page
    # Billed as Anthropic reported it: the input and the two words up to the refusal.
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    expected = prices.cost_of(price=priced[ANTHROPIC_MODEL], input_tokens=40, output_tokens=2)
    assert (record.input_tokens, record.output_tokens, record.estimated, record.cost) == (40, 2, False, expected)
    assert await db(spent_and_reserved)(user) == (expected, Decimal("0"))

    fake_provider.script("sk-ant-refuses", text="Happy to help with that.")
    frames = await turn_over_socket(user, conversation.id, "a different question")

    assert of_type(frames, "error") == [] and frames[-1]["finish_reason"] == "stop"
    sent = fake_provider.requests_for("sk-ant-refuses")[-1].messages
    assert sent == [{"role": "user", "content": "a different question"}]


async def test_an_openai_content_filter_stop_tells_the_user_keeps_the_text_and_bills_it(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # finish_reason "content_filter": the provider's filter ended the reply mid-way. The person
    # must not take it for a complete answer: it ends as an error saying so (the contract's
    # finish reasons and codes), with the text that came kept and billed as the provider reported.
    from billing.models import ProviderKey

    user = await db(make_user)("filtered")
    await db(budgets.budget_set)(user=user, period="month", limit="5")
    key = await db(add_key)(
        "openai", "sk-openai-filters", mode="refusal", cut_after=2, text="Here is how you would", input_tokens=40, output_tokens=2
    )
    # Two timeouts earlier: one more failure short of the circuit breaker's threshold.
    await db(ProviderKey.objects.filter(id=key.id).update)(consecutive_failures=2)
    conversation = await db(conversation_for)(user, model=OPENAI_MODEL)

    frames = await turn_over_socket(user, conversation.id, "the question it filters")

    assert "".join(d["text"] for d in of_type(frames, "delta")) == "Here is"
    (error,) = of_type(frames, "error")
    assert error["code"] == "provider_error" and "content filter" in error["message"]
    done = frames[-1]
    assert done["finish_reason"] == "error"
    reply = await db(Message.objects.get)(id=done["message_id"])
    assert (reply.status, reply.content, reply.error_code) == (Message.Status.ERROR, "Here is", "content_filter")
    record = await db(UsageRecord.objects.get)(message_id=reply.id)
    expected = prices.cost_of(price=priced[OPENAI_MODEL], input_tokens=40, output_tokens=2)
    assert (record.input_tokens, record.output_tokens, record.estimated, record.cost) == (40, 2, False, expected)
    assert (record.outcome, record.error_kind) == ("error", "content_filter")
    assert done["usage"] == {"input_tokens": 40, "output_tokens": 2, "cost": money_str(expected)}
    assert await db(spent_and_reserved)(user) == (expected, Decimal("0"))
    stored = await db(ProviderKey.objects.get)(id=key.id)
    # The key did its job (the provider answered, its filter ended the reply): its failures reset.
    assert (stored.health, stored.consecutive_failures) == (ProviderKey.Health.HEALTHY, 0)

    # The filtered turn is not shown to the model again: sent back, the text the filter cut (and
    # the question that drew it) would trip the filter on every later request of the conversation.
    fake_provider.script("sk-openai-filters", text="Happy to help with that.")
    frames = await turn_over_socket(user, conversation.id, "a different question")

    assert of_type(frames, "error") == [] and frames[-1]["finish_reason"] == "stop"
    sent = fake_provider.requests_for("sk-openai-filters")[-1].messages
    assert sent == [{"role": "user", "content": "a different question"}]
