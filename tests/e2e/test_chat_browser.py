"""A person chats in a real browser against a live server: send with the demo model, watch
it stream, stop one, reload and see the history."""

import os

import pytest

from .conftest import signed_in_context

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Playwright's sync API runs its own event loop; Django's async-safety check would see it.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")




def test_chat_in_the_browser(browser, live_server_url, make_user, artifacts):
    try:
        _chat_in_the_browser(browser, live_server_url, make_user, artifacts)
    except Exception:
        # What the person saw, for whoever reads the failure.
        for context in browser.contexts:
            for open_page in context.pages:
                open_page.screenshot(path=str(artifacts / "chat-failure.png"))
                print("messages:", open_page.inner_text("#messages"), "| error:", open_page.inner_text("#chat-error"))
        raise


def _chat_in_the_browser(browser, live_server_url, make_user, artifacts):
    user = make_user("carol")
    context = signed_in_context(browser, live_server_url, user, viewport={"width": 1200, "height": 800})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: print("console:", msg.text))
    page.goto(live_server_url + "/")

    picker = page.locator("#model-picker")
    assert "demo" in picker.locator("option:checked").inner_text().lower()

    # Send with Enter; the reply streams in, then is replaced by the rendered HTML with usage.
    page.fill("#message-input", "hello **world**")
    page.press("#message-input", "Enter")
    reply = page.locator(".message-assistant").first
    reply.locator(".message-meta").filter(has_text="tokens").wait_for()
    assert page.locator(".message-user").first.inner_text().endswith("hello **world**")
    # The real demo model echoes the message; the reply is rendered as Markdown.
    assert reply.locator(".message-body").inner_text().strip() == "hello world"
    assert reply.locator(".message-body strong").inner_text() == "world"
    assert "0.00" in reply.locator(".message-meta").inner_text()  # the demo model's price row is zero
    assert page.url.startswith(live_server_url + "/c/")

    # A long reply: watch it stream, then stop it.
    story = "tell me a long story " + " ".join(f"word{i}" for i in range(150))
    page.fill("#message-input", story)
    page.press("#message-input", "Enter")
    streaming = page.locator('.message-assistant[data-status="streaming"]')
    streaming.wait_for()
    page.wait_for_function(
        "() => { const b = document.querySelector('.message-assistant[data-status=\"streaming\"] .message-body');"
        " return b && b.textContent.length > 40; }"
    )
    assert page.locator("#stop-button").is_visible()
    page.click("#stop-button")
    stopped = page.locator('.message-assistant[data-status="cancelled"]')
    stopped.wait_for()
    stopped_text = stopped.locator(".message-body").inner_text()
    assert stopped_text.startswith("tell me a long story")
    assert len(stopped_text) < len(story)
    page.locator("#sidebar .conversation-item").first.filter(has_text="hello").wait_for()
    page.screenshot(path=str(artifacts / "chat.png"), full_page=True)

    # Reload: the history is there, with the stopped reply's text kept.
    page.reload()
    page.locator(".message-assistant").nth(1).wait_for()
    assert page.locator(".message-user").count() == 2
    assert page.locator(".message-assistant").count() == 2
    assert page.locator('.message-assistant[data-status="cancelled"] .message-body').inner_text() == stopped_text
    assert errors == []
    # The real ledger recorded both calls: the demo model's own token counts, at its zero price.
    from billing.models import UsageRecord

    rows = list(UsageRecord.objects.filter(user=user).order_by("created_at").values_list("model", "outcome", "cost", "input_tokens"))
    assert [(model, outcome) for model, outcome, _cost, _in in rows] == [("echo", "ok"), ("echo", "cancelled")]
    assert all(cost == 0 and tokens > 0 for _m, _o, cost, tokens in rows)

    # The same page on a phone-sized screen.
    phone = signed_in_context(browser, live_server_url, user, viewport={"width": 390, "height": 844}, is_mobile=True)
    phone_page = phone.new_page()
    phone_page.goto(page.url)
    phone_page.locator(".message-assistant").nth(1).wait_for()
    assert not phone_page.locator("#sidebar").is_visible() or phone_page.locator("#sidebar").bounding_box()["x"] < 0
    phone_page.screenshot(path=str(artifacts / "chat-phone.png"))
    phone.close()
    context.close()
