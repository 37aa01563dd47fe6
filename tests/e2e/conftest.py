"""A live Daphne server on a free port serving the test database, and a real Chromium.

The server is a forked process (daphne.testing.DaphneProcess, as channels'
ChannelsLiveServerTestCase does): it inherits this process's settings. Nothing is stood in: the
browser chats with the real demo adapter (`demo:echo`, priced 0 as the seed prices it) through
the real turn, prices, budgets, rate limits and ledger. With SQLite the test database is a
file, so the server reads what the test writes."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
from django.db import connections

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def _application():
    from channels.routing import get_default_application
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    return ASGIStaticFilesHandler(get_default_application())


def _use_test_database():
    """Runs in the forked server before it serves."""
    from concurrent.futures import ThreadPoolExecutor

    from asgiref.sync import SyncToAsync
    from django.conf import settings

    # The parent's ORM thread (asgiref's single thread executor) does not survive the fork; an
    # executor that believes it still has it would queue every database call forever.
    SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)

    test_name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if test_name:
        settings.DATABASES["default"]["NAME"] = test_name


def _demo_priced() -> None:
    """A transactional test starts from an empty database: put back the seed's demo price."""
    from billing import prices

    if prices.price_for(model_id="demo:echo") is None:
        prices.price_set(model_id="demo:echo", input_per_million="0", output_per_million="0", context_window=8192)


@pytest.fixture
def live_server_url(transactional_db, settings):
    from daphne.testing import DaphneProcess

    settings.DEMO_DELAY_MS = 30  # the demo reply streams visibly, word by word
    _demo_priced()
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost", "127.0.0.1"]
    # No open connection may cross the fork: SQLite's, and PostgreSQL's pool, whose idle
    # connections the server would otherwise share with this process (two processes speaking on
    # one socket: "the last operation didn't produce records (command status: BEGIN)").
    connections.close_all()
    for connection in connections.all():
        if hasattr(connection, "close_pool"):
            connection.close_pool()
    process = DaphneProcess("127.0.0.1", partial(_application), setup=_use_test_database)
    process.start()
    try:
        if not process.ready.wait(timeout=30):
            raise RuntimeError("the Daphne test server did not start")
        yield f"http://127.0.0.1:{process.port.value}"
    finally:
        process.terminate()
        process.join(timeout=10)


@pytest.fixture
def browser(needs_chromium):
    from playwright.sync_api import sync_playwright

    chromium = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def signed_in_context(browser, live_server_url, user, **options):
    """A browser context carrying `user`'s session cookie (signed in without the login form)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    context = browser.new_context(**options)
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server_url}])
    return context


def finished_replies(page):
    """The replies whose meta line shows their token counts: the finished ones."""
    return page.locator(".message-assistant .message-meta").filter(has_text="tokens")


def send(page, text: str) -> None:
    """Type `text` into the chat's input and press Enter, as a person sends a message."""
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")
