"""The chat socket. Thin: authorize the handshake, validate frames, hand them to the turn
service, relay what the conversation's group carries. The reply never depends on this socket."""

from __future__ import annotations

import json
import logging
import time
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.core.cache import cache
from django.utils.translation import gettext as _

from . import turns
from .selectors import conversation_get

logger = logging.getLogger(__name__)


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = await database_sync_to_async(conversation_get)(owner=user, conversation_id=conversation_id)
        if self.conversation is None:
            # Not the owner looks exactly like "does not exist".
            await self.close()
            return
        self.user = user
        self.group = turns.group_name(self.conversation.id)
        # message id -> the last seq this socket already has (from "resume"); older deltas dropped.
        self.resumed: dict[str, int] = {}
        self.frame_times: list[float] = []
        # Join first, then read the buffer: every delta after the buffer's seq is then sure to
        # reach us through the group, and the ones at or before it are dropped by seq.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        state = await cache.aget(turns.buffer_key(self.conversation.id))
        if state:
            self.resumed[state["message_id"]] = state["seq"]
            await self.send_json(
                {"type": "resume", "message_id": state["message_id"], "seq": state["seq"], "text": state["text"], "model": state.get("model", "")}
            )

    async def disconnect(self, code):
        group = getattr(self, "group", None)
        if group:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def _invalid(self, message: str, **extra):
        await self.send_json({"type": "error", "code": "invalid_input", "message": message, **extra})

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if text_data is None:
            await self._invalid(_("Frames must be JSON text."))
            return
        try:
            content = json.loads(text_data)
        except ValueError:
            await self._invalid(_("The frame is not valid JSON."))
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
        if self._too_fast():
            await self.send_json({"type": "error", "code": "rate_limited", "message": _("Too many frames: slow down.")})
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
        text = content.get("content")
        if not isinstance(text, str) or not text.strip():
            await self._invalid(_("The message is empty."), client_id=str(client_id))
            return
        if len(text) > settings.MAX_MESSAGE_CHARS:
            await self._invalid(
                _("The message is longer than %(n)d characters.") % {"n": settings.MAX_MESSAGE_CHARS}, client_id=str(client_id)
            )
            return
        result = await turns.turn_start(user=self.user, conversation=self.conversation, content=text, client_id=client_id)
        # Sent from this handler, so it reaches this socket before the group's "start".
        await self.send_json({"type": "ack", "client_id": str(client_id), "message_id": str(result.user_message_id)})
        if result.error:
            await self.send_json(self._error_frame(result))

    @staticmethod
    def _error_frame(result: turns.TurnResult) -> dict:
        frame = {"type": "error", "code": result.error.code, "message": result.error.message}
        if result.client_id:
            frame["client_id"] = str(result.client_id)
        if result.user_message_id:
            frame["user_message_id"] = str(result.user_message_id)
        frame.update({k: v for k, v in result.error.extra.items() if k not in frame})
        return frame

    async def chat_frame(self, event):
        frame = event["frame"]
        message_id = frame.get("message_id")
        if message_id in self.resumed:
            kind = frame["type"]
            # Already covered by "resume": the start, and every delta up to its seq.
            if kind == "start" or (kind == "delta" and frame["seq"] <= self.resumed[message_id]):
                return
        await self.send_json(frame)
