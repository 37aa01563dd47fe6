"""Canaries: a provider key, a password and a message text are pushed through every path they
take (the key command and the admin, a failed login, chat turns on the demo model and on the
openai adapter against the fake provider answering 401 and 429 with the key in its error body,
the conversation API and page, an export), with the whole process logging at DEBUG exactly as
LOG_LEVEL=DEBUG would configure it (and SQL logging switched on, as DJANGO_DEBUG=true would).
Then no log record, raw or as written by the console handler, holds a canary or a session id."""

from __future__ import annotations

import io
import logging
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from cryptography.fernet import Fernet
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import Client

from tests.fakeprovider.server import Script
from tests.logtext import record_text

CANARY_KEY_CLI = "sk-canary-cli-7d1f0a9be3c24c55"
CANARY_KEY_ADMIN = "sk-canary-admin-94e2b7c1d0f3aa18"
CANARY_PASSWORD = "canary-password-Zq8!rT2vW5"
CANARY_TEXT = "canary-message-text-3b9e41f7 about my private life"
PASSWORD = "correct horse battery 9"




@pytest.fixture
def debug_logs():
    """The root logger at DEBUG (what LOG_LEVEL=DEBUG sets; the pinned loggers keep their level),
    one handler seeing every raw record first, and one writing lines through the console
    handler's own filters and formatter, last."""
    import chatsite.asgi  # noqa: F401 - its first import re-runs django.setup(), which re-configures logging
    from chatsite.logging import RedactFilter, RequestIdFilter

    raw: list[str] = []

    class Raw(logging.Handler):
        def emit(self, record):
            raw.append(record_text(record))

    written = io.StringIO()
    console = logging.StreamHandler(written)
    console.addFilter(RequestIdFilter())
    console.addFilter(RedactFilter())
    console.setFormatter(logging.Formatter(settings.LOGGING["formatters"]["text"]["format"]))
    root = logging.getLogger()
    level = root.level
    grab = Raw(level=logging.DEBUG)
    root.setLevel(logging.DEBUG)
    root.handlers.insert(0, grab)
    root.addHandler(console)
    connection.force_debug_cursor = True
    try:
        yield raw, written
    finally:
        connection.force_debug_cursor = False
        root.removeHandler(grab)
        root.removeHandler(console)
        root.setLevel(level)


async def _chat(cookie: str, conversation_id: str, text: str) -> list[dict]:
    from chatsite.asgi import application
    from conversations import turns

    ws = WebsocketCommunicator(
        application,
        f"/ws/chat/{conversation_id}/",
        headers=[(b"origin", b"http://testserver"), (b"cookie", f"sessionid={cookie}".encode())],
    )
    connected, _ = await ws.connect(timeout=5)
    assert connected
    await ws.send_json_to({"type": "user_message", "content": text, "client_id": str(uuid.uuid4())})
    frames = []
    while not frames or frames[-1]["type"] not in {"done", "error"} or (
        frames[-1]["type"] == "error" and not any(f["type"] == "ack" for f in frames)
    ):
        frames.append(await ws.receive_json_from(timeout=20))
    await turns.replies_wait()
    await ws.disconnect()
    return frames


@pytest.mark.django_db(transaction=True)
def test_no_log_line_holds_a_key_password_session_id_or_message_text(debug_logs, make_user, fake_provider):
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    raw, written = debug_logs
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    settings.ALLOW_PRIVATE_BASE_URLS = True  # the fake provider listens on 127.0.0.1
    settings.DEMO_DELAY_MS = 0
    session_ids: list[str] = []

    # 1. A key from the command line (secret on stdin), and one through the admin.
    out = io.StringIO()
    call_command(
        "add_provider_key", "--provider", "openai", "--name", "canary-cli", "--key", "-",
        "--base-url", fake_provider.openai_base_url, "--priority", "1",
        stdin=io.StringIO(CANARY_KEY_CLI + "\n"), stdout=out, stderr=out,
    )
    make_user("root", password=PASSWORD, is_staff=True, is_superuser=True)
    admin = Client()
    assert admin.post("/accounts/login/", {"username": "root", "password": PASSWORD}).status_code == 302
    session_ids.append(admin.cookies["sessionid"].value)
    response = admin.post(
        "/admin/billing/providerkey/add/",
        {"name": "canary-admin", "provider": "openai", "secret": CANARY_KEY_ADMIN,
         "base_url": fake_provider.openai_base_url, "priority": "2", "state": "enabled"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    fake_provider.script(CANARY_KEY_CLI, Script(mode="error", status=401, error_type="invalid_request_error",
                                                code="invalid_api_key", message=f"Incorrect API key provided: {CANARY_KEY_CLI}."))
    fake_provider.script(CANARY_KEY_ADMIN, Script(mode="error", status=429, retry_after="30", error_type="rate_limit_error",
                                                  message=f"Rate limit reached for key {CANARY_KEY_ADMIN}"))

    # 2. A failed login with the canary password, then the real one.
    make_user("alice", password=PASSWORD)
    browser = Client()
    response = browser.post("/accounts/login/", {"username": "alice", "password": CANARY_PASSWORD})
    assert response.status_code == 200  # the form again, with an error
    assert browser.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
    cookie = browser.cookies["sessionid"].value
    session_ids.append(cookie)

    # 3. Chat turns whose message is the canary: the demo model, then openai (401, then 429).
    demo = browser.post("/api/v1/conversations/", {"model": "demo:echo"}, content_type="application/json").json()
    frames = async_to_sync(_chat)(cookie, demo["id"], CANARY_TEXT)
    assert frames[-1]["type"] == "done"
    paid = browser.post("/api/v1/conversations/", {"model": "openai:gpt-4o-mini"}, content_type="application/json").json()
    frames = async_to_sync(_chat)(cookie, paid["id"], CANARY_TEXT + " again")
    assert frames[-1]["type"] == "error", frames
    assert {r.key for r in fake_provider.requests} == {CANARY_KEY_CLI, CANARY_KEY_ADMIN}  # both really called

    # 4. Reading it back (API, page, Markdown download) and an export.
    assert CANARY_TEXT in browser.get(f"/api/v1/conversations/{demo['id']}/").content.decode()
    assert browser.get(f"/c/{demo['id']}/").status_code == 200
    assert browser.get(f"/api/v1/conversations/{demo['id']}/export.md").status_code == 200
    started = browser.post("/api/v1/account/export/", content_type="application/json")
    assert started.status_code == 202
    status = browser.get(f"/api/v1/account/export/{started.json()['export_id']}/").json()
    assert status["status"] == "ready", status
    download = browser.get(status["download_url"])
    assert download.status_code == 200

    # The net caught real traffic (requests, SQL would have been here if its logger were not pinned).
    lines = written.getvalue().splitlines()
    assert len(raw) > 20 and any("parley.request" in line for line in lines)
    for canary in (CANARY_KEY_CLI, CANARY_KEY_ADMIN, CANARY_PASSWORD, CANARY_TEXT.split()[0], *session_ids):
        leaked_raw = [t for t in raw if canary in t]
        assert not leaked_raw, f"{canary[:14]}… reached a log record: {leaked_raw[0][:600]}"
        leaked = [line for line in lines if canary in line]
        assert not leaked, f"{canary[:14]}… was written to the log: {leaked[0][:600]}"
