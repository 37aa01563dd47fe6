"""Stored XSS through model output, in a real Chromium against a live server.

The demo model echoes the user's message, so a message made of XSS payloads becomes a reply
made of them: it goes through the real turn, is stored, streamed, rendered by
conversations/markdown.py and rendered again from the database on reload. Neither the user's
message nor the reply may run script (the payloads set `window.__xss` instead of alerting, and
any dialog is recorded) or load anything from another address (every non-local request is
recorded and aborted). Run twice: as shipped, and with the browser told to ignore the
Content-Security-Policy, so the sanitizer is shown to hold on its own and not only behind it."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest
from django.test import Client

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Playwright's sync API runs its own event loop; Django's async-safety check would see it.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

OUTSIDE = "outside.example"
PAYLOADS = [
    "<img src=x onerror=\"window.__xss='img-onerror'\">",
    "<svg onload=\"window.__xss='svg-onload'\"><circle r=\"9\"></circle></svg>",
    "[a markdown link](javascript:window.__xss='md-javascript-link')",
    "<a href=\"javascript:window.__xss='html-javascript-link'\">an html link</a>",
    "<script>window.__xss='raw-script'</script>",
    f"![a tracking pixel](http://{OUTSIDE}/pixel.png)",
    f"<img src=\"https://{OUTSIDE}/raw.png\">",
    f"<iframe src=\"https://{OUTSIDE}/frame\"></iframe>",
    f"<style>body {{ background: url(https://{OUTSIDE}/bg.png) }}</style>",
    "[click](JaVaScRiPt:window.__xss='mixed-case-link')",
    "<a href=\"&#106;avascript:window.__xss='entity-link'\">entity link</a>",
]
MESSAGE = "\n\n".join(PAYLOADS)
DANGEROUS = (
    "#messages script, #messages img, #messages svg, #messages iframe, #messages style, #messages object,"
    " #messages embed, #messages [onerror], #messages [onload], #messages [onclick], #messages [style],"
    " #messages a[href^='javascript' i], #messages a[href*='script:' i]"
)
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _signed_in_context(browser, live_server_url, user, *, bypass_csp: bool):
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1100, "height": 1400}, bypass_csp=bypass_csp)
    context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": live_server_url}])
    return context


def _check_inert(page, fired: dict) -> None:
    # Let every image error, load and request the markup could start happen first.
    page.wait_for_load_state("networkidle")
    assert page.evaluate("() => window.__xss === undefined"), f"a payload ran: {page.evaluate('() => window.__xss')}"
    assert fired["dialogs"] == [], f"a dialog opened: {fired['dialogs']}"
    assert fired["outside"] == [], f"the page asked another address: {fired['outside']}"
    dangerous = page.evaluate(f"() => [...document.querySelectorAll(`{DANGEROUS}`)].map(e => e.outerHTML)")
    assert dangerous == [], f"live markup from the payload in the page: {dangerous}"


@pytest.mark.parametrize("csp", ["as-shipped", "ignored"])
def test_a_reply_made_of_xss_payloads_runs_nothing_and_loads_nothing(csp, browser, live_server_url, make_user, artifacts):
    user = make_user("xss-victim")
    # "ignored": Playwright's bypassCSP, the browser acts as if the page had sent no policy.
    context = _signed_in_context(browser, live_server_url, user, bypass_csp=csp == "ignored")
    fired: dict[str, list] = {"dialogs": [], "outside": []}

    def route(route_request):
        if urlsplit(route_request.request.url).hostname not in LOCAL_HOSTS:
            fired["outside"].append(route_request.request.url)
            return route_request.abort()
        return route_request.continue_()

    context.route("**/*", route)
    page = context.new_page()
    page.on("dialog", lambda dialog: (fired["dialogs"].append(dialog.message), dialog.dismiss()))
    page.goto(live_server_url + "/")
    assert page.evaluate("() => window.__xss === undefined")

    page.fill("#message-input", MESSAGE)
    page.press("#message-input", "Enter")
    reply = page.locator(".message-assistant").first
    try:
        reply.locator(".message-meta").filter(has_text="tokens").wait_for(timeout=20_000)
    except Exception:
        page.screenshot(path=str(artifacts / "xss-failure.png"), full_page=True)
        print("messages:", page.inner_text("#messages"), "| error:", page.inner_text("#chat-error"), fired)
        raise

    _check_inert(page, fired)
    # The payloads really made the round trip, and show as text.
    reply_text = reply.locator(".message-body").inner_text()
    assert "onerror" in reply_text and "raw-script" in reply_text and "onload" in reply_text
    assert "onerror" in page.locator(".message-user").first.inner_text()
    page.screenshot(path=str(artifacts / ("xss.png" if csp == "as-shipped" else "xss-csp-ignored.png")), full_page=True)

    # Re-rendered from the database.
    page.reload()
    page.locator(".message-assistant .message-body").first.wait_for()
    assert "raw-script" in page.locator(".message-assistant .message-body").first.inner_text()
    # Every link the reply kept is harmless: clicking them must not run anything.
    for link in page.locator(".message-assistant .message-body a").all():
        href = link.get_attribute("href") or ""
        assert href.startswith(("http://", "https://", "mailto:")), href
    _check_inert(page, fired)
    context.close()
