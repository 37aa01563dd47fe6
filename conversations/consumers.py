"""The chat socket. Thin: authorize the handshake, validate frames, hand them to the turn
service, relay what the conversation's group carries. The reply never depends on this socket.

Abuse limits (SECURITY.md): a user holds at most WS_MAX_SOCKETS_PER_USER sockets across every
process (slots in the shared cache, conversations/sockets.py), sends at most WS_MAX_FRAMES_PER_SECOND frames (past that the
socket is told `rate_limited` and closed, and the extra frames do nothing), and a socket whose
session ends (logged out elsewhere, expired, password changed, user deactivated or erased) stops
serving at once when this process hears of it, and at the latest on its next frame or heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext as _

from accounts.selectors import user_language

from . import sockets, turns
from .selectors import conversation_get
from .services import message_too_long_text, text_unstorable

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 30  # slot refresh and session re-check of an idle socket
CLOSE_SIGNED_OUT = 4401  # the session ended: the page should sign in again
CLOSE_TOO_MANY = 4429  # too many sockets or frames: the page should back off
# One frame holds one message. JSON escaping can make it up to 12 times longer than its text:
# a character beyond the BMP is escaped as two \uXXXX (an emoji from Python's json.dumps, say).
FRAME_MAX_CHARS_PER_CHAR = 12
FRAME_MAX_CHARS_OVERHEAD = 4096


def _is_user_message(content) -> bool:
    return isinstance(content, dict) and content.get("type") == "user_message"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        # Every message this socket (and the turns it starts) writes is in the person's language,
        # as their pages are. Nothing else would choose one: a socket is no request that Django's
        # locale middleware sees. Activated in this consumer's own context, so it holds for its
        # handlers and the tasks and threads they start, and for no other socket.
        headers = dict(self.scope.get("headers", []))
        translation.activate(
            user_language(
                user=user,
                language_cookie=self.scope.get("cookies", {}).get(settings.LANGUAGE_COOKIE_NAME),
                accept_language=headers.get(b"accept-language", b"").decode("latin-1"),
            )
        )
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = await database_sync_to_async(conversation_get)(owner=user, conversation_id=conversation_id)
        if self.conversation is None:
            # Not the owner looks exactly like "does not exist".
            await self.close()
            return
        self.user = user
        self.session_key = getattr(self.scope.get("session"), "session_key", None)
        self.frame_times: list[float] = []
        self.closing = False
        if not await self._slot_claim():
            # Accepted only to say why, then closed: the page shows the reason instead of retrying.
            await self.accept()
            await self.send_json(
                {"type": "error", "code": "rate_limited", "message": _("Too many chat windows are open. Close some and reload.")}
            )
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.group = turns.group_name(self.conversation.id)
        # message id -> the last seq this socket already has (from "resume"); older deltas dropped.
        self.resumed: dict[str, int] = {}
        # The reply this socket saw start (or resumed) and has not heard the end of; whether a
        # heartbeat already found it ended; the replies whose end a heartbeat told.
        self.running: str | None = None
        self.running_ended = False
        self.told_ended: set[str] = set()
        # The session's and the user's groups first: a logout that happens while we connect
        # must still reach us.
        self.control_groups = [sockets.user_group_name(user.pk)]
        if self.session_key:
            self.control_groups.append(sockets.session_group_name(self.session_key))
        for group in self.control_groups:
            await self.channel_layer.group_add(group, self.channel_name)
        if await self._signed_out():
            await self._leave()
            await self.close()
            return
        # Join first, then read the buffer: every delta after the buffer's seq is then sure to
        # reach us through the group, and the ones at or before it are dropped by seq.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        self.heartbeat = asyncio.create_task(self._heartbeat())
        state = await turns.stream_resume_state(conversation_id=self.conversation.id)
        if state:
            self.resumed[state["message_id"]] = state["seq"]
            self.running, self.running_ended = state["message_id"], False
            await self.send_json(
                {"type": "resume", "message_id": state["message_id"], "seq": state["seq"], "text": state["text"], "model": state.get("model", "")}
            )

    async def disconnect(self, code):
        await self._leave()

    async def _leave(self):
        heartbeat = getattr(self, "heartbeat", None)
        if heartbeat is not None and heartbeat is not asyncio.current_task():
            heartbeat.cancel()
        for group in [getattr(self, "group", None), *getattr(self, "control_groups", [])]:
            if group:
                await self.channel_layer.group_discard(group, self.channel_name)
        self.group, self.control_groups = None, []
        await self._slot_release()

    # --- the per-user socket cap (conversations.sockets) -----------------------------------------
    async def _slot_claim(self) -> bool:
        self.slot = await sockets.socket_slot_claim(user_id=self.user.pk, channel_name=self.channel_name)
        return self.slot is not None

    async def _slot_refresh(self) -> None:
        self.slot = await sockets.socket_slot_refresh(slot=self.slot, user_id=self.user.pk, channel_name=self.channel_name)

    async def _slot_release(self) -> None:
        slot, self.slot = getattr(self, "slot", None), None
        await sockets.socket_slot_release(slot=slot, channel_name=self.channel_name)

    # --- the session: still signed in? ------------------------------------------------------------
    async def _signed_out(self) -> bool:
        return not await database_sync_to_async(self._signed_in)()

    def _signed_in(self, user_row=None) -> bool:
        return sockets.session_signs_in(session_key=self.session_key, user_id=self.user.pk, user_row=user_row)

    async def _close_signed_out(self):
        if self.closing:
            return
        self.closing = True
        await self._leave()
        await self.close(code=CLOSE_SIGNED_OUT)

    async def session_revoked(self, event):
        """From the session's or the user's group: logged out elsewhere, deactivated, erased."""
        await self._close_signed_out()

    async def _heartbeat(self):
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with contextlib.suppress(Exception):
                await self._slot_refresh()
            try:
                signed_out = await self._signed_out()
            except Exception:  # noqa: BLE001 - a database hiccup must not drop a good socket
                logger.warning("session re-check failed; the socket stays open until the next one")
                continue
            if signed_out:
                await self._close_signed_out()
                return
            with contextlib.suppress(Exception):  # next time: a database hiccup changes nothing
                await self._running_check()

    async def _running_check(self):
        """Pub/sub delivers at most once: frames published while this process was not subscribed
        (Redis restarted, the process resubscribing) are lost, "done" among them, and the page
        would show the reply streaming until reloaded. A reply this socket saw start, found
        ended by two heartbeats in a row (the published "done" follows the save within seconds:
        one would race it), is told here from its saved row; the page then reloads the messages."""
        message_id = self.running
        if message_id is None:
            return
        frame = await database_sync_to_async(turns.reply_end_frame)(message_id=message_id)
        if frame is None or self.running != message_id or self.closing:
            return
        if not self.running_ended:
            self.running_ended = True
            return
        self.running = None
        self.told_ended.add(message_id)
        await self.send_json(frame)

    async def _invalid(self, message: str, **extra):
        await self.send_json({"type": "error", "code": "invalid_input", "message": message, **extra})

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if self.closing:
            return
        # Counted before anything else, bad frames included: a flood costs no parsing.
        if self._too_fast():
            self.closing = True
            await self.send_json({"type": "error", "code": "rate_limited", "message": _("Too many frames: slow down.")})
            await self._leave()
            await self.close(code=CLOSE_TOO_MANY)
            return
        if text_data is None:
            await self._invalid(_("Frames must be JSON text."))
            return
        if len(text_data) > settings.MAX_MESSAGE_CHARS * FRAME_MAX_CHARS_PER_CHAR + FRAME_MAX_CHARS_OVERHEAD:
            await self._invalid(message_too_long_text())
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the parser's depth
            await self._invalid(_("The frame is not valid JSON."))
            return
        # Every frame that could act re-reads the session: a logout this process did not hear
        # about (another process, a dead channel layer, an expiry) ends the socket here. A
        # user_message re-reads it in the same database call that saves it (turn_start's guard).
        if not _is_user_message(content) and await self._signed_out():
            await self._close_signed_out()
            return
        await self.receive_json(content)

    def _too_fast(self) -> bool:
        now = time.monotonic()
        self.frame_times = [t for t in self.frame_times if now - t < 1.0]
        self.frame_times.append(now)
        return len(self.frame_times) > settings.WS_MAX_FRAMES_PER_SECOND

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self._invalid(_("The frame needs a type."))
            return
        try:
            await self._dispatch(content)
        except Exception:  # noqa: BLE001 - a server fault must not drop the socket
            logger.exception("chat frame failed in conversation %s", self.conversation.id)
            await self.send_json(
                {"type": "error", "code": "provider_error", "message": _("Something went wrong. Please try again.")}
            )

    async def _dispatch(self, content: dict):
        kind = content["type"]
        if kind == "user_message":
            await self._user_message(content)
        elif kind == "stop":
            await turns.turn_stop_async(conversation_id=self.conversation.id)
        elif kind == "regenerate":
            result = await turns.turn_regenerate(user=self.user, conversation=self.conversation)
            if result.error:
                await self.send_json(self._error_frame(result))
        else:
            await self._invalid(_("Unknown frame type."))

    async def _user_message(self, content: dict):
        raw_client_id = content.get("client_id")
        try:
            client_id = uuid.UUID(raw_client_id) if isinstance(raw_client_id, str) else None
        except ValueError:
            client_id = None
        if client_id is None:
            await self._invalid(_("client_id must be a UUID."))
            return
        # Echoed as sent (upper case, braces): a client matches its acks by its own string. The
        # message is keyed by the UUID it names, so any spelling of it is the same resend.
        echo = raw_client_id
        text = content.get("content")
        if not isinstance(text, str) or not text.strip():
            await self._invalid(_("The message is empty."), client_id=echo)
            return
        if len(text) > settings.MAX_MESSAGE_CHARS:
            await self._invalid(
                message_too_long_text(), client_id=echo
            )
            return
        if (why := text_unstorable(text)) is not None:
            await self._invalid(why, client_id=echo)
            return
        result = await turns.turn_start(
            user=self.user, conversation=self.conversation, content=text, client_id=client_id, guard=self._signed_in
        )
        if result.error and result.error.code == turns.SIGNED_OUT:
            await self._close_signed_out()
            return
        # Sent from this handler, so it reaches this socket before the group's "start". A turn
        # refused before the message was saved (conversation gone, account closed) acks nothing.
        if result.user_message_id is not None:
            await self.send_json({"type": "ack", "client_id": echo, "message_id": str(result.user_message_id)})
        if result.error:
            await self.send_json(self._error_frame(result, client_id=echo))

    @staticmethod
    def _error_frame(result: turns.TurnResult, *, client_id: str | None = None) -> dict:
        frame = {"type": "error", "code": result.error.code, "message": result.error.message}
        if client_id:
            frame["client_id"] = client_id
        if result.user_message_id:
            frame["user_message_id"] = str(result.user_message_id)
        frame.update({k: v for k, v in result.error.extra.items() if k not in frame})
        return frame

    async def dispatch(self, message):
        # Channels closes stale database connections before every handler: a trip to the one
        # thread it runs sync code on, per message. Here it is a wait and nothing more: this
        # consumer reaches the database only through database_sync_to_async and the turn's own
        # threads, which close stale connections around every call themselves. A relayed chat
        # frame (25 a second per running reply) would queue behind every other socket's SQL on
        # that thread, and a sent message would wait for it before its turn begins.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def chat_frame(self, event):
        """A frame of the conversation's running reply (turns.frame_event), already encoded."""
        if self.closing:
            return
        message_id = event["message_id"]
        kind = event["kind"]
        if kind == "done" and message_id in self.told_ended:
            return  # already told by the heartbeat
        if kind == "start":
            self.running, self.running_ended = message_id, False
        elif kind == "done" and self.running == message_id:
            self.running = None
        if message_id in self.resumed:
            # Already covered by "resume": the start, and every delta up to its seq.
            if kind == "start" or (kind == "delta" and event["seq"] <= self.resumed[message_id]):
                return
        await self.send(text_data=event["text"])
