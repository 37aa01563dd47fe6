"""The chat websocket, end to end through the real ASGI stack and the turn service."""

import asyncio
import json
import uuid
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async

from billing.budgets import BudgetExceeded
from billing.limits import RateLimited
from conversations import turns
from conversations.llm.base import ErrorKind, Finish, ProviderError, TextDelta, Usage
from conversations.models import Message

from .conftest import receive_until, ws_connect

pytestmark = pytest.mark.django_db(transaction=True)


def _send(text, client_id=None):
    return {"type": "user_message", "content": text, "client_id": str(client_id or uuid.uuid4())}


@database_sync_to_async
def _messages(conversation):
    return list(Message.objects.filter(conversation=conversation).order_by("created_at", "id"))


async def _turn(communicator, text, client_id=None):
    await communicator.send_json_to(_send(text, client_id))
    frames = await receive_until(communicator, "done")
    await turns.replies_wait()
    return frames


# --- the protocol -----------------------------------------------------------------------------------
async def test_a_turn_sends_ack_start_deltas_done_and_saves_both_messages(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, connected = await ws_connect(user, conversation.id)
    assert connected
    client_id = uuid.uuid4()
    frames = await _turn(ws, "hello there", client_id)

    ack, start, *deltas, done = frames
    messages = await _messages(conversation)
    user_msg, reply = messages
    assert ack == {"type": "ack", "client_id": str(client_id), "message_id": str(user_msg.id)}
    assert start == {"type": "start", "message_id": str(reply.id), "model": "demo:echo"}
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == "You said: hello there"
    assert done["finish_reason"] == "stop"
    assert done["usage"] == {"input_tokens": 2, "output_tokens": 4, "cost": "0.0000000000"}
    assert user_msg.content == "hello there" and user_msg.role == "user"
    assert reply.content == "You said: hello there"
    assert reply.status == "done" and reply.reply_to_id == user_msg.id
    assert reply.heartbeat_at is None
    assert len(chat_backends.usage) == 1 and chat_backends.usage[0]["outcome"] == "ok"
    assert len(chat_backends.settlements) == 1
    await ws.disconnect()


async def test_cost_is_a_decimal_string_from_provider_usage(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("k1")
    chat_backends.scripts.append([TextDelta("hi"), Usage(input_tokens=1000, output_tokens=500), Finish("stop")])
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "question")
    done = frames[-1]
    # 1000 * $1/M + 500 * $2/M = $0.002
    assert done["usage"] == {"input_tokens": 1000, "output_tokens": 500, "cost": "0.0020000000"}
    reply = (await _messages(conversation))[1]
    assert reply.cost == Decimal("0.002")
    assert chat_backends.settlements[0][1] == Decimal("0.002")
    assert chat_backends.usage[0]["estimated"] is False
    await ws.disconnect()


async def test_two_sockets_receive_the_same_frames(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    a, _ = await ws_connect(user, conversation.id)
    b, _ = await ws_connect(user, conversation.id)
    frames_a = await _turn(a, "one two three four")
    frames_b = await receive_until(b, "done")
    assert frames_a[0]["type"] == "ack"
    assert frames_a[1:] == frames_b
    await a.disconnect()
    await b.disconnect()


async def test_relaying_frames_makes_no_trip_to_the_database_thread(chat_backends, user, conversation_factory, monkeypatch):
    """Channels closes stale connections (a sync-thread hop) before every handler; neither the
    chat frames a running reply publishes 25 times a second nor a sent message must pay it."""
    import channels.consumer

    conversation = await database_sync_to_async(conversation_factory)(user)
    watcher, _ = await ws_connect(user, conversation.id)
    hops = []
    real = channels.consumer.aclose_old_connections

    async def counted():
        hops.append(1)
        await real()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    for seq in range(1, 21):
        frame = {"type": "delta", "message_id": str(uuid.uuid4()), "seq": seq, "text": f"w{seq} "}
        await layer.group_send(turns.group_name(conversation.id), turns.frame_event(frame))
    received = [await watcher.receive_json_from(timeout=5) for _ in range(20)]
    assert [f["seq"] for f in received] == list(range(1, 21))
    await watcher.send_json_to(_send("still here?"))
    frames = await receive_until(watcher, "done")
    assert [f["type"] for f in frames][0] == "ack" and frames[-1]["finish_reason"] == "stop"
    assert hops == []
    await watcher.disconnect()


async def test_a_late_joiner_resumes_with_nothing_missing_or_repeated(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    chat_backends.scripts.append(
        [TextDelta("alpha "), TextDelta("beta "), "gate", TextDelta("gamma "), ("sleep", 0.05), TextDelta("delta"), Finish("stop")]
    )
    a, _ = await ws_connect(user, conversation.id)
    await a.send_json_to(_send("go"))
    # Wait until the first part is in the buffer, then a second socket opens mid-reply.
    for _ in range(200):
        state = turns.stream_state(conversation_id=conversation.id)
        if state and state["seq"] >= 1 and state["text"] == "alpha beta ":
            break
        await asyncio.sleep(0.01)
    b, _ = await ws_connect(user, conversation.id)
    resume = await b.receive_json_from(timeout=5)
    assert resume["type"] == "resume"
    assert resume["text"] == "alpha beta "
    chat_backends.open_gate()
    later = await receive_until(b, "done")
    deltas = [f for f in later if f["type"] == "delta"]
    assert [f["type"] for f in later if f["type"] != "delta"] == ["done"]
    assert [d["seq"] for d in deltas] == list(range(resume["seq"] + 1, resume["seq"] + 1 + len(deltas)))
    assert resume["text"] + "".join(d["text"] for d in deltas) == "alpha beta gamma delta"
    await receive_until(a, "done")
    await turns.replies_wait()
    await a.disconnect()
    await b.disconnect()


async def test_the_reply_continues_and_is_saved_after_the_socket_closes(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    chat_backends.scripts.append([TextDelta("first "), "gate", TextDelta("second"), Finish("stop")])
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("go"))
    await receive_until(ws, "start")
    await ws.disconnect()
    chat_backends.open_gate()
    await turns.replies_wait()
    reply = (await _messages(conversation))[1]
    assert reply.status == "done" and reply.content == "first second"


async def test_stop_from_another_socket_cancels_and_keeps_the_text(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("k1")
    chat_backends.scripts.append([TextDelta("partial answer"), "hang"])
    a, _ = await ws_connect(user, conversation.id)
    b, _ = await ws_connect(user, conversation.id)
    await a.send_json_to(_send("write a lot"))
    frames = await receive_until(a, "delta")
    await b.send_json_to({"type": "stop"})
    frames += await receive_until(a, "done")
    await turns.replies_wait()
    done = frames[-1]
    assert done["finish_reason"] == "cancelled"
    reply = (await _messages(conversation))[1]
    assert reply.status == "cancelled" and reply.content == "partial answer"
    # Stopped without provider usage: billed what was sent (input) and what came out, estimated.
    record = chat_backends.usage[-1]
    assert record["outcome"] == "cancelled" and record["estimated"] is True
    assert record["input_tokens"] == 3 and record["output_tokens"] == 2
    assert chat_backends.settlements[-1][1] == reply.cost > 0
    await a.disconnect()
    await b.disconnect()


async def test_turn_stop_from_sync_code_stops_the_reply(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    chat_backends.scripts.append([TextDelta("some "), "hang"])
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("go"))
    await receive_until(ws, "delta")
    stopped = await database_sync_to_async(turns.turns_stop_for_user)(user_id=user.id)
    assert stopped == 1
    frames = await receive_until(ws, "done")
    assert frames[-1]["finish_reason"] == "cancelled"
    await turns.replies_wait()
    await ws.disconnect()


async def test_a_message_while_a_reply_runs_is_kept_and_answered_busy(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    chat_backends.scripts.append([TextDelta("slow"), "gate", Finish("stop")])
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("first"))
    await receive_until(ws, "start")
    second = uuid.uuid4()
    await ws.send_json_to(_send("second", second))
    frames = await receive_until(ws, "error")
    error = frames[-1]
    assert error["code"] == "busy" and error["client_id"] == str(second)
    assert any(f["type"] == "ack" and f["client_id"] == str(second) for f in frames)
    chat_backends.open_gate()
    await receive_until(ws, "done")
    await turns.replies_wait()
    contents = [(m.role, m.content) for m in await _messages(conversation)]
    assert contents == [("user", "first"), ("assistant", "slow"), ("user", "second")]
    assert len(chat_backends.reservations) == 1  # the busy message reserved nothing
    await ws.disconnect()


async def test_a_resent_client_id_makes_no_second_message_or_charge(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    client_id = uuid.uuid4()
    first = await _turn(ws, "hello", client_id)
    await ws.send_json_to(_send("hello", client_id))
    ack = await ws.receive_json_from(timeout=5)
    assert ack == first[0]
    assert await ws.receive_nothing(timeout=0.3)
    assert len(await _messages(conversation)) == 2
    assert len(chat_backends.reservations) == 1 and len(chat_backends.usage) == 1
    await ws.disconnect()


async def test_a_message_refused_as_busy_and_resent_with_its_client_id_is_answered_once(chat_backends, user, conversation_factory):
    """A client retrying a refused message (same client_id) gets its reply, not an ack and then
    silence; it is still one message, and the refusal reserved nothing."""
    conversation = await database_sync_to_async(conversation_factory)(user)
    chat_backends.scripts.append([TextDelta("slow"), "gate", Finish("stop")])
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("first"))
    await receive_until(ws, "start")
    second = uuid.uuid4()
    await ws.send_json_to(_send("second", second))
    assert (await receive_until(ws, "error"))[-1]["code"] == "busy"
    chat_backends.open_gate()
    await receive_until(ws, "done")
    await turns.replies_wait()

    frames = await _turn(ws, "second", second)

    ack, start, *_deltas, done = frames
    messages = await _messages(conversation)
    assert [(m.role, m.content) for m in messages] == [
        ("user", "first"), ("assistant", "slow"), ("user", "second"), ("assistant", "You said: second")
    ]
    assert ack == {"type": "ack", "client_id": str(second), "message_id": str(messages[2].id)}
    assert start["message_id"] == str(messages[3].id) and messages[3].reply_to_id == messages[2].id
    assert done["finish_reason"] == "stop"
    assert len(chat_backends.reservations) == 2 and len(chat_backends.usage) == 2
    # Sent a third time, now answered: acknowledged only.
    await ws.send_json_to(_send("second", second))
    assert await ws.receive_json_from(timeout=5) == ack
    assert await ws.receive_nothing(timeout=0.3)
    assert len(await _messages(conversation)) == 4
    await ws.disconnect()


async def test_a_message_whose_reply_failed_before_any_text_is_retried_when_resent(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("a")
    chat_backends.scripts.append([ProviderError(ErrorKind.BAD_REQUEST, "400", status=400)])
    ws, _ = await ws_connect(user, conversation.id)
    client_id = uuid.uuid4()
    assert (await _turn(ws, "hello", client_id))[-1]["finish_reason"] == "error"

    frames = await _turn(ws, "hello", client_id)

    assert [f["type"] for f in frames][:2] == ["ack", "start"] and frames[-1]["finish_reason"] == "stop"
    question, failed, answered = await _messages(conversation)
    assert (failed.status, answered.status) == ("error", "done")
    assert failed.reply_to_id == answered.reply_to_id == question.id
    await ws.disconnect()


async def test_a_refused_message_resent_after_the_conversation_moved_on_is_refused_not_answered(
    chat_backends, user, conversation_factory
):
    conversation = await database_sync_to_async(conversation_factory)(user)
    chat_backends.budget_error = BudgetExceeded(scope="user", name="u", period="day", limit=Decimal("1"), spent=Decimal("1"))
    ws, _ = await ws_connect(user, conversation.id)
    refused = uuid.uuid4()
    await ws.send_json_to(_send("too dear", refused))
    assert (await receive_until(ws, "error"))[-1]["code"] == "budget_exceeded"
    chat_backends.budget_error = None
    await _turn(ws, "something else")

    await ws.send_json_to(_send("too dear", refused))
    frames = await receive_until(ws, "error")

    assert [f["type"] for f in frames] == ["ack", "error"] and frames[-1]["code"] == "invalid_input"
    assert len(await _messages(conversation)) == 3 and len(chat_backends.reservations) == 1
    await ws.disconnect()


async def test_a_message_whose_reply_was_stopped_before_any_text_is_only_acknowledged_when_resent(
    chat_backends, user, conversation_factory
):
    """A stop before the first token is billed its input: the same client_id again must not make
    a second call or charge (the user stopped it; regenerate is the way to ask again)."""
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("a")
    chat_backends.scripts.append(["gate", TextDelta("late"), Finish("stop")])
    ws, _ = await ws_connect(user, conversation.id)
    client_id = uuid.uuid4()
    await ws.send_json_to(_send("hello there", client_id))
    await receive_until(ws, "start")
    await ws.send_json_to({"type": "stop"})
    assert (await receive_until(ws, "done"))[-1]["finish_reason"] == "cancelled"
    await turns.replies_wait()
    calls, reservations = len(chat_backends.calls), len(chat_backends.reservations)

    await ws.send_json_to(_send("hello there", client_id))

    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    assert await ws.receive_nothing(timeout=0.5)
    assert (len(chat_backends.calls), len(chat_backends.reservations)) == (calls, reservations)
    assert len(await _messages(conversation)) == 2
    await ws.disconnect()


def _billed_empty_reply(question, *, status, error_code=""):
    Message.objects.create(
        conversation=question.conversation, role=Message.Role.ASSISTANT, model=question.conversation.model,
        reply_to=question, status=status, error_code=error_code, input_tokens=1000, cost=Decimal("0.001"),
    )  # fmt: skip


@pytest.mark.parametrize("status, error_code", [("error", "interrupted"), ("error", "provider_error")])
async def test_a_resent_message_whose_empty_reply_was_billed_is_not_charged_again(
    chat_backends, user, conversation_factory, status, error_code
):
    """The reaper bills the input of a call whose process died after it went out; a call cut
    before any text may be billed too. Such a reply has no text but did cost: no retry."""
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("a")
    client_id = uuid.uuid4()
    question = await database_sync_to_async(Message.objects.create)(
        conversation=conversation, role=Message.Role.USER, content="hello", client_id=client_id
    )
    await database_sync_to_async(_billed_empty_reply)(question, status=status, error_code=error_code)
    ws, _ = await ws_connect(user, conversation.id)

    await ws.send_json_to(_send("hello", client_id))

    assert await ws.receive_json_from(timeout=5) == {"type": "ack", "client_id": str(client_id), "message_id": str(question.id)}
    assert await ws.receive_nothing(timeout=0.5)
    assert chat_backends.calls == [] and chat_backends.reservations == {}
    await ws.disconnect()


async def test_two_resends_racing_a_fast_reply_start_one_reply(chat_backends, user, conversation_factory, monkeypatch):
    """Resend B finds the question unanswered; resend A's reply starts and finishes before B
    goes on. B looks again with the question locked, in the transaction that would start its
    reply, and only acknowledges."""
    conversation = await database_sync_to_async(conversation_factory)(user)
    client_id = uuid.uuid4()
    question = await database_sync_to_async(Message.objects.create)(
        conversation=conversation, role=Message.Role.USER, content="hello", client_id=client_id
    )
    first_look = turns._resend_state
    looks = []

    def then_a_finishes(*, question_id):
        state = first_look(question_id=question_id)
        if not looks:  # right after B's first look: A's whole reply
            Message.objects.create(
                conversation=conversation, role=Message.Role.ASSISTANT, model="demo:echo", reply_to=question,
                status=Message.Status.DONE, content="You said: hello",
            )  # fmt: skip
        looks.append(state)
        return state

    monkeypatch.setattr(turns, "_resend_state", then_a_finishes)
    ws, _ = await ws_connect(user, conversation.id)

    await ws.send_json_to(_send("hello", client_id))

    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    assert await ws.receive_nothing(timeout=0.5)
    replies = await database_sync_to_async(lambda: list(Message.objects.filter(reply_to=question)))()
    assert [r.status for r in replies] == ["done"] and chat_backends.reservations == {}
    assert looks == [(None, False), (None, True)]
    await ws.disconnect()


async def test_regenerate_makes_a_new_reply_to_the_same_question(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await _turn(ws, "hello")
    await ws.send_json_to({"type": "regenerate"})
    frames = await receive_until(ws, "done")
    await turns.replies_wait()
    assert frames[0]["type"] == "start"
    question, old, new = await _messages(conversation)
    assert old.reply_to_id == question.id == new.reply_to_id
    assert str(new.id) == frames[0]["message_id"] and new.content == "You said: hello"
    # The old reply is not in the regenerated request's context.
    assert [m.content for m in chat_backends.calls[-1][2].messages] == ["hello"]
    await ws.disconnect()


# --- handshake ---------------------------------------------------------------------------------------
async def test_handshake_refused_for_anonymous_other_user_bad_origin_and_unknown_conversation(
    chat_backends, user, other_user, conversation_factory
):
    conversation = await database_sync_to_async(conversation_factory)(user)
    for who, cid, origin in [
        (None, conversation.id, "http://testserver"),
        (other_user, conversation.id, "http://testserver"),
        (user, conversation.id, "http://evil.example"),
        (user, uuid.uuid4(), "http://testserver"),
    ]:
        ws, connected = await ws_connect(who, cid, origin=origin)
        assert not connected
        await ws.disconnect()


# --- bad frames: an error, the socket stays usable, nothing saved ------------------------------------------
# Fixed ids: the parameters name the tests, and pytest-xdist workers must collect the same names.
@pytest.mark.parametrize(
    "raw",
    [
        "not json{",
        json.dumps({"content": "no type"}),
        json.dumps(["a", "list"]),
        json.dumps({"type": "shout"}),
        json.dumps({"type": "user_message", "content": "", "client_id": "00000000-0000-4000-8000-000000000001"}),
        json.dumps({"type": "user_message", "content": "   \n\t ", "client_id": "00000000-0000-4000-8000-000000000002"}),
        json.dumps({"type": "user_message", "content": 42, "client_id": "00000000-0000-4000-8000-000000000003"}),
        json.dumps({"type": "user_message", "content": "hi", "client_id": "not-a-uuid"}),
        json.dumps({"type": "user_message", "content": "hi"}),
        "[" * 50_000 + "]" * 50_000,  # nested past the JSON parser's depth: RecursionError, not ValueError
        # Valid JSON escapes, but text no database here can store: a lone surrogate, a NUL.
        json.dumps({"type": "user_message", "content": "hi \ud800 there", "client_id": "00000000-0000-4000-8000-000000000004"}),
        json.dumps({"type": "user_message", "content": "nul\u0000byte", "client_id": "00000000-0000-4000-8000-000000000005"}),
    ],
)
async def test_bad_frames_get_invalid_input_and_the_socket_stays_usable(raw, chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_to(text_data=raw)
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "invalid_input" and error["message"]
    assert await _messages(conversation) == []
    frames = await _turn(ws, "still works")
    assert frames[-1]["finish_reason"] == "stop"
    await ws.disconnect()


async def test_a_binary_frame_is_invalid_input(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await ws.receive_json_from(timeout=5))["code"] == "invalid_input"
    await ws.disconnect()


async def test_text_over_max_message_chars_is_refused(chat_backends, user, conversation_factory, settings):
    settings.MAX_MESSAGE_CHARS = 10
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("x" * 11))
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "invalid_input"
    assert await _messages(conversation) == []
    frames = await _turn(ws, "x" * 10)
    assert frames[-1]["type"] == "done"
    await ws.disconnect()


async def test_a_message_at_the_limit_is_accepted_however_its_json_escapes_it(chat_backends, user, conversation_factory, settings):
    # Python's json.dumps writes each emoji as two \\uXXXX escapes: 12 characters of frame for
    # one of text. The limit counts characters of text.
    settings.MAX_MESSAGE_CHARS = 1000
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    text = "\U0001F600" * 1000
    await ws.send_to(text_data=json.dumps({"type": "user_message", "content": text, "client_id": str(uuid.uuid4())}))
    frames = await receive_until(ws, "done")
    await turns.replies_wait()
    await ws.disconnect()
    assert frames[0]["type"] == "ack" and frames[-1]["finish_reason"] == "stop"
    assert (await _messages(conversation))[0].content == text


async def test_the_ack_and_errors_echo_the_client_id_as_the_client_spelled_it(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    client_id = str(uuid.uuid4()).upper()  # Swift's UUID().uuidString, say
    frames = await _turn(ws, "hello", client_id)
    assert frames[0] == {"type": "ack", "client_id": client_id, "message_id": frames[0]["message_id"]}
    # The same UUID in lower case is the same message: a resend, acked as this one spelled it.
    await ws.send_json_to(_send("hello", client_id.lower()))
    again = await ws.receive_json_from(timeout=5)
    assert again == {"type": "ack", "client_id": client_id.lower(), "message_id": frames[0]["message_id"]}
    await ws.send_json_to({"type": "user_message", "content": " ", "client_id": client_id})
    assert (await ws.receive_json_from(timeout=5))["client_id"] == client_id
    await ws.disconnect()
    assert len(await _messages(conversation)) == 2


async def test_a_cache_fault_as_a_reply_starts_undoes_it_and_the_next_message_is_answered(
    chat_backends, user, conversation_factory, monkeypatch
):
    # The reply row and its hold are committed before the stream buffer is written: when that
    # write fails they must not stay behind, holding the conversation "busy" and the budget.
    from django.core.cache import caches

    backend = type(caches["default"])  # LocMemCache, or RedisCache under REDIS_URL
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    real_set = backend.set
    failed = []

    def flaky_set(self, key, *args, **kwargs):
        if ":stream:" in str(self.make_key(key)) and not failed:
            failed.append(key)
            raise ConnectionError("the cache is away")
        return real_set(self, key, *args, **kwargs)

    monkeypatch.setattr(backend, "set", flaky_set)
    client_id = str(uuid.uuid4())
    await ws.send_json_to(_send("first", client_id))
    ack = await ws.receive_json_from(timeout=5)
    error = await ws.receive_json_from(timeout=5)
    assert failed and ack["type"] == "ack"
    assert (error["type"], error["code"], error["client_id"]) == ("error", "provider_error", client_id)
    assert error["user_message_id"] == ack["message_id"]
    question, abandoned = await _messages(conversation)
    assert (question.content, abandoned.status, abandoned.heartbeat_at) == ("first", "error", None)
    assert len(chat_backends.settlements) == 1 and chat_backends.settlements[0][1] == 0  # the hold released
    assert chat_backends.usage == []  # no call was made: nothing billed
    frames = await _turn(ws, "second")
    assert frames[1]["type"] == "start" and frames[-1]["finish_reason"] == "stop"
    await ws.disconnect()


async def test_a_reply_whose_closing_save_fails_is_left_for_the_reaper_to_save_and_bill(
    chat_backends, user, conversation_factory, monkeypatch
):
    # The database refuses the one closing transaction (message, ledger, settlement). The
    # stream buffer then stays: it is what the reaper saves the text and bills the call from.
    chat_backends.key("only")
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    ws, _ = await ws_connect(user, conversation.id)

    def finish_fails(**kwargs):
        raise ConnectionError("the database went away")

    monkeypatch.setattr(turns, "_reply_finish", finish_fails)
    frames = await _turn(ws, "one two three")
    await ws.disconnect()
    (error,) = [f for f in frames if f["type"] == "error"]
    assert "could not be saved" in error["message"] and frames[-1]["finish_reason"] == "error"
    streamed = "".join(f["text"] for f in frames if f["type"] == "delta")
    assert streamed == "You said: one two three" and chat_backends.usage == [] and chat_backends.settlements == []

    assert await database_sync_to_async(turns.replies_reap_stale)(stale_seconds=0) == 1
    question, reply = await _messages(conversation)
    assert (reply.status, reply.content) == ("error", streamed)
    (usage,) = chat_backends.usage
    assert usage["estimated"] and usage["output_tokens"] == len(streamed.split()) and usage["cost"] == reply.cost > 0
    assert [actual for _rid, actual in chat_backends.settlements] == [reply.cost]


async def test_frames_held_back_by_a_cache_fault_go_out_in_order_once_it_passes(
    chat_backends, user, conversation_factory, monkeypatch
):
    # Two buffer writes fail mid-reply (a Redis blip). Before, the flusher died at the first and
    # that frame was lost: every socket then missed a seq and heard nothing more until the end.
    from chatsite import asynccache

    words = [f"w{i} " for i in range(8)]
    script = []
    for word in words:
        script += [TextDelta(word), ("sleep", 0.06)]
    chat_backends.scripts.append([*script, Usage(5, 8), Finish("stop")])
    real_aset, calls = asynccache.aset, []

    async def blip(key, value, timeout):
        calls.append(key)
        if key.startswith("stream:") and len(calls) in (3, 4):
            raise ConnectionError("the cache is away")
        return await real_aset(key, value, timeout)

    monkeypatch.setattr(asynccache, "aset", blip)
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "count")
    await ws.disconnect()
    deltas = [f for f in frames if f["type"] == "delta"]
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert "".join(d["text"] for d in deltas) == "".join(words)
    assert frames[-1]["finish_reason"] == "stop"


async def test_a_buffer_left_behind_by_a_finished_reply_is_not_resumed(chat_backends, user, conversation_factory):
    # The cache failed as a reply ended, so its buffer's delete was lost: a socket opening now
    # must not be told a reply is running.
    from django.core.cache import cache

    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "hello")
    await ws.disconnect()
    finished = frames[-1]["message_id"]
    await database_sync_to_async(cache.set)(
        turns.buffer_key(conversation.id), {"message_id": finished, "seq": 2, "text": "You said", "model": "demo:echo"}, 60
    )
    late, _ = await ws_connect(user, conversation.id)
    assert await late.receive_nothing(timeout=0.3)
    frames = await _turn(late, "again")  # and the conversation is not busy
    assert frames[1]["type"] == "start" and frames[-1]["finish_reason"] == "stop"
    await late.disconnect()


async def test_the_end_of_a_reply_reaches_the_sockets_through_a_layer_blip(chat_backends, user, conversation_factory, monkeypatch):
    monkeypatch.setattr(turns, "END_RETRY_DELAYS", (0.01, 0.01))
    real_publish, failed = turns._publish, []

    async def blip(layer, conversation_id, frame):
        if frame["type"] == "done" and not failed:
            failed.append(frame)
            raise ConnectionError("the layer is away")
        return await real_publish(layer, conversation_id, frame)

    monkeypatch.setattr(turns, "_publish", blip)
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "hello")
    await ws.disconnect()
    assert failed and frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "stop"


async def test_a_socket_that_missed_the_end_of_a_reply_is_told_at_its_heartbeat(
    chat_backends, user, conversation_factory, monkeypatch
):
    # Redis restarted mid-reply: each process resubscribes up to a second after it is back, and
    # pub/sub keeps nothing for a process not subscribed yet. The "done" published then never
    # reaches this socket, which stays open: the page would show the reply streaming (and the
    # composer busy) until reloaded. The socket's heartbeat sees the reply has ended and says so.
    from conversations import consumers

    monkeypatch.setattr(consumers, "HEARTBEAT_SECONDS", 0.05)
    real_publish = turns._publish

    async def lost_at_the_end(layer, conversation_id, frame):
        if frame["type"] == "done":
            return  # published, but this process was not subscribed at that moment
        return await real_publish(layer, conversation_id, frame)

    monkeypatch.setattr(turns, "_publish", lost_at_the_end)
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("hello there"))
    frames = await receive_until(ws, "done", timeout=5)
    await turns.replies_wait()
    reply = (await _messages(conversation))[1]
    done = frames[-1]
    assert done == {
        "type": "done",
        "message_id": str(reply.id),
        "finish_reason": "stop",
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens, "cost": turns.money_str(reply.cost)},
    }
    assert [f["type"] for f in frames].count("done") == 1
    assert await ws.receive_nothing(timeout=0.3)  # told once, not at every heartbeat

    monkeypatch.setattr(turns, "_publish", real_publish)  # delivered: one "done", never a second
    frames = await _turn(ws, "and again")
    assert [f["type"] for f in frames].count("done") == 1
    assert await ws.receive_nothing(timeout=0.3)
    await ws.disconnect()


async def test_a_process_stopping_ends_its_running_replies_now_not_at_the_reaper(chat_backends, user, conversation_factory):
    # SIGTERM (a deploy, a restart): the replies running here get a short grace, then are ended
    # as interrupted, saved with their text, billed and settled, and their sockets told, before
    # the process exits; not left streaming until the reaper's check minutes later.
    chat_backends.key("only")
    chat_backends.scripts.append([TextDelta("half an answer"), "gate", TextDelta(" never sent"), Usage(5, 3), Finish("stop")])
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("a question"))
    frames = await receive_until(ws, "delta")

    assert await turns.replies_shutdown(grace=0.05) == 1
    frames += await receive_until(ws, "done", timeout=5)
    error, done = frames[-2:]
    assert error["type"] == "error" and error["code"] == "provider_error"
    assert done["finish_reason"] == "error"
    reply = (await _messages(conversation))[1]
    assert (reply.status, reply.content) == ("error", "half an answer")
    (billed,) = chat_backends.usage
    assert billed["outcome"] == "error" and billed["estimated"] and billed["cost"] == reply.cost
    assert len(chat_backends.settlements) == 1
    assert await turns.replies_shutdown(grace=0.05) == 0  # nothing left running
    await ws.disconnect()


async def test_a_reply_that_ends_within_the_grace_ends_as_it_would_have(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("hello there"))
    await receive_until(ws, "start")
    assert await turns.replies_shutdown(grace=10) == 0
    frames = await receive_until(ws, "done")
    assert frames[-1]["finish_reason"] == "stop"
    await ws.disconnect()


async def test_a_reply_reaped_while_its_process_stalled_is_billed_once_and_stays_ended(
    chat_backends, user, conversation_factory
):
    # The call went out, no text yet, and the process stalled past STALE_SECONDS: the reaper
    # must bill that call (its buffer names attempt 1 from the start) and say what it billed;
    # the process, waking, must not overwrite the row, bill or settle again, or end it twice.
    key = chat_backends.key("only")
    chat_backends.scripts.append(["gate", TextDelta("words after waking"), Usage(5, 3), Finish("stop")])
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("a question of some words"))
    start = (await receive_until(ws, "start"))[-1]
    for _ in range(100):
        if chat_backends.calls:
            break
        await asyncio.sleep(0.01)
    assert len(chat_backends.calls) == 1
    assert turns.stream_state(conversation_id=conversation.id)["attempt"] == 1

    assert await database_sync_to_async(turns.replies_reap_stale)(stale_seconds=0) == 1
    ending = await receive_until(ws, "done")
    (billed,) = chat_backends.usage
    assert billed["estimated"] and billed["input_tokens"] > 0 and billed["cost"] > 0
    assert billed["key_id"] == key.id  # the key the dead call used, as every ledger row names it
    assert ending[-1]["finish_reason"] == "error"
    assert ending[-1]["usage"] == {"input_tokens": billed["input_tokens"], "output_tokens": 0, "cost": str(billed["cost"])}

    chat_backends.open_gate()  # the stalled process wakes up
    await turns.replies_wait()
    later = []
    while not await ws.receive_nothing(timeout=0.3):
        later.append(await ws.receive_json_from())
    await ws.disconnect()
    assert [f for f in later if f["type"] == "done"] == []
    reply = (await _messages(conversation))[1]
    assert str(reply.id) == start["message_id"]
    assert (reply.status, reply.error_code, reply.cost) == ("error", "interrupted", billed["cost"])
    assert len(chat_backends.usage) == 1 and len(chat_backends.settlements) == 1


# --- refusals before the provider: the user's message is kept, nothing charged -----------------------
@pytest.mark.parametrize("model", ["nosuch:model", "openai:unpriced-model"])
async def test_an_unknown_or_unpriced_model_is_model_unavailable(model, chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user, model=model)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("hi"))
    frames = await receive_until(ws, "error")
    assert [f["type"] for f in frames] == ["ack", "error"]
    assert frames[-1]["code"] == "model_unavailable"
    assert [m.content for m in await _messages(conversation)] == ["hi"]
    assert chat_backends.reservations == {} and chat_backends.usage == []
    await ws.disconnect()


async def test_budget_exceeded_names_the_budget(chat_backends, user, conversation_factory):
    chat_backends.budget_error = BudgetExceeded(scope="team", name="Physics", period="month", limit=Decimal("5"), spent=Decimal("5"))
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("hi"))
    error = (await receive_until(ws, "error"))[-1]
    assert error["code"] == "budget_exceeded"
    assert "Physics" in error["message"] and "month" in error["message"] and "5.00" in error["message"]
    assert error["budget"] == {"scope": "team", "name": "Physics", "period": "month", "limit": "5.0000000000"}
    assert [m.role for m in await _messages(conversation)] == ["user"]
    assert chat_backends.usage == []
    await ws.disconnect()


@pytest.mark.parametrize(
    ("profile", "headers", "cookies"),
    [("ko", (), ""), ("", ((b"accept-language", b"ko-KR,ko;q=0.9"),), ""), ("", (), "django_language=ko")],
    ids=["profile", "browser", "switcher"],
)
async def test_socket_errors_speak_the_language_the_pages_speak(chat_backends, make_user, conversation_factory, profile, headers, cookies):
    # The Korean chat page showed the socket's errors in English: a socket never chose a language.
    from django.utils import translation

    person = await database_sync_to_async(make_user)("minji", language=profile)
    conversation = await database_sync_to_async(conversation_factory)(person)
    refusal = BudgetExceeded(scope="team", name="Physics", period="month", limit=Decimal("5"), spent=Decimal("5"))
    chat_backends.budget_error = refusal
    with translation.override("ko"):
        korean = refusal.message
    ws, connected = await ws_connect(person, conversation.id, headers=headers, cookies=cookies)
    assert connected
    await ws.send_json_to({"type": "user_message", "content": " ", "client_id": str(uuid.uuid4())})
    assert (await ws.receive_json_from())["message"] == "메시지가 비어 있습니다."
    await ws.send_json_to(_send("안녕하세요"))
    error = (await receive_until(ws, "error"))[-1]
    assert error["code"] == "budget_exceeded" and error["message"] == korean and "Physics" in korean
    await ws.disconnect()


async def test_rate_limited_says_when_and_reserves_nothing(chat_backends, user, conversation_factory):
    chat_backends.rate_error = RateLimited(retry_after=17, limit="requests_per_minute")
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("hi"))
    error = (await receive_until(ws, "error"))[-1]
    assert error["code"] == "rate_limited" and error["retry_after"] == 17 and "17" in error["message"]
    # Checked before the budget: nothing was reserved, so nothing needs releasing.
    assert chat_backends.reservations == {} and chat_backends.settlements == []
    await ws.disconnect()


# --- provider failures ---------------------------------------------------------------------------------
async def test_failover_to_the_next_key_after_a_5xx(chat_backends, user, conversation_factory, monkeypatch):
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test", title="titled")
    first, second = chat_backends.key("first"), chat_backends.key("second")
    chat_backends.scripts += [
        [ProviderError(ErrorKind.UNAVAILABLE, "502", status=502)],
        [TextDelta("ok"), Usage(10, 1), Finish("stop")],
    ]
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "hi")
    assert frames[-1]["finish_reason"] == "stop"
    assert [c[1] for c in chat_backends.calls] == ["first", "second"]
    assert chat_backends.key_failures == [(first.id, "unavailable")]
    assert chat_backends.key_successes == [second.id]
    assert [(u["attempt"], u["outcome"], u["key_id"]) for u in chat_backends.usage] == [
        (1, "error", first.id),
        (2, "ok", second.id),
    ]
    await ws.disconnect()


async def test_no_key_left_is_provider_unavailable_and_charges_nothing(chat_backends, user, conversation_factory, monkeypatch):
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("only")
    chat_backends.scripts.append([ProviderError(ErrorKind.AUTH, "401", status=401)])
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "hi")
    error, done = frames[-2:]
    assert error["code"] == "provider_unavailable" and error["message_id"] == done["message_id"]
    assert done["finish_reason"] == "error" and done["usage"]["cost"] == "0.0000000000"
    assert chat_backends.settlements[-1][1] == Decimal("0")
    assert all(u["cost"] == 0 for u in chat_backends.usage)
    user_msg, reply = await _messages(conversation)
    assert user_msg.content == "hi" and reply.status == "error"
    frames = await _turn(ws, "again")  # the socket is still usable
    assert frames[-1]["type"] == "done"
    await ws.disconnect()


async def test_a_provider_400_for_too_long_a_context_is_not_retried(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("a")
    chat_backends.key("b")
    chat_backends.scripts.append([ProviderError(ErrorKind.CONTEXT_TOO_LONG, "context length exceeded", status=400)])
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "a very long question")
    error, done = frames[-2:]
    assert error["code"] == "provider_error" and "too long" in error["message"]
    assert done["finish_reason"] == "error"
    assert len(chat_backends.calls) == 1
    assert chat_backends.settlements[-1][1] == Decimal("0")
    await ws.disconnect()


async def test_a_provider_that_hangs_times_out_and_the_user_sees_why(chat_backends, user, conversation_factory, settings, monkeypatch):
    settings.LLM_FIRST_TOKEN_TIMEOUT = 0.3
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("sleepy")
    chat_backends.scripts.append(["hang"])
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "hello?")
    error, done = frames[-2:]
    assert error["code"] == "provider_unavailable" and "in time" in error["message"]
    assert done["finish_reason"] == "error"
    assert chat_backends.usage[0]["error_kind"] == "timeout"
    assert chat_backends.settlements[-1][1] == Decimal("0")
    await ws.disconnect()


async def test_a_stream_cut_after_some_deltas_keeps_the_part_and_says_why(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user, model="openai:gpt-test")
    chat_backends.key("a")
    chat_backends.key("b")
    chat_backends.scripts.append(
        [TextDelta("half an "), TextDelta("answer"), ProviderError(ErrorKind.UNAVAILABLE, "connection reset", after_output=True)]
    )
    ws, _ = await ws_connect(user, conversation.id)
    frames = await _turn(ws, "explain")
    error, done = frames[-2:]
    assert error["code"] == "provider_error" and "cut off" in error["message"]
    assert done["finish_reason"] == "error"
    assert "".join(f["text"] for f in frames if f["type"] == "delta") == "half an answer"
    reply = (await _messages(conversation))[1]
    assert reply.status == "error" and reply.content == "half an answer"
    assert len(chat_backends.calls) == 1  # not retried: that would bill and repeat the text
    assert len(chat_backends.usage) == 1 and chat_backends.usage[0]["estimated"] is True
    assert chat_backends.settlements[-1][1] == reply.cost > 0
    await ws.disconnect()


async def test_a_conversation_deleted_in_another_tab_answers_invalid_input(chat_backends, user, conversation_factory):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    await database_sync_to_async(conversation.delete)()
    await ws.send_json_to(_send("hello?"))
    frames = await receive_until(ws, "error")
    assert frames[-1]["code"] == "invalid_input"
    await ws.send_json_to({"type": "stop"})
    assert await ws.receive_nothing(timeout=0.2)
    await ws.disconnect()


async def test_a_stop_flag_set_by_another_process_reaches_the_reply(chat_backends, user, conversation_factory):
    # Another process cannot always reach this one's channel layer (in-memory layer): the flag
    # in the shared cache is enough on its own.
    from django.core.cache import cache

    conversation = await database_sync_to_async(conversation_factory)(user)
    chat_backends.scripts.append([TextDelta("some "), "hang"])
    ws, _ = await ws_connect(user, conversation.id)
    await ws.send_json_to(_send("go"))
    start = (await receive_until(ws, "start"))[-1]
    await cache.aset(f"stop:{start['message_id']}", True)
    frames = await receive_until(ws, "done")
    assert frames[-1]["finish_reason"] == "cancelled"
    await turns.replies_wait()
    await ws.disconnect()


async def test_running_replies_heartbeat_together_in_one_update(chat_backends, user, conversation_factory, monkeypatch):
    """The reaper takes a reply whose heartbeat is old for a dead process's: while replies run,
    their rows are touched, and for all of them at once (not one UPDATE per reply)."""
    monkeypatch.setattr(turns, "HEARTBEAT_SECONDS", 0.05)
    monkeypatch.setattr(turns, "STOP_POLL_SECONDS", 0.02)
    beats = []
    real = turns._replies_heartbeat

    def spy(*, message_ids):
        beats.append(sorted(message_ids))
        return real(message_ids=message_ids)

    monkeypatch.setattr(turns, "_replies_heartbeat", spy)
    sockets, starts = [], []
    for _ in range(2):
        conversation = await database_sync_to_async(conversation_factory)(user)
        chat_backends.scripts.append([TextDelta("some "), "gate", TextDelta("more")])
        ws, _ = await ws_connect(user, conversation.id)
        await ws.send_json_to(_send("go"))
        starts.append((await receive_until(ws, "delta"))[-1])
        sockets.append(ws)
    both = sorted(uuid.UUID(f["message_id"]) for f in starts)
    first_beat = None
    for _ in range(100):
        if beats and beats[-1] == both:
            first_beat = await database_sync_to_async(
                lambda: sorted(Message.objects.filter(id__in=both).values_list("heartbeat_at", flat=True))
            )()
            break
        await asyncio.sleep(0.02)
    assert first_beat is not None, beats
    beats.clear()
    await asyncio.sleep(0.2)
    assert beats and all(call == both for call in beats)  # one call, both replies, each time
    later = await database_sync_to_async(
        lambda: sorted(Message.objects.filter(id__in=both).values_list("heartbeat_at", flat=True))
    )()
    assert later[0] > first_beat[0] and later[1] > first_beat[1]
    chat_backends.open_gate()
    for ws in sockets:
        await receive_until(ws, "done")
        await ws.disconnect()
    await turns.replies_wait()
    beats.clear()
    await asyncio.sleep(0.2)
    assert beats == []  # nothing runs: the watcher has ended


async def test_a_server_fault_answers_an_error_and_keeps_the_socket(chat_backends, user, conversation_factory, monkeypatch):
    from billing import budgets

    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, _ = await ws_connect(user, conversation.id)
    real_reserve = budgets.budget_reserve

    def broken(**kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(budgets, "budget_reserve", broken)
    await ws.send_json_to(_send("first"))
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error" and "database" not in error["message"]
    monkeypatch.setattr(budgets, "budget_reserve", real_reserve)
    frames = await _turn(ws, "second")
    assert frames[-1]["finish_reason"] == "stop"
    await ws.disconnect()


async def test_a_message_to_a_conversation_deleted_elsewhere_is_refused_without_an_ack(
    chat_backends, user, conversation_factory
):
    conversation = await database_sync_to_async(conversation_factory)(user)
    ws, connected = await ws_connect(user, conversation.id)
    assert connected
    await database_sync_to_async(conversation.delete)()  # another tab deleted it
    await ws.send_json_to({"type": "user_message", "content": "still here?", "client_id": str(uuid.uuid4())})
    frame = await ws.receive_json_from(timeout=5)
    assert frame["type"] == "error", "nothing was saved, so nothing may be acknowledged"
    assert await ws.receive_nothing(timeout=0.2)
    assert not await database_sync_to_async(Message.objects.filter(conversation_id=conversation.id).exists)()
    assert chat_backends.usage == [] and chat_backends.reservations == {}
    await ws.disconnect()
