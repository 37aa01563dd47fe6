"""Who may keep a chat socket open: the per-user socket cap (slots in the shared cache) and the
session checks, and the signals that close the sockets of a session logged out or a user
deactivated or erased, in every process. The consumer (consumers.py) calls these."""

from __future__ import annotations

import hashlib
import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model, load_backend
from django.contrib.auth.signals import user_logged_out
from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.utils.crypto import constant_time_compare

logger = logging.getLogger(__name__)

# A socket's slot lives this long without a heartbeat: the slots of a process that died free
# themselves after it, instead of counting against their user forever.
SLOT_TTL = 90


def session_group_name(session_key: str) -> str:
    """The sockets of one session. From a hash: the session key itself never leaves the cookie
    and the session table (no Redis key, no log line)."""
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def user_group_name(user_id) -> str:
    return f"user.{int(user_id)}"


def slot_key(user_id, n: int) -> str:
    return f"ws:slot:{int(user_id)}:{n}"


def session_user_id(session_key: str | None, *, user_row=None):
    """The id of the active user this session still signs in, else None. The same checks as
    django.contrib.auth.get_user, on a fresh read of the session (never the socket's cached copy).
    `user_row`: that user freshly read by the caller (with a conversation, say), so it is not
    read again; used only when it is the session's user."""
    if not session_key:
        return None
    from importlib import import_module

    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)
    data = store.load()
    try:
        user_id = get_user_model()._meta.pk.to_python(data[SESSION_KEY])
        backend_path = data[BACKEND_SESSION_KEY]
    except (KeyError, ValueError, TypeError):
        return None
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return None
    if user_row is not None and user_row.pk == user_id:
        user = user_row
    else:
        user = load_backend(backend_path).get_user(user_id)  # None when inactive or gone
    if user is None or not user.is_active:
        return None
    session_hash = data.get(HASH_SESSION_KEY)
    hashes = [user.get_session_auth_hash(), *getattr(user, "get_session_auth_fallback_hash", lambda: [])()]
    if not session_hash or not any(constant_time_compare(session_hash, h) for h in hashes):
        return None
    return user.pk


def session_signs_in(*, session_key: str | None, user_id, user_row=None) -> bool:
    """A socket opened by `user_id` may go on serving: its session still signs that user in."""
    found = session_user_id(session_key, user_row=user_row)
    return found is not None and found == user_id


def _close_group(group: str) -> None:
    """Tell every socket in `group` (in any process) to close. Never breaks the caller: a logout
    or an admin's save must succeed even when the channel layer is down; the sockets then close
    on their next frame or heartbeat."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, {"type": "session.revoked"})
    except Exception:  # noqa: BLE001
        logger.warning("could not tell sockets to close (%s); they close on their next check", group.split(".")[0])


def _on_logged_out(sender, request=None, user=None, **kwargs):
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if key:
        _close_group(session_group_name(key))


def user_sockets_close(*, user_id) -> None:
    """Close every chat socket of this user, in every process, once the current transaction
    commits (a rolled-back change must not drop anyone's sockets). For the services whose change
    ends the user's sessions without a save signal saying so: an account disabled with a queryset
    update, a password changed (the other sessions' hash no longer matches)."""
    group = user_group_name(user_id)
    transaction.on_commit(lambda: _close_group(group))


def _on_user_saved(sender, instance, created=False, **kwargs):
    if not created and not instance.is_active:
        user_sockets_close(user_id=instance.pk)


def _on_user_deleted(sender, instance, **kwargs):
    user_sockets_close(user_id=instance.pk)


# Connected here because this module is loaded by chatsite.asgi in every process that serves
# sockets; the processes that do not (Celery, commands) have no sockets to close, and the
# sockets they affect notice on their next frame or heartbeat.
user_logged_out.connect(_on_logged_out, dispatch_uid="chat-sockets-logged-out")
post_save.connect(_on_user_saved, sender=settings.AUTH_USER_MODEL, dispatch_uid="chat-sockets-user-saved")
post_delete.connect(_on_user_deleted, sender=settings.AUTH_USER_MODEL, dispatch_uid="chat-sockets-user-deleted")


# --- the per-user socket cap: slots in the shared cache -----------------------------------------
async def socket_slot_claim(*, user_id, channel_name: str) -> str | None:
    """One of the user's WS_MAX_SOCKETS_PER_USER slots, taken with an atomic add (Redis SET NX) so
    two processes never take the same one; each expires unless its socket's heartbeat refreshes
    it. The slot's key, or None when every slot is taken."""
    for n in range(settings.WS_MAX_SOCKETS_PER_USER):
        key = slot_key(user_id, n)
        if await cache.aadd(key, channel_name, timeout=SLOT_TTL):
            return key
    return None


async def socket_slot_refresh(*, slot: str | None, user_id, channel_name: str) -> str | None:
    """Keep `slot` alive; after a very long stall it may have expired: take it again, or any free
    one. Returns the slot now held."""
    if not slot or await cache.atouch(slot, SLOT_TTL):
        return slot
    if await cache.aadd(slot, channel_name, timeout=SLOT_TTL):
        return slot
    return await socket_slot_claim(user_id=user_id, channel_name=channel_name)


async def socket_slot_release(*, slot: str | None, channel_name: str) -> None:
    if slot and await cache.aget(slot) == channel_name:
        await cache.adelete(slot)
