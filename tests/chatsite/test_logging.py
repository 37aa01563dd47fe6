"""Logging is configured once: every line carries a request id, and no password or secret
reaches the log, in text or JSON lines."""

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatsite.logging import JsonFormatter

ROOT = Path(__file__).resolve().parents[2]
SECRET_PASSWORD = "hunter2-very-secret-passphrase"


@pytest.fixture
def console_output():
    """The configured console handler, writing into a buffer for the test."""
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.filters)
    buffer = io.StringIO()
    old_stream = handler.setStream(buffer)
    old_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.INFO)
    yield handler, buffer
    handler.setStream(old_stream)
    logging.getLogger().setLevel(old_level)


def exercise(client) -> None:
    client.post("/accounts/login/", {"username": "alice", "password": SECRET_PASSWORD}, HTTP_X_REQUEST_ID="req-login-1")
    client.get("/accounts/login/")
    logging.getLogger("parley.test").warning("a key sk-abcdefghijklmnop1234 and password=%s", SECRET_PASSWORD)


@pytest.mark.django_db
def test_failed_login_and_requests_log_a_request_id_and_no_password(client, user, console_output):
    _handler, buffer = console_output
    exercise(client)
    lines = buffer.getvalue().strip().splitlines()
    assert len(lines) >= 3
    assert any("[req-login-1]" in line and "accounts/login/" in line for line in lines)
    for line in lines:
        assert SECRET_PASSWORD not in line
        assert "sk-abcdefghijklmnop1234" not in line
        # text format: "... LEVEL logger [request-id] message"
        assert " [" in line and "] " in line
    request_lines = [line for line in lines if "parley.request" in line]
    assert all("[-]" not in line for line in request_lines)


@pytest.mark.django_db
def test_each_request_line_names_the_route_as_a_path_the_front_page_included(client, console_output):
    """The chat page's route is the empty pattern: its line read "GET  302", naming nothing, and
    routes read "accounts/login/" beside static files' "/static/...". Each reads as a path."""
    _handler, buffer = console_output
    client.get("/")
    client.get("/accounts/login/")
    client.get("/c/00000000-0000-0000-0000-000000000000/")
    lines = [line for line in buffer.getvalue().splitlines() if "parley.request" in line]
    messages = [line.split("] ", 1)[1] for line in lines]
    assert messages[0].startswith("GET / 302 "), messages
    assert messages[1].startswith("GET /accounts/login/ 200 "), messages
    # The pattern, never the path itself (a path can hold a password-reset token).
    assert messages[2].startswith("GET /c/<uuid:conversation_id>/ 302 "), messages


@pytest.mark.django_db
def test_json_lines_parse_and_carry_the_request_id(client, user, console_output):
    handler, buffer = console_output
    old = handler.formatter
    handler.setFormatter(JsonFormatter())
    try:
        exercise(client)
    finally:
        handler.setFormatter(old)
    records = [json.loads(line) for line in buffer.getvalue().strip().splitlines()]
    assert records
    assert all(r["request_id"] for r in records)
    assert any(r["request_id"] == "req-login-1" and r["logger"] == "parley.request" for r in records)
    assert SECRET_PASSWORD not in buffer.getvalue()


def test_log_format_json_setting_writes_json_lines_to_stderr():
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"LOG_FORMAT": "json", "DJANGO_SECRET_KEY": "x" * 60})
    code = "import logging; logging.getLogger('parley.x').warning('password=%s ok', 'hunter2-very-secret-passphrase')"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert lines[-1]["logger"] == "parley.x" and lines[-1]["request_id"] == "-"
    assert SECRET_PASSWORD not in result.stderr


def test_request_id_from_the_proxy_is_echoed_and_a_bad_one_replaced(client):
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123").headers["X-Request-ID"] == "abc-123"
    replaced = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nwith newline").headers["X-Request-ID"]
    assert replaced != "bad id\nwith newline" and len(replaced) == 32
