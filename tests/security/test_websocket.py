"""Websocket attacks, through the whole ASGI application (chatsite.asgi.application): cross-site
websocket hijacking, a socket outliving its session, too many sockets, a flood of frames."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from importlib import import_module

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.test import Client

from billing.models import UsageRecord
from conversations import consumers, sockets, turns
from conversations.models import Conversation, Message

from .conftest import frames_until_close, session_cookie_of, ws_open

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app():
    from chatsite.asgi import application

    return application


@database_sync_to_async
def _conversation(owner) -> Conversation:
    return Conversation.objects.create(owner=owner, model="demo:echo")


def _path(conversation) -> str:
    return f"/ws/chat/{conversation.id}/"


@database_sync_to_async
def _end_session_silently(session_key: str) -> None:
    """The session ends through the session engine (its database row and its cached copy), as a
    logout in another process does, but no signal reaches this process's sockets."""
    import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key).delete()


def _user_message(text: str = "hello") -> dict:
    return {"type": "user_message", "content": text, "client_id": str(uuid.uuid4())}


@database_sync_to_async
def _message_count(conversation) -> int:
    return Message.objects.filter(conversation=conversation).count()


# --- cross-site websocket hijacking ------------------------------------------------------------------
@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example",
        "http://testserver.evil.example",
        "http://evil.example/testserver",
        "null",
        "",
        None,  # no Origin header at all
    ],
)
async def test_a_foreign_or_missing_origin_is_refused_even_with_a_valid_session(app, user, origin):
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    ws, connected, _code = await ws_open(app, _path(conversation), cookie=cookie, origin=origin)
    assert not connected, f"origin {origin!r} opened a socket with the victim's cookie"
    await ws.disconnect()
    # The control: the same cookie from the site's own origin is accepted.
    ws, connected, _code = await ws_open(app, _path(conversation), cookie=cookie, origin="http://testserver")
    assert connected
    await ws.disconnect()


@pytest.mark.parametrize(
    "origin, host, https, opens",
    [
        # Another site on the same host is another origin: a dev server beside Parley, another
        # service on another port. The browser sends it the session cookie all the same (cookies
        # know no ports), so only the Origin tells it apart.
        ("http://localhost:3000", "localhost:8000", False, False),
        ("http://testserver:8080", "testserver", False, False),
        # Served over HTTPS, every page of the site is https: an http page is not one of them.
        ("http://testserver", "testserver", True, False),
        # The site's own pages.
        ("http://localhost:8000", "localhost:8000", False, True),
        ("https://testserver", "testserver", True, True),
        ("http://testserver", None, False, True),
        # No Host header: no browser's page (a browser always sends one), so CONTRACT.md's rule
        # alone, an allowed host on any port, as a script or test client naming no Host expects.
        ("http://testserver:8080", None, False, True),
        ("http://elsewhere:8080", None, False, False),
    ],
)
async def test_a_page_on_another_port_or_scheme_of_an_allowed_host_cannot_open_a_socket(
    app, user, settings, origin, host, https, opens
):
    settings.HTTPS = https
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    ws, connected, _code = await ws_open(app, _path(conversation), cookie=cookie, origin=origin, host=host)
    assert connected is opens, f"origin {origin!r} on host {host!r}"
    if connected:
        # Open, it serves the conversation: the refusals above are the origin's, nothing else's.
        await ws.send_json_to(_user_message())
        assert (await ws.receive_json_from(timeout=10))["type"] == "ack"
    await ws.disconnect()


async def test_a_socket_refused_for_its_origin_is_said_in_the_log_for_the_operator(app, user, caplog):
    """Behind a proxy that rewrites Host (to the container's name, say) every page loads but no chat
    socket opens: each was refused for its Origin with nothing in any log, the browser saying only
    "reconnecting". One warning names the Origin and Host, at most once a minute."""
    from chatsite import middleware

    middleware.ORIGIN_REFUSALS.reset("origin")
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    for _ in range(3):
        ws, connected, _code = await ws_open(
            app, _path(conversation), cookie=cookie, origin="https://parley.school.example", host="web:8000"
        )
        assert not connected
    told = [r for r in caplog.records if "websocket refused" in r.getMessage()]
    assert len(told) == 1, [r.getMessage() for r in caplog.records]
    assert told[0].levelname == "WARNING"
    assert "https://parley.school.example" in told[0].getMessage() and "web:8000" in told[0].getMessage()


@pytest.mark.parametrize("path", ["/ws/chat/not-a-uuid/", "/ws/chat/", "/ws/chat/../../admin/", "/ws/else/"])
@pytest.mark.parametrize("signed_in", [True, False])
async def test_a_socket_to_a_path_no_route_serves_is_refused_without_an_error(app, user, path, signed_in):
    # Channels' router raises ValueError for such a path, which Daphne logs as an ERROR with its
    # traceback: any visitor could fill the error log. It is refused like any other bad socket.
    cookie = await session_cookie_of(user) if signed_in else None
    ws, connected, _code = await ws_open(app, path, cookie=cookie)
    assert not connected
    await ws.disconnect()


# --- a socket outlives its session: never -------------------------------------------------------------
async def test_a_socket_closes_when_its_session_logs_out_elsewhere(app, user):
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    other_cookie = await session_cookie_of(user)  # the same person on a second device
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
    other, other_connected, _ = await ws_open(app, _path(conversation), cookie=other_cookie)
    assert connected and other_connected

    # "Elsewhere": another browser tab holding the same cookie presses "log out".
    tab = Client()
    tab.cookies["sessionid"] = cookie

    response = await sync_to_async(tab.post)("/accounts/logout/")
    assert response.status_code == 302

    frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT
    assert frames == []
    # The other device's session is untouched and its socket still serves.
    await other.send_json_to(_user_message("still here"))
    ack = await other.receive_json_from(timeout=5)
    assert ack["type"] == "ack"
    await turns.replies_wait()
    await other.disconnect()
    await ws.disconnect()


@pytest.mark.parametrize("frame", ["user_message", "regenerate"])
async def test_a_frame_on_a_session_ended_without_a_signal_closes_and_does_nothing(app, user, frame):
    """The logout happened in a process this one never heard from: the frame re-reads the session
    (a user_message in the same database call that would save it, any other frame before it acts)."""
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
    assert connected
    await _end_session_silently(cookie)
    await ws.send_json_to(_user_message("after logout") if frame == "user_message" else {"type": frame})
    frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT and frames == []
    assert await _message_count(conversation) == 0
    await ws.disconnect()


async def test_a_password_changed_without_a_signal_ends_the_socket_at_its_next_message(app, user):
    """Another process changed the password (the session's hash no longer matches): the message
    is refused unsaved, read against the user row as it is now."""
    from django.contrib.auth.hashers import make_password

    conversation = await _conversation(user)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=await session_cookie_of(user))
    assert connected
    await database_sync_to_async(
        lambda: type(user).objects.filter(pk=user.pk).update(password=make_password("a new password 42"))
    )()
    await ws.send_json_to(_user_message("after the change"))
    frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT and frames == []
    assert await _message_count(conversation) == 0
    await ws.disconnect()


async def test_erasing_or_deactivating_the_user_closes_their_sockets(app, make_user):
    from accounts.data_rights import erasure_request

    erased = await sync_to_async(make_user)("erased")
    deactivated = await sync_to_async(make_user)("deactivated")
    sockets = {}
    for who in (erased, deactivated):
        conversation = await _conversation(who)
        ws, connected, _ = await ws_open(app, _path(conversation), cookie=await session_cookie_of(who))
        assert connected
        sockets[who.username] = (ws, conversation)

    # An admin unticks "active": the save closes the sockets at once.
    deactivated.is_active = False
    await database_sync_to_async(deactivated.save)()
    ws, conversation = sockets["deactivated"]
    _frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT

    # Erasure locks the account with a queryset update (no save signal): it closes them at once
    # too, without waiting for their next frame or heartbeat.
    await database_sync_to_async(erasure_request)(user=erased, queue=False)
    ws, conversation = sockets["erased"]
    frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT and frames == []
    assert await _message_count(conversation) == 0
    for ws, _c in sockets.values():
        await ws.disconnect()


async def test_the_admin_disable_action_closes_the_users_sockets_at_once(app, make_user):
    """The "Disable selected accounts" action (a queryset update, no save signal) closes them as
    unticking "active" on the change form does, not at their next frame or heartbeat."""
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

    admin = await sync_to_async(make_user)("root", is_staff=True, is_superuser=True)
    victim = await sync_to_async(make_user)("victim")
    conversation = await _conversation(victim)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=await session_cookie_of(victim))
    assert connected

    def disable():
        client = Client()
        client.force_login(admin)
        response = client.post("/admin/accounts/user/", {"action": "disable_users", ACTION_CHECKBOX_NAME: [victim.pk]})
        assert response.status_code == 302
        victim.refresh_from_db()
        assert not victim.is_active

    await sync_to_async(disable)()
    _frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT
    await ws.disconnect()


PASSWORD, NEW_PASSWORD = "correct horse battery 9", "a brand new pw 4242"


async def test_a_password_change_closes_the_other_devices_sockets_at_once(app, user):
    conversation = await _conversation(user)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=await session_cookie_of(user))
    assert connected

    def change():
        client = Client()
        client.force_login(user)
        response = client.post(
            "/accounts/password/change/",
            {"old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD},
        )
        assert response.status_code == 302
        assert client.get("/accounts/profile/").status_code == 200  # the changer stays signed in

    await sync_to_async(change)()
    _frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT
    await ws.disconnect()


async def test_a_password_reset_or_one_set_by_an_admin_closes_the_users_sockets_at_once(app, make_user):
    from django.contrib.auth.tokens import default_token_generator
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    admin = await sync_to_async(make_user)("root", is_staff=True, is_superuser=True)
    user = await sync_to_async(make_user)("forgetful")
    conversation = await _conversation(user)

    def reset():
        client = Client()
        url = f"/accounts/password/reset/{urlsafe_base64_encode(force_bytes(user.pk))}/{default_token_generator.make_token(user)}/"
        form_url = client.get(url)["Location"]  # Django moves the token into the session first
        response = client.post(form_url, {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
        assert response.status_code == 302 and response["Location"] == "/accounts/password/reset/complete/"

    def set_by_admin():
        client = Client()
        client.force_login(admin)
        response = client.post(
            f"/admin/accounts/user/{user.pk}/password/",
            {"password1": "an admin's pw 5151", "password2": "an admin's pw 5151", "usable_password": "true"},
        )
        assert response.status_code == 302

    for change in (reset, set_by_admin):
        await database_sync_to_async(user.refresh_from_db)()  # signed in with the password as it is now
        ws, connected, _ = await ws_open(app, _path(conversation), cookie=await session_cookie_of(user))
        assert connected
        await sync_to_async(change)()
        _frames, code = await frames_until_close(ws, timeout=5)
        assert code == consumers.CLOSE_SIGNED_OUT, change.__name__
        await ws.disconnect()


async def test_an_idle_socket_closes_at_its_heartbeat_after_the_session_ends(app, user, monkeypatch):
    monkeypatch.setattr(consumers, "HEARTBEAT_SECONDS", 0.05)
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
    assert connected
    await _end_session_silently(cookie)
    _frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_SIGNED_OUT
    await ws.disconnect()


# --- per-user socket cap ----------------------------------------------------------------------------
async def test_open_sockets_are_capped_per_user_across_processes(app, user, other_user, settings):
    settings.WS_MAX_SOCKETS_PER_USER = 3
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    # A slot held by another Daphne process (its sockets count too: the count lives in the cache).
    await cache.aadd(sockets.slot_key(user.pk, 0), "specific.other-process!abc", timeout=60)

    open_sockets = []
    for _ in range(2):
        ws, connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
        assert connected
        open_sockets.append(ws)

    extra, connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
    frames, code = await frames_until_close(extra, timeout=5)
    assert code == consumers.CLOSE_TOO_MANY
    assert [f["code"] for f in frames] == ["rate_limited"]
    await extra.disconnect()

    # Another user is not affected by this user's sockets.
    theirs = await _conversation(other_user)
    ws, connected, _ = await ws_open(app, _path(theirs), cookie=await session_cookie_of(other_user))
    assert connected
    await ws.disconnect()

    # Closing one frees its slot.
    await open_sockets.pop().disconnect()
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
    assert connected
    await ws.send_json_to(_user_message("works"))
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await turns.replies_wait()
    open_sockets.append(ws)
    for ws in open_sockets:
        await ws.disconnect()


async def test_slots_of_a_crashed_process_expire(app, user, settings):
    settings.WS_MAX_SOCKETS_PER_USER = 2
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    # A process died holding both slots; they were written with the slot expiry (shortened here).
    for n in range(2):
        await cache.aadd(sockets.slot_key(user.pk, n), f"specific.dead!{n}", timeout=1)
    ws, _connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
    _frames, code = await frames_until_close(ws, timeout=5)
    assert code == consumers.CLOSE_TOO_MANY
    await ws.disconnect()
    await asyncio.sleep(1.2)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=cookie)
    assert connected
    await ws.disconnect()


# --- a flood of frames -------------------------------------------------------------------------------
async def test_a_thousand_frames_in_a_second_are_refused_and_charge_nothing(app, user, settings):
    conversation = await _conversation(user)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=await session_cookie_of(user))
    assert connected
    started = time.monotonic()
    for _ in range(1000):
        await ws.send_json_to(_user_message("flood"))
    frames, code = await frames_until_close(ws, timeout=20)
    # The allowance is per second of the socket's own clock: on a loaded machine the flood is
    # read over more than one second, and each second may pass its allowance.
    seconds = math.ceil(time.monotonic() - started)
    await turns.replies_wait()

    assert code == consumers.CLOSE_TOO_MANY
    errors = [f for f in frames if f["type"] == "error"]
    assert errors and errors[-1]["code"] == "rate_limited"
    # Only the frames inside the allowance did anything (a message each, answered or "busy");
    # the other ~980 made no message, no reply and no charge.
    saved_user_messages = await database_sync_to_async(
        lambda: Message.objects.filter(conversation=conversation, role="user").count()
    )()
    assert 1 <= saved_user_messages <= settings.WS_MAX_FRAMES_PER_SECOND * seconds
    assert saved_user_messages < 100  # and far from the thousand sent
    replies = await database_sync_to_async(
        lambda: Message.objects.filter(conversation=conversation, role="assistant").count()
    )()
    assert replies <= saved_user_messages
    assert await database_sync_to_async(UsageRecord.objects.filter(user=user).count)() <= replies
    await ws.disconnect()


async def test_an_oversized_frame_is_refused_unparsed(app, user, settings):
    settings.MAX_MESSAGE_CHARS = 100
    conversation = await _conversation(user)
    ws, connected, _ = await ws_open(app, _path(conversation), cookie=await session_cookie_of(user))
    assert connected
    await ws.send_to(text_data="[" + "1," * 200_000 + "1]")
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "invalid_input"
    assert await _message_count(conversation) == 0
    await ws.disconnect()


# --- the Redis channel layer keeps idle sockets ---------------------------------------------------
async def test_an_idle_socket_on_redis_stays_open_and_answers_after_six_quiet_seconds(app, user, needs_redis):
    # redis-py 8 gives connections a 5 s read timeout while the layer blocks up to 5 s for the
    # next message; unless the layer's hosts set socket_timeout=None, the idle receive raises
    # and Daphne drops the socket (found by bench/bench_chat.py).
    conversation = await _conversation(user)
    cookie = await session_cookie_of(user)
    ws, connected, _code = await ws_open(app, _path(conversation), cookie=cookie)
    assert connected
    await asyncio.sleep(6.5)
    assert await ws.receive_nothing(timeout=0.1), "the idle socket was closed or sent something"
    await ws.send_json_to(_user_message("still there?"))
    frames = []
    while not frames or frames[-1]["type"] not in {"done", "error"}:
        frames.append(await ws.receive_json_from(timeout=10))
    assert frames[0]["type"] == "ack" and frames[-1]["type"] == "done"
    await ws.disconnect()
