"""Daphne stopped with SIGTERM (a deploy, `docker compose restart`) while a reply streams: the
reply ends before the process exits, saved, billed and settled, not left for the reaper."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import aiohttp
import pytest
from django.db import connections
from django.test import Client

from billing import prices
from billing.models import Reservation
from conversations.models import Conversation, Message
from tests.dbenv import database_url
from tests.fakeprovider.standalone import NotStarted, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db(transaction=True)


@contextlib.contextmanager
def _daphne_with_a_conversation(user, settings):
    """A Daphne process serving the suite's database, with the demo model answering slowly
    (200 words: 40 s, far longer than the shutdown's grace); yields (port, server, conversation,
    session cookie) and stops the process after, whatever the test did to it."""
    if prices.price_for(model_id="demo:echo") is None:
        prices.price_set(model_id="demo:echo", input_per_million="0", output_per_million="0", context_window=8192)
    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    client = Client()
    client.force_login(user)
    cookie = client.cookies["sessionid"].value
    connections.close_all()

    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST")},
        "DATABASE_URL": database_url(),
        "DJANGO_SECRET_KEY": settings.SECRET_KEY,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DEMO_DELAY_MS": "200",
        "CELERY_TASK_ALWAYS_EAGER": "true",
    }
    output = tempfile.TemporaryFile()
    daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"]
    server = subprocess.Popen(daphne, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(port, server, timeout=60)
        except NotStarted:
            output.seek(0)
            raise AssertionError(output.read().decode(errors="replace")[-3000:]) from None
        yield port, server, conversation, cookie
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
        output.close()


async def _chat_through_sigterm(port: int, conversation_id, cookie: str, server: subprocess.Popen) -> list[dict]:
    """Streams until the third delta, stops the server, and returns every frame after that, until
    the server closes the socket."""
    origin = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"ws://127.0.0.1:{port}/ws/chat/{conversation_id}/", headers={"Origin": origin, "Cookie": f"sessionid={cookie}"}
    ) as ws:
        words = " ".join(f"word{n}" for n in range(200))
        await ws.send_json({"type": "user_message", "content": words, "client_id": str(uuid.uuid4())})
        deltas = 0
        while deltas < 3:
            frame = json.loads((await ws.receive(timeout=20)).data)
            deltas += frame["type"] == "delta"
        server.send_signal(signal.SIGTERM)
        after = []
        while True:
            message = await ws.receive(timeout=20)
            if message.type != aiohttp.WSMsgType.TEXT:
                return after
            after.append(json.loads(message.data))


def test_sigterm_ends_the_running_reply_before_the_process_exits(user, settings):
    with _daphne_with_a_conversation(user, settings) as (port, server, conversation, cookie):
        asyncio.run(_chat_through_sigterm(port, conversation.id, cookie, server))
        server.wait(timeout=20)

    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert reply.status == Message.Status.ERROR, reply.status  # not left "streaming" for the reaper
    assert reply.content.startswith("word0 word1") and reply.heartbeat_at is None  # the text so far, kept
    assert not Reservation.objects.filter(user=user).exclude(state="settled").exists()


def test_sigterm_tells_the_open_tab_how_its_reply_ended_before_closing_it(user, settings):
    """The README: the replies it ends are saved, billed "and the open tabs told". Daphne cancelled
    every socket's consumer as its shutdown began, so the tab heard nothing more: its reply froze
    mid-sentence for the grace period, then the socket dropped."""
    with _daphne_with_a_conversation(user, settings) as (port, server, conversation, cookie):
        after = asyncio.run(_chat_through_sigterm(port, conversation.id, cookie, server))
        server.wait(timeout=20)

    reply = Message.objects.get(conversation=conversation, role="assistant")
    kinds = [frame["type"] for frame in after]
    assert "delta" in kinds, kinds  # the grace period streams on
    # The reply's end, after its last delta: an error frame naming it (CONTRACT.md: "or after
    # start"), and a "done" saying so, if one comes.
    last_delta = max(i for i, kind in enumerate(kinds) if kind == "delta")
    ending = after[last_delta + 1 :]
    assert any(f["type"] == "error" and f["message_id"] == str(reply.id) and f["code"] == "provider_error" for f in ending), kinds
    assert all(f["finish_reason"] == "error" for f in ending if f["type"] == "done"), ending
