"""The chat page when things go wrong under a person's hands: the socket drops mid-reply, a
Korean input method confirms a syllable with Enter, another tab changes the conversation."""

import json
import os
import time

import pytest
from playwright.sync_api import expect

from .conftest import finished_replies, send, signed_in_context

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

DESKTOP = {"viewport": {"width": 1280, "height": 800}}

# Keeps every socket the page opens as window.__sockets, and every text the streaming reply
# showed as window.__shown (the body of the last assistant message, at each change).
WATCH = """
  window.__sockets = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) { super(...args); window.__sockets.push(this); }
  };
  window.__shown = [];
  document.addEventListener("DOMContentLoaded", () => {
    new MutationObserver(() => {
      const bodies = document.querySelectorAll(".message-assistant .message-body");
      const last = bodies[bodies.length - 1];
      const node = last && last.closest(".message");
      if (node && node.dataset.status === "streaming") window.__shown.push(last.textContent);
    }).observe(document.getElementById("messages"), {childList: true, subtree: true, characterData: true, attributes: true});
  });
"""


def _watched_page(browser, live_server_url, user, path: str = "/"):
    """A signed-in desktop chat page at `path` whose sockets (window.__sockets) and streamed text
    (window.__shown) the test can reach (page.context opens other tabs of the same browser)."""
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.add_init_script(WATCH)
    page.goto(live_server_url + path)
    return page


def test_a_dropped_socket_resumes_the_reply_with_no_text_missing(browser, live_server_url, make_user):
    user = make_user("drop")
    page = _watched_page(browser, live_server_url, user)
    text = " ".join(f"w{i}" for i in range(80))
    send(page, text)
    expect(page.locator(".message-assistant .message-body")).to_contain_text("w10 ")
    page.evaluate("() => window.__sockets[window.__sockets.length - 1].close()")  # the network blips
    finished_replies(page).first.wait_for(timeout=20_000)
    assert page.evaluate("() => window.__sockets.length") >= 2  # it did reconnect
    shown = page.evaluate("() => window.__shown")
    assert shown
    wrong = [s for s in shown if not text.startswith(s)]
    assert wrong == [], wrong[:3]
    expect(page.locator(".message-assistant .message-body")).to_have_text(text)


def test_a_message_sent_while_the_socket_is_down_stays_shown_and_goes_out_once(browser, live_server_url, make_user):
    from conversations.models import Message

    user = make_user("offline-send")
    page = _watched_page(browser, live_server_url, user)
    send(page, "first")
    finished_replies(page).first.wait_for()
    page.evaluate("""() => {
      window.__seen = false; window.__vanished = 0;
      new MutationObserver(() => {
        const shown = [...document.querySelectorAll(".message-user")].some((n) => n.textContent.includes("written while offline"));
        if (shown) window.__seen = true;
        else if (window.__seen) window.__vanished += 1;
      }).observe(document.getElementById("messages"), {childList: true, subtree: true});
      window.__sockets[window.__sockets.length - 1].close();  // the network blips
    }""")
    send(page, "written while offline")
    finished_replies(page).nth(1).wait_for(timeout=20_000)
    assert page.evaluate("() => window.__seen")
    assert page.evaluate("() => window.__vanished") == 0  # shown from the moment it was sent
    expect(page.locator(".message-user")).to_have_count(2)
    assert Message.objects.filter(conversation__owner=user, role="user").count() == 2


def test_a_late_reload_read_before_the_resent_message_was_saved_hides_nothing(browser, live_server_url, make_user):
    """After a reconnect the page asks for the conversation again while it resends what the
    socket did not take. On a loaded server that answer can be read before the message is saved
    and arrive after its ack and its reply's first words: both stay shown, not blink out."""
    user = make_user("late-reload")
    page = _watched_page(browser, live_server_url, user)
    send(page, "first")
    finished_replies(page).first.wait_for()
    conversation_id = page.evaluate("() => location.pathname.split('/')[2]")
    url = f"/api/v1/conversations/{conversation_id}/"
    stale = page.evaluate("(url) => fetch(url).then((r) => r.text())", url)  # before the resend
    held = []
    page.route(f"**{url}", lambda route: held.append(route) if not held else route.continue_())
    page.evaluate("""() => {
      window.__vanished = 0; window.__shown = [];
      const shown = () => [...document.querySelectorAll(".message-user")].some((n) => n.textContent.includes("again w0 w1"))
        && document.querySelectorAll(".message-assistant").length === 2;
      let seen = false;
      new MutationObserver(() => {
        if (shown()) seen = true;
        else if (seen) window.__vanished += 1;
      }).observe(document.getElementById("messages"), {childList: true, subtree: true});
      window.__sockets[window.__sockets.length - 1].close();  // the network blips
    }""")
    text = "again " + " ".join(f"w{i}" for i in range(150))
    send(page, text)
    expect(page.locator(".message-assistant .message-body").nth(1)).to_contain_text("w3 ")  # acked, streaming
    assert len(held) == 1  # the reconnect's reload, unanswered so far
    held[0].fulfill(status=200, content_type="application/json", body=stale)
    finished_replies(page).nth(1).wait_for(timeout=20_000)
    assert page.evaluate("() => window.__vanished") == 0
    shown = page.evaluate("() => window.__shown")
    assert shown and [s for s in shown if not text.startswith(s)] == []
    expect(page.locator(".message-user")).to_have_count(2)


def test_a_second_tab_shows_the_question_with_the_reply_it_streams(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("two-tabs")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Shared")
    context = signed_in_context(browser, live_server_url, user, **DESKTOP)
    first, second = context.new_page(), context.new_page()
    for page in (first, second):
        page.goto(f"{live_server_url}/c/{conversation.id}/")
        expect(page.locator("#connection-status")).to_have_text("Connected")
    question = "asked in the first tab " + " ".join(f"w{i}" for i in range(60))
    send(first, question)
    # While the reply still streams, the other tab shows what it answers, above it.
    expect(second.locator(".message-assistant[data-status=streaming]")).to_have_count(1)
    expect(second.locator(".message-user")).to_have_text([f"You{question}"], timeout=1500)
    assert second.locator(".message-assistant[data-status=streaming]").count() == 1
    expect(second.locator(".message").first).to_have_class("message message-user")


def test_the_sidebar_reaches_conversations_past_the_first_page(browser, live_server_url, make_user):
    from conversations.api import PAGE_SIZE
    from conversations.models import Conversation

    user = make_user("many-chats")
    Conversation.objects.bulk_create(
        [Conversation(owner=user, model="demo:echo", title=f"대화 {i}") for i in range(PAGE_SIZE + 5)]
    )
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    expect(page.locator("#conversation-list li.conversation-item")).to_have_count(PAGE_SIZE)
    page.locator("#conversation-list button", has_text="Show more").click()
    expect(page.locator("#conversation-list li.conversation-item")).to_have_count(PAGE_SIZE + 5)
    expect(page.locator("#conversation-list button", has_text="Show more")).to_have_count(0)
    titles = page.locator("#conversation-list li.conversation-item a").all_inner_texts()
    assert len(set(titles)) == PAGE_SIZE + 5


def test_settings_take_a_temperature_to_the_hundredth_as_the_server_does(browser, live_server_url, make_user):
    from decimal import Decimal

    from conversations.models import Conversation

    user = make_user("temperature")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="T", temperature=Decimal("0.75"))
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    page.click("#settings-toggle")
    expect(page.locator("#temperature")).to_have_value("0.75")
    page.fill("#system-prompt", "Answer in Korean.")
    page.click("#settings-panel button[type=submit]")
    expect(page.locator("#settings-error")).to_have_text("Settings saved.")
    page.fill("#temperature", "0.35")
    page.click("#settings-panel button[type=submit]")
    expect(page.locator("#settings-error")).to_have_text("Settings saved.")
    conversation.refresh_from_db()
    assert (conversation.system_prompt, conversation.temperature) == ("Answer in Korean.", Decimal("0.35"))


def test_enter_while_a_reply_is_written_keeps_the_next_message_in_the_input(browser, live_server_url, make_user):
    from conversations.models import Message

    user = make_user("busy")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    send(page, " ".join(f"w{i}" for i in range(100)))
    expect(page.locator(".message-assistant[data-status=streaming]")).to_have_count(1)
    # Typed while the answer streams, and sent out of habit: refused on the page, not saved as a
    # question that no reply will ever answer.
    send(page, "다음 질문")
    expect(page.locator("#chat-error")).to_have_text("A reply is already being written in this conversation.")
    expect(page.locator("#message-input")).to_have_value("다음 질문")
    expect(page.locator(".message-user")).to_have_count(1)
    finished_replies(page).first.wait_for(timeout=20_000)
    assert Message.objects.filter(conversation__owner=user, role="user").count() == 1
    # Once the reply is done it goes out as usual.
    page.press("#message-input", "Enter")
    finished_replies(page).nth(1).wait_for()
    assert page.locator("#chat-error").is_hidden()
    assert Message.objects.filter(conversation__owner=user, role="user").count() == 2


def test_copy_works_on_a_plain_http_address_without_the_clipboard_api(browser, live_server_url, make_user):
    # Served at http://<LAN address>:8000 a page is not a secure context: navigator.clipboard
    # does not exist there. The copy button must still copy.
    user = make_user("copy-http")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.add_init_script("""
      Object.defineProperty(Navigator.prototype, "clipboard", {get: () => undefined});
      window.__copied = [];
      const exec = document.execCommand.bind(document);
      document.execCommand = (command, ...rest) => {
        if (command === "copy") window.__copied.push(String(window.getSelection()) || document.activeElement.value);
        return exec(command, ...rest);
      };
    """)
    page.goto(live_server_url + "/")
    send(page, "```\nprint('안녕')\n```")
    finished_replies(page).first.wait_for()
    page.click(".message-assistant .copy-code")
    expect(page.locator(".message-assistant .copy-code")).to_have_text("Copied")
    assert page.evaluate("() => window.__copied") == ["print('안녕')\n"]


def test_copy_puts_the_code_alone_on_the_clipboard(browser, live_server_url, make_user):
    user = make_user("copy-https")
    context = signed_in_context(browser, live_server_url, user, **DESKTOP)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server_url)
    page = context.new_page()
    page.goto(live_server_url + "/")
    send(page, "```\nprint('안녕')\n```")
    finished_replies(page).first.wait_for()
    page.click(".message-assistant .copy-code")
    expect(page.locator(".message-assistant .copy-code")).to_have_text("Copied")
    assert page.evaluate("() => navigator.clipboard.readText()") == "print('안녕')\n"  # not the button's label


def test_the_sidebar_filter_shows_the_last_query_typed_even_if_an_earlier_answer_comes_last(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("filter")
    for title in ("회의 준비", "회의록 정리", "점심 메뉴"):
        Conversation.objects.create(owner=user, model="demo:echo", title=title)
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    held = []

    def hold_the_first_query(route):
        if not held:
            held.append((route, route.fetch()))  # answered later, after the second query's answer
        else:
            route.continue_()

    page.route("**/api/v1/conversations/?q=*", hold_the_first_query)
    page.goto(live_server_url + "/")
    page.fill("#conversation-filter", "회의")
    page.wait_for_timeout(600)  # past the 200 ms pause: the first query went out
    page.fill("#conversation-filter", "회의록")
    expect(page.locator("#conversation-list li.conversation-item")).to_have_count(1)
    route, response = held[0]
    route.fulfill(response=response)
    page.wait_for_timeout(500)
    assert page.locator("#conversation-list li.conversation-item a").all_inner_texts() == ["회의록 정리"]


def test_stop_clicked_while_the_socket_reconnects_still_stops_the_reply(browser, live_server_url, make_user):
    from conversations.models import Message

    user = make_user("stop-blip")
    page = _watched_page(browser, live_server_url, user)
    send(page, " ".join(f"w{i}" for i in range(200)))
    expect(page.locator(".message-assistant .message-body")).to_contain_text("w5 ")
    # The network blips and the person clicks Stop before the page is connected again: the reply
    # (and what it costs) must still end, not run on because the click fell between two sockets.
    page.evaluate("""() => {
      window.__sockets[window.__sockets.length - 1].close();
      document.getElementById("stop-button").click();
    }""")
    finished_replies(page).first.wait_for(timeout=20_000)
    expect(page.locator(".message-assistant .message-meta")).to_contain_text("Stopped.")
    reply = Message.objects.get(conversation__owner=user, role="assistant")
    assert (reply.status, reply.finish_reason) == ("cancelled", "cancelled")


def test_regenerate_clicked_while_the_socket_reconnects_still_asks_again(browser, live_server_url, make_user):
    from conversations.models import Message

    user = make_user("regen-blip")
    page = _watched_page(browser, live_server_url, user)
    send(page, "say it twice")
    finished_replies(page).first.wait_for()
    page.evaluate("""() => {
      window.__sockets[window.__sockets.length - 1].close();
      document.getElementById("regenerate-button").click();
    }""")
    finished_replies(page).nth(1).wait_for(timeout=20_000)
    assert Message.objects.filter(conversation__owner=user, role="assistant").count() == 2


def _given_back_and_no_reconnect(page, text: str) -> None:
    """What a tab that cannot send any more does with what was written meanwhile: the text is
    not left in a bubble that will never be sent, it is back in the input; and the page stops
    knocking on a door that is gone (no socket is opened again)."""
    expect(page.locator(".message-user")).to_have_count(0)
    expect(page.locator("#message-input")).to_have_value(text)
    sockets = page.evaluate("() => window.__sockets.length")
    page.wait_for_timeout(4000)
    assert page.evaluate("() => window.__sockets.length") == sockets


def test_a_tab_whose_conversation_was_deleted_elsewhere_says_so_instead_of_reconnecting(browser, live_server_url, make_user):
    from conversations.models import Conversation, Message

    user = make_user("gone")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="To be deleted")
    page = _watched_page(browser, live_server_url, user, f"/c/{conversation.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")
    other = page.context.new_page()
    other.goto(page.url)
    other.once("dialog", lambda dialog: dialog.accept())
    other.locator("#conversation-list li.active button", has_text="Delete").click()
    other.wait_for_url(live_server_url + "/")
    # Later the network blips, and the person writes while the page is reconnecting.
    page.evaluate("() => window.__sockets[window.__sockets.length - 1].close()")
    send(page, "written after the blip")
    expect(page.locator("#chat-error")).to_have_text("This conversation no longer exists.")
    expect(page.locator("#conversation-list li.conversation-item")).to_have_count(0)
    _given_back_and_no_reconnect(page, "written after the blip")
    assert not Message.objects.filter(conversation__owner=user).exists()


def test_a_streaming_reply_leaves_the_view_where_the_person_scrolled_up_to_read(browser, live_server_url, make_user):
    user = make_user("reading")
    page = signed_in_context(browser, live_server_url, user, viewport={"width": 1280, "height": 600}).new_page()
    page.goto(live_server_url + "/")
    paragraphs = [f"paragraph {i} " + "word " * 15 for i in range(30)]
    send(page, "\n\n".join(paragraphs))
    reply = page.locator(".message-assistant .message-body")
    expect(reply).to_contain_text("paragraph 3 ", timeout=20_000)
    # While the person follows the reply at the bottom, the view follows it.
    assert page.evaluate("() => { const m = document.getElementById('messages'); return m.scrollHeight - m.scrollTop - m.clientHeight; }") < 40
    # Scrolled up to read the question: more text arrives, and the view stays where they read.
    page.evaluate("() => { document.getElementById('messages').scrollTop = 0; }")
    expect(reply).to_contain_text("paragraph 12 ", timeout=20_000)
    assert page.evaluate("() => document.getElementById('messages').scrollTop") == 0
    finished_replies(page).first.wait_for(timeout=60_000)
    expect(reply).to_contain_text("paragraph 29 ")
    assert page.evaluate("() => document.getElementById('messages').scrollTop") == 0


def test_a_sidebar_filter_that_cannot_reach_the_server_says_so(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("filter-offline")
    for title in ("회의 준비", "점심 메뉴"):
        Conversation.objects.create(owner=user, model="demo:echo", title=title)
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_server_url + "/")
    page.route("**/api/v1/conversations/?q=*", lambda route: route.abort())  # the network drops
    page.fill("#conversation-filter", "회의")
    # Not a list that silently stays unfiltered, as if nothing matched the filter.
    expect(page.locator("#chat-error")).to_have_text("The server cannot be reached. Check your connection and try again.")
    page.unroute("**/api/v1/conversations/?q=*")
    page.fill("#conversation-filter", "회의 ")
    expect(page.locator("#conversation-list li.conversation-item")).to_have_count(1)
    expect(page.locator("#chat-error")).to_be_hidden()
    assert errors == []


def test_a_tab_whose_session_ended_during_a_blip_says_so_and_stops_reconnecting(browser, live_server_url, make_user):
    from django.contrib.auth import get_user_model

    from conversations.models import Conversation, Message

    user = make_user("session-ended")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Open")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.add_init_script(WATCH)
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")
    # The session ends where this tab's socket cannot hear it (the account disabled by an
    # update that sends no signal, or a sign-out while the network was down); then the network
    # blips and the person writes while the page reconnects.
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    page.evaluate("() => window.__sockets[window.__sockets.length - 1].close()")
    send(page, "written after the session ended")
    expect(page.locator("#chat-error")).to_contain_text("You were signed out.")
    link = page.locator("#chat-error a")
    expect(link).to_have_text("Log in")
    assert link.get_attribute("href") == f"/accounts/login/?next=/c/{conversation.id}/"
    _given_back_and_no_reconnect(page, "written after the session ended")
    assert not Message.objects.filter(conversation__owner=user).exists()


def test_signing_out_in_another_tab_keeps_the_text_being_written_here(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("signed-out-elsewhere")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Open")
    page = _watched_page(browser, live_server_url, user, f"/c/{conversation.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")
    page.fill("#message-input", "a long draft, half written")
    other = page.context.new_page()
    other.goto(live_server_url + "/")
    other.click(".site-nav button[type=submit]")  # Log out
    other.wait_for_url("**/accounts/login/")
    # This tab hears it on its socket: it says so where it is, rather than reloading the draft away.
    expect(page.locator("#chat-error")).to_contain_text("You were signed out.")
    expect(page.locator("#chat-error a")).to_have_text("Log in")
    assert page.url == f"{live_server_url}/c/{conversation.id}/"
    expect(page.locator("#message-input")).to_have_value("a long draft, half written")
    sockets = page.evaluate("() => window.__sockets.length")
    page.wait_for_timeout(3000)
    assert page.evaluate("() => window.__sockets.length") == sockets


def test_enter_that_confirms_a_syllable_in_safari_sends_nothing(browser, live_server_url, make_user):
    # Safari ends a Korean (or Japanese) composition with an Enter whose keydown says
    # isComposing false but keyCode 229: that Enter picks the syllable; it does not send.
    from conversations.models import Conversation

    user = make_user("ime-safari")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    page.fill("#message-input", "안녕")
    sent = page.evaluate("""() => {
      const input = document.getElementById("message-input");
      const event = new KeyboardEvent("keydown", {key: "Enter", code: "Enter", bubbles: true, cancelable: true});
      Object.defineProperty(event, "keyCode", {get: () => 229});
      return input.dispatchEvent(event);
    }""")
    assert sent is True  # not prevented: the input method keeps its Enter
    page.wait_for_timeout(500)
    expect(page.locator("#message-input")).to_have_value("안녕")
    expect(page.locator(".message-user")).to_have_count(0)
    assert not Conversation.objects.filter(owner=user).exists()
    # The Enter after the composition sends as always.
    page.press("#message-input", "Enter")
    finished_replies(page).first.wait_for()
    assert page.locator(".message-user").inner_text().endswith("안녕")


def _sent_then_signed_out_before_the_ack(browser, live_server_url, user, text: str):
    """A tab sends `text`; the server saves it, but from its "ack" on nothing more reaches the tab
    (the network stalls); then the person signs out in another tab. The tab hears the sign-out
    (the close, 4401, still arrives), gives the text back into the input, and its "Log in" link
    takes the person through the login form and back to the conversation."""
    from conversations.models import Conversation, Message

    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Open")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()

    network = {"stalls": True}  # the first socket's network; the next page load has a sound one

    def stall_from_the_ack(ws):
        server = ws.connect_to_server()
        if not network["stalls"]:
            return  # every frame passes
        network["stalls"] = False
        stalled = []

        def relay(message):
            if json.loads(message)["type"] == "ack":
                stalled.append(message)
            if not stalled:
                ws.send(message)

        server.on_message(relay)

    page.route_web_socket("**/ws/chat/**", stall_from_the_ack)
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")
    send(page, text)
    _wait_until(lambda: Message.objects.filter(conversation=conversation, role="assistant", status="done").exists())
    other = page.context.new_page()
    other.goto(live_server_url + "/")
    other.click(".site-nav button[type=submit]")  # Log out
    expect(page.locator("#chat-error")).to_contain_text("You were signed out.")
    expect(page.locator("#message-input")).to_have_value(text)
    page.click("#chat-error a")  # Log in
    page.fill("#id_username", user.username)
    page.fill("#id_password", "correct horse battery 9")
    page.press("#id_password", "Enter")
    page.wait_for_url(f"{live_server_url}/c/{conversation.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")
    return page, conversation


def _wait_until(condition, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_message_saved_but_never_acknowledged_is_saved_once_when_sent_again_after_signing_in(browser, live_server_url, make_user):
    from conversations.models import Message

    user = make_user("lost-ack")
    text = "saved, but the tab never heard so"
    page, conversation = _sent_then_signed_out_before_the_ack(browser, live_server_url, user, text)
    # Back on the conversation, the text waits in the input as the tab gave it back; the person
    # sends it again, not knowing it was saved.
    expect(page.locator("#message-input")).to_have_value(text)
    page.press("#message-input", "Enter")
    expect(page.locator(".message-user[data-id^=pending-]")).to_have_count(0)  # acknowledged
    expect(page.locator(".message-user")).to_have_count(1)
    assert list(Message.objects.filter(conversation=conversation, role="user").values_list("content", flat=True)) == [text]
    page.wait_for_timeout(1000)  # a second reply, had one started, would be under way by now
    assert Message.objects.filter(conversation=conversation).count() == 2
    expect(page.locator(".message-user")).to_have_count(1)
    expect(page.locator(".message-assistant")).to_have_count(1)


def test_the_given_back_text_once_edited_is_a_new_message(browser, live_server_url, make_user):
    from conversations.models import Message

    user = make_user("lost-ack-edited")
    text = "saved, but the tab never heard so"
    page, conversation = _sent_then_signed_out_before_the_ack(browser, live_server_url, user, text)
    page.fill("#message-input", text + ", and more")
    page.press("#message-input", "Enter")
    finished_replies(page).nth(1).wait_for(timeout=20_000)
    assert list(Message.objects.filter(conversation=conversation, role="user").order_by("created_at").values_list("content", flat=True)) == [
        text, text + ", and more"
    ]
    expect(page.locator(".message-user")).to_have_count(2)


def test_a_message_whose_ack_is_lost_on_an_open_socket_shows_once_after_its_reply(browser, live_server_url, make_user):
    """The server saved the message and answered it, but its ack never reached the tab (the
    socket stayed open). When the reply's end reloads the conversation, the message is there
    once, as saved."""
    from conversations.models import Message

    user = make_user("ack-lost-open")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    dropped = []

    def drop_the_ack(ws):
        server = ws.connect_to_server()

        def relay(message):
            if json.loads(message)["type"] == "ack" and not dropped:
                dropped.append(message)
                return
            ws.send(message)

        server.on_message(relay)

    page.route_web_socket("**/ws/chat/**", drop_the_ack)
    page.goto(live_server_url + "/")
    send(page, "asked once")
    finished_replies(page).first.wait_for(timeout=20_000)
    assert dropped  # the ack was sent by the server, and lost
    expect(page.locator(".message-user[data-id^=pending-]")).to_have_count(0)
    expect(page.locator(".message-user")).to_have_count(1)
    saved = Message.objects.get(role="user")
    expect(page.locator(".message-user")).to_have_attribute("data-id", str(saved.id))
    send(page, "asked next")
    finished_replies(page).nth(1).wait_for(timeout=20_000)
    assert list(Message.objects.filter(role="user").order_by("created_at").values_list("content", flat=True)) == [
        "asked once", "asked next"
    ]
    expect(page.locator(".message-user")).to_have_count(2)


def test_a_delta_delivered_twice_is_shown_once(browser, live_server_url, make_user):
    """A frame can reach the page twice (the channel layer retries a publish on a fresh Redis
    connection when the old one broke; a network path can repeat). Each delta carries its seq:
    the text being written never shows a piece twice, not even until the reply's final reload."""
    user = make_user("twice")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.add_init_script(WATCH)

    def repeat_deltas(ws):
        server = ws.connect_to_server()

        def relay(message):
            ws.send(message)
            if json.loads(message)["type"] == "delta":
                ws.send(message)

        server.on_message(relay)

    page.route_web_socket("**/ws/chat/**", repeat_deltas)
    page.goto(live_server_url + "/")
    text = " ".join(f"w{i}" for i in range(30))
    send(page, text)
    finished_replies(page).first.wait_for(timeout=20_000)
    shown = page.evaluate("() => window.__shown")
    assert shown
    wrong = [s for s in shown if not text.startswith(s)]
    assert wrong == [], wrong[:3]
