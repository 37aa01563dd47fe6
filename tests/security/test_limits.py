"""Abuse limits on HTTP: request bodies are capped before Django reads them (through the whole
ASGI application, the way Daphne calls it). The websocket caps are in test_websocket.py, the
login lockout in tests/accounts/test_login.py, rate limits and budgets in tests/billing/."""

from __future__ import annotations

import asyncio
import json

import pytest

TEN_MB = 10 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def app():
    from chatsite.asgi import application

    return application


async def call(app, method: str, path: str, *, body_size: int, declare_length: bool = True, headers=()):
    """One HTTP request through the ASGI app. Returns (status, headers, body, bytes the app read)."""
    scope_headers = [(b"host", b"testserver"), *headers]
    if declare_length:
        scope_headers.append((b"content-length", str(body_size).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": scope_headers,
        "client": ("127.0.0.1", 40000),
        "server": ("testserver", 80),
    }
    state = {"sent": 0, "done": False}

    async def receive():
        if state["done"]:
            await asyncio.Event().wait()  # the client waits for the answer (Django listens for a disconnect)
        if state["sent"] >= body_size:
            state["done"] = True
            return {"type": "http.request", "body": b"", "more_body": False}
        n = min(CHUNK, body_size - state["sent"])
        state["sent"] += n
        state["done"] = state["sent"] >= body_size
        return {"type": "http.request", "body": b"a" * n, "more_body": state["sent"] < body_size}

    messages = []

    async def send(message):
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, state["sent"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_a_10_mb_body_to_the_api_is_413_json_without_reading_it(app, declare_length, settings):
    status, headers, body, read = await call(
        app, "POST", "/api/v1/conversations/", body_size=TEN_MB, declare_length=declare_length,
        headers=[(b"content-type", b"application/json")],
    )
    assert status == 413
    assert headers[b"content-type"] == b"application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "too_large" and error["message"]
    # Declared: not a byte read. Chunked: stopped at the first chunk past the cap.
    assert read == (0 if declare_length else settings.DATA_UPLOAD_MAX_MEMORY_SIZE + CHUNK - settings.DATA_UPLOAD_MAX_MEMORY_SIZE % CHUNK)
    assert read < TEN_MB


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_a_10_mb_form_post_is_413_as_a_plain_page(app, declare_length):
    status, headers, body, read = await call(
        app, "POST", "/accounts/login/", body_size=TEN_MB, declare_length=declare_length,
        headers=[(b"content-type", b"application/x-www-form-urlencoded"), (b"accept-language", b"ko")],
    )
    assert status == 413 and read < TEN_MB
    assert headers[b"content-type"].startswith(b"text/html")
    assert b"<script" not in body.lower()
    assert b"lang=\"ko\"" in body  # in the language the browser asked for
    assert headers[b"x-content-type-options"] == b"nosniff"


@pytest.mark.django_db(transaction=True)
async def test_a_body_under_the_cap_reaches_django(app):
    # Anonymous: the API answers 401 JSON, which proves the body went through to the view.
    for declare_length in (True, False):
        status, _h, body, _read = await call(
            app, "POST", "/api/v1/conversations/", body_size=100, declare_length=declare_length,
            headers=[(b"content-type", b"application/json")],
        )
        assert status == 401 and json.loads(body)["error"]["code"] == "not_authenticated"


@pytest.mark.django_db(transaction=True)
async def test_a_malformed_content_length_is_refused(app):
    scope_headers = [(b"content-length", b"12abc")]
    status, _h, _b, read = await call(app, "POST", "/api/v1/conversations/", body_size=10, declare_length=False, headers=scope_headers)
    assert status == 413 and read == 0


@pytest.mark.django_db
def test_a_message_over_max_message_chars_is_refused_by_the_api_too(client, user, settings):
    """The system prompt, the API's only long text, has the same cap as a message (the socket's
    message cap is tested in tests/conversations/test_consumers.py)."""
    client.force_login(user)
    response = client.post(
        "/api/v1/conversations/",
        json.dumps({"system_prompt": "x" * (settings.MAX_MESSAGE_CHARS + 1)}),
        content_type="application/json",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"
