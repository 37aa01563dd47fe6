"""The chat page's layout and behaviour in a real browser: the message column, sending once,
titles reaching the sidebar and the tab, the phone's slide-over list, a refused message, the
usage tables on a phone, and the message length counted as the server counts it."""

import os
import time

import pytest
from playwright.sync_api import expect

from .conftest import finished_replies, send, signed_in_context

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Playwright's sync API runs its own event loop; Django's async-safety check would see it.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

# reduced_motion: the phone's slide-over list moves without a transition, so its place can be
# read as soon as the click is handled.
PHONE = {"viewport": {"width": 375, "height": 667}, "is_mobile": True, "has_touch": True, "reduced_motion": "reduce"}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}

# Records every frame the page sends on a websocket, as window.__sentFrames.
RECORD_SENT_FRAMES = """
  window.__sentFrames = [];
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) { window.__sentFrames.push(String(data)); return send.call(this, data); };
"""




def _alpha_and_beta(user):
    """Two conversations of `user`, "Alpha" made first (so listed second) and "Beta"."""
    from conversations.models import Conversation

    return (
        Conversation.objects.create(owner=user, model="demo:echo", title="Alpha"),
        Conversation.objects.create(owner=user, model="demo:echo", title="Beta"),
    )


def _send_and_wait(page, text, nth_reply):
    send(page, text)
    finished_replies(page).nth(nth_reply).wait_for()


# --- layout ----------------------------------------------------------------------------------------
def test_message_column_fills_the_chat_area_on_desktop(browser, live_server_url, make_user):
    user = make_user("layout-desk")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    _send_and_wait(page, "hi", 0)
    main = page.locator(".chat-main").bounding_box()
    column = page.locator("#messages").bounding_box()
    assert column["width"] >= main["width"] - 2, (column, main)
    # The person's own message sits at the right edge of the column, the reply at the left.
    mine = page.locator(".message-user").bounding_box()
    reply = page.locator(".message-assistant").bounding_box()
    assert mine["x"] + mine["width"] > column["x"] + column["width"] - 40, (mine, column)
    assert reply["x"] < column["x"] + 40, (reply, column)


def test_long_code_line_scrolls_inside_its_block_on_a_phone(browser, live_server_url, make_user):
    user = make_user("layout-phone")
    page = signed_in_context(browser, live_server_url, user, **PHONE).new_page()
    page.goto(live_server_url + "/")
    _send_and_wait(page, "```python\na = '" + "y" * 300 + "'\n```", 0)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    assert page.locator("#messages").bounding_box()["width"] <= 375
    code = page.locator(".message-assistant pre")
    assert code.bounding_box()["width"] <= 375
    assert code.evaluate("pre => pre.scrollWidth > pre.clientWidth")  # the block itself scrolls


# Records the chat header's height when the page is drawn and at every change of the connection
# status, as window.__heights: [[status text, height], ...].
HEADER_HEIGHTS = """
  window.__heights = [];
  document.addEventListener("DOMContentLoaded", () => {
    const status = document.getElementById("connection-status");
    const head = document.querySelector(".chat-head");
    const record = () => window.__heights.push([status.textContent, head.getBoundingClientRect().height]);
    record();
    new MutationObserver(record).observe(status, {childList: true, characterData: true, subtree: true});
  });
"""


@pytest.mark.parametrize("language", ["en", "ko"])
def test_the_connection_status_never_moves_the_page_on_a_phone(browser, live_server_url, make_user, language):
    # Seen before: "Connected" took a line of its own under the header, and the whole chat
    # jumped down as the page connected (and again as a reconnect said so).
    from conversations.models import Conversation

    user = make_user("status-" + language)
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="A title as long as a phone is wide")
    context = signed_in_context(browser, live_server_url, user, locale=language, **PHONE)
    context.add_cookies([{"name": "django_language", "value": language, "url": live_server_url}])
    page = context.new_page()
    page.add_init_script(HEADER_HEIGHTS)
    sockets = []

    def relay(ws):
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket("**/ws/chat/**", relay)
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    status = page.locator("#connection-status")
    words = page.evaluate("() => JSON.parse(document.getElementById('chat-config').textContent).strings")
    expect(status).to_have_text(words["connected"])
    sockets[-1].close()  # the network blips: the page says so, and reconnects
    expect(status).to_have_text(words["reconnecting"])
    expect(status).to_have_text(words["connected"], timeout=15_000)
    heights = page.evaluate("() => window.__heights")
    assert [text for text, _height in heights] == ["", words["connected"], words["reconnecting"], words["connected"]]
    assert len({height for _text, height in heights}) == 1, heights


# --- sending ---------------------------------------------------------------------------------------
def test_double_click_send_on_a_new_chat_sends_once(browser, live_server_url, make_user):
    from conversations.models import Conversation, Message

    user = make_user("double")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.add_init_script(RECORD_SENT_FRAMES)
    page.goto(live_server_url + "/")
    page.fill("#message-input", "only once please")
    page.dblclick("#send-button")
    finished_replies(page).first.wait_for()
    # A second message after the first reply: anything the double click set off has long
    # arrived by the time this one's reply is done.
    _send_and_wait(page, "and a second one", 1)
    assert Conversation.objects.filter(owner=user).count() == 1
    assert Message.objects.filter(conversation__owner=user, role="user").count() == 2
    assert page.locator(".message-user").count() == 2
    assert page.locator("#chat-error").is_hidden()
    # Each message went out in exactly one frame (the server would drop a repeat, but it should
    # never have to).
    sent = page.evaluate("() => window.__sentFrames.map((f) => JSON.parse(f)).filter((f) => f.type === 'user_message')")
    assert [frame["content"] for frame in sent] == ["only once please", "and a second one"]


@pytest.fixture
def fake_openai(settings, transactional_db, fake_provider):
    from billing import keys, prices

    settings.ALLOW_PRIVATE_BASE_URLS = True
    prices.price_set(model_id="openai:gpt-4o-mini", input_per_million="2", output_per_million="8",
                     context_window=128000, max_output_tokens=200, label="GPT-4o mini")
    fake_provider.script("sk-fake", text="Planning a trip to Busan in spring", pace_ms=40)
    keys.key_add(provider="openai", name="fake", secret="sk-fake", base_url=fake_provider.openai_base_url)
    return fake_provider


def test_generated_title_reaches_the_sidebar_header_and_tab(fake_openai, browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("titles")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    page.select_option("#model-picker", "openai:gpt-4o-mini")
    _send_and_wait(page, "help me plan a trip", 0)
    # The title is written after "done", by a task of its own; no frame announces it.
    deadline = time.monotonic() + 15
    while not Conversation.objects.get(owner=user).title and time.monotonic() < deadline:
        time.sleep(0.2)
    title = Conversation.objects.get(owner=user).title
    assert title
    # The page asks again after 1 s, 3 s and 8 s until the conversation has a title.
    expect(page.locator("#conversation-list li.active a")).to_have_text(title, timeout=15_000)
    expect(page.locator("#chat-title")).to_have_text(title)
    expect(page).to_have_title(title + " · Parley")


def test_tab_title_follows_the_open_conversation(browser, live_server_url, make_user):
    user = make_user("tabtitle")
    first, _beta = _alpha_and_beta(user)
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(f"{live_server_url}/c/{first.id}/")
    expect(page).to_have_title("Alpha · Parley")

    page.locator("#conversation-list li a", has_text="Beta").click()
    expect(page.locator("#chat-title")).to_have_text("Beta")
    expect(page).to_have_title("Beta · Parley")

    page.once("dialog", lambda dialog: dialog.accept("Gamma"))
    page.locator("#conversation-list li.active button", has_text="Rename").click()
    expect(page.locator("#chat-title")).to_have_text("Gamma")
    expect(page).to_have_title("Gamma · Parley")

    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#conversation-list li.active button", has_text="Delete").click()
    expect(page.locator("#chat-title")).to_have_text("New conversation")
    expect(page).to_have_title("New conversation · Parley")

    page.locator("#conversation-list li a", has_text="Alpha").click()
    expect(page).to_have_title("Alpha · Parley")
    page.click("#new-conversation")
    expect(page).to_have_title("New conversation · Parley")
    # The server names a new chat's tab the same way.
    page.reload()
    expect(page).to_have_title("New conversation · Parley")


def test_new_chat_closes_the_list_on_a_phone(browser, live_server_url, make_user):
    user = make_user("phone-new")
    page = signed_in_context(browser, live_server_url, user, **PHONE).new_page()
    page.goto(live_server_url + "/")
    _send_and_wait(page, "hello", 0)
    page.click("#sidebar-open")
    page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    page.click("#new-conversation")
    box = page.locator("#sidebar").bounding_box()
    assert box["x"] + box["width"] <= 0, box  # off screen, to the left
    expect(page.locator(".message")).to_have_count(0)


def test_refused_unsaved_message_goes_back_into_the_input(browser, live_server_url, make_user):
    user = make_user("lost-text")
    context = signed_in_context(browser, live_server_url, user, **DESKTOP)
    page = context.new_page()
    page.goto(live_server_url + "/")
    _send_and_wait(page, "first", 0)
    # The conversation is deleted in another tab; this one still shows it.
    other = context.new_page()
    other.goto(page.url)
    other.once("dialog", lambda dialog: dialog.accept())
    other.locator("#conversation-list li.active button", has_text="Delete").click()
    other.wait_for_url(live_server_url + "/")

    send(page, "my carefully written paragraph")
    expect(page.locator("#chat-error")).to_contain_text("no longer exists")
    # Not saved, so not shown as sent; the text is back where it was written.
    expect(page.locator("#message-input")).to_have_value("my carefully written paragraph")
    expect(page.locator(".message-user")).to_have_count(1)
    assert page.locator(".message-user").inner_text().endswith("first")


def test_settings_refused_on_a_new_chat_create_no_conversation(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("settings-first")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    page.click("#settings-toggle")
    page.fill("#system-prompt", "Answer in Korean.")
    page.fill("#max-tokens", "2000000")
    page.click("#settings-panel button[type=submit]")
    expect(page.locator("#settings-error")).to_contain_text("Max tokens must be a whole number from 1 to 1000000.")
    # Refused: no empty "New conversation" left behind in the list, the address still "/".
    assert not Conversation.objects.filter(owner=user).exists()
    expect(page.locator("#conversation-list li.conversation-item")).to_have_count(0)
    assert page.url == live_server_url + "/"
    # Corrected, the same save creates the chat with its settings.
    page.fill("#max-tokens", "500")
    page.click("#settings-panel button[type=submit]")
    expect(page.locator("#settings-error")).to_have_text("Settings saved.")
    conversation = Conversation.objects.get(owner=user)
    assert (conversation.system_prompt, conversation.max_tokens) == ("Answer in Korean.", 500)
    page.wait_for_url(f"**/c/{conversation.id}/")


def test_usage_amounts_are_not_broken_on_a_phone(browser, live_server_url, make_user):
    from billing import budgets

    user = make_user("usage-phone")
    budgets.budget_set(user=user, period="month", limit="12.5")
    page = signed_in_context(browser, live_server_url, user, **PHONE).new_page()
    page.goto(live_server_url + "/usage/")
    broken = page.evaluate("""() => [...document.querySelectorAll('table td, table th')].filter(cell => {
        const r = document.createRange(); r.selectNodeContents(cell);
        const text = cell.textContent.trim();
        return /^\\$[0-9.,]+$/.test(text) && new Set([...r.getClientRects()].map(x => Math.round(x.top))).size > 1;
      }).map(c => c.textContent.trim())""")
    # Seen before: ['$0.00', '$12.50', '$12.50'] each over 2-3 lines.
    assert broken == []
    # A table wider than the phone scrolls in its own box; the page does not.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375


# --- the length limit ------------------------------------------------------------------------------
@pytest.fixture
def short_messages(settings):
    """Set before live_server_url: the forked server inherits the settings at its start."""
    settings.MAX_MESSAGE_CHARS = 10
    return settings.MAX_MESSAGE_CHARS


def test_message_length_is_counted_in_characters_as_the_server_counts(short_messages, browser, live_server_url, make_user):
    user = make_user("emoji")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    # Ten emoji: ten characters for the server, twenty UTF-16 code units for the browser.
    emoji = "😀" * short_messages
    page.focus("#message-input")
    page.keyboard.insert_text(emoji)  # typed, so a maxlength would cut it
    expect(page.locator("#message-input")).to_have_value(emoji)
    page.press("#message-input", "Enter")
    finished_replies(page).first.wait_for()
    assert page.locator("#chat-error").is_hidden()
    assert page.locator(".message-user").inner_text().endswith(emoji)

    # One character more is refused on the page, and the text stays to be shortened.
    send(page, emoji + "a")
    # It says how long a message may be: "too long" alone leaves the person guessing what to cut.
    expect(page.locator("#chat-error")).to_have_text(f"The message is longer than {short_messages} characters.")
    expect(page.locator("#message-input")).to_have_value(emoji + "a")
    expect(page.locator(".message-user")).to_have_count(1)


def test_a_message_not_yet_acknowledged_is_never_sent_to_another_conversation(browser, live_server_url, make_user):
    # A message written in A waits for its ack (A's socket here answers nothing); the person
    # opens B. B's socket must not carry A's message: unacknowledged frames belong to the
    # conversation they were written in.
    from conversations.models import Message

    user = make_user("two-rooms")
    first, second = _alpha_and_beta(user)
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.route_web_socket(f"**/ws/chat/{first.id}/", lambda ws: None)  # open, and silent
    page.goto(f"{live_server_url}/c/{first.id}/")
    send(page, "meant for Alpha")
    page.locator(".message-user", has_text="meant for Alpha").wait_for()
    page.locator("#conversation-list li a", has_text="Beta").click()
    page.wait_for_url(f"**/c/{second.id}/")
    _send_and_wait(page, "meant for Beta", 0)
    assert list(Message.objects.filter(conversation=second, role="user").values_list("content", flat=True)) == [
        "meant for Beta"
    ]


# --- the settings panel ----------------------------------------------------------------------------
def test_escape_closes_the_settings_and_gives_focus_back_to_their_button(browser, live_server_url, make_user):
    user = make_user("escape")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    toggle, panel = page.locator("#settings-toggle"), page.locator("#settings-panel")
    # From a field of the panel, or from the button itself just after opening it.
    for field in ("#system-prompt", "#temperature", None):
        toggle.click()
        expect(panel).to_be_visible()
        if field:
            page.focus(field)
        page.keyboard.press("Escape")
        expect(panel).to_be_hidden()
        expect(toggle).to_have_attribute("aria-expanded", "false")
        expect(toggle).to_be_focused()


# --- landmarks and what a screen reader hears ------------------------------------------------------
@pytest.mark.parametrize("language", ["en", "ko"])
def test_the_chat_page_has_one_main_landmark(browser, live_server_url, make_user, language):
    user = make_user("landmarks-" + language)
    context = signed_in_context(browser, live_server_url, user, locale=language, **DESKTOP)
    context.add_cookies([{"name": "django_language", "value": language, "url": live_server_url}])
    page = context.new_page()
    page.goto(live_server_url + "/")
    assert page.evaluate("() => document.documentElement.lang") == language
    assert page.locator("main").count() == 1
    expect(page.get_by_role("main")).to_have_count(1)
    # The skip link lands on it, and it holds the chat.
    assert page.locator("main#main #messages").count() == 1


def test_a_screen_reader_hears_a_finished_reply_once_not_each_streamed_piece(browser, live_server_url, make_user):
    user = make_user("announce")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.add_init_script("""
      window.__announced = [];
      document.addEventListener("DOMContentLoaded", () => {
        new MutationObserver(() => {
          for (const region of document.querySelectorAll('[aria-live]:not([aria-live="off"]), [role=status], [role=log], [role=alert]')) {
            if (region.id !== "connection-status" && region.id !== "chat-error" && region.textContent.trim())
              window.__announced.push(region.textContent.trim());
          }
        }).observe(document.body, {childList: true, subtree: true, characterData: true});
      });
    """)
    page.goto(live_server_url + "/")
    text = "안녕하세요 " + " ".join(f"w{i}" for i in range(40))
    send(page, text)
    expect(page.locator(".message-assistant[data-status=streaming]")).to_have_count(1)
    # The streamed text is in no live region: nothing is read out piece by piece.
    live = "[aria-live]:not([aria-live=off]), [role=log], [role=status], [role=alert]"
    assert page.locator(".message-assistant .message-body").evaluate(f"(body) => body.closest('{live}')") is None
    finished_replies(page).first.wait_for(timeout=20_000)
    # Once finished, the reply is read out once, whole, from a polite live region.
    region = page.locator("#reply-announcer")
    expect(region).to_have_text(text)
    assert region.get_attribute("aria-live") == "polite"
    page.wait_for_timeout(300)
    announced = page.evaluate("() => window.__announced")
    assert set(announced) == {text}, announced[:5]
def test_settings_on_a_phone_open_over_the_messages_and_close_again(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("phone-settings")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="설정 확인")
    page = signed_in_context(browser, live_server_url, user, viewport={"width": 390, "height": 844},
                             is_mobile=True, has_touch=True).new_page()
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")  # connected: the header is as it stays
    closed = page.locator("#messages").bounding_box()
    page.click("#settings-toggle")
    panel = page.locator("#settings-panel")
    expect(panel).to_be_visible()
    # Seen before: the panel pushed the messages down to ~214 of 844 px. Over them now, instead.
    assert page.locator("#messages").bounding_box() == closed
    box = panel.bounding_box()
    assert box["y"] >= 0 and box["y"] + box["height"] <= 844, box
    expect(page.locator("#settings-panel button[type=submit]")).to_be_in_viewport()
    close = page.locator("#settings-close")
    expect(close).to_be_visible()
    expect(close).to_be_focused()  # the button that opened the panel is covered by it
    close.click()
    expect(panel).to_be_hidden()
    expect(page.locator("#settings-toggle")).to_be_focused()
    expect(page.locator("#settings-toggle")).to_have_attribute("aria-expanded", "false")


# Where the keyboard's focus is: the focused element's id (or its text), and whether it is in the
# settings panel.
FOCUS = """() => {
  const f = document.activeElement;
  return [f.id || f.textContent.trim(), Boolean(f.closest("#settings-panel"))];
}"""


def test_settings_on_a_phone_are_a_modal_dialog_to_the_keyboard(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("phone-dialog")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="설정")
    page = signed_in_context(browser, live_server_url, user, **PHONE).new_page()
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")
    toggle, panel = page.locator("#settings-toggle"), page.locator("#settings-panel")
    toggle.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name="Settings")).to_be_visible()
    expect(panel).to_have_attribute("aria-modal", "true")
    expect(page.locator("#settings-close")).to_be_focused()
    # Tab goes round the panel's own controls and never to the page it covers; Shift+Tab the
    # other way round.
    fields = ["settings-close", "system-prompt", "temperature", "max-tokens", "Save"]
    forward = []
    for _ in range(2 * len(fields)):
        page.keyboard.press("Tab")
        forward.append(page.evaluate(FOCUS))
    assert forward == [[f, True] for f in (fields[1:] + fields + fields[:1])]
    backward = []
    for _ in range(2 * len(fields)):
        page.keyboard.press("Shift+Tab")
        backward.append(page.evaluate(FOCUS))
    assert backward == [[f, True] for f in (fields[::-1] + fields[::-1])]
    # Escape closes it, and focus is back on the button that opened it: the page is itself again.
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(toggle).to_be_focused()
    expect(page.get_by_role("dialog")).to_have_count(0)
    page.keyboard.press("Shift+Tab")
    assert page.evaluate(FOCUS) == ["model-picker", False]


def test_settings_on_a_desktop_stay_between_the_header_and_the_messages(browser, live_server_url, make_user):
    user = make_user("desk-settings")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    page.click("#settings-toggle")
    head = page.locator(".chat-head").bounding_box()
    panel = page.locator("#settings-panel").bounding_box()
    messages = page.locator("#messages").bounding_box()
    assert head["y"] + head["height"] <= panel["y"] + 1 and panel["y"] + panel["height"] <= messages["y"] + 1
    expect(page.locator("#settings-close")).to_be_hidden()  # the Settings button is right there
    expect(page.locator("#settings-toggle")).to_be_focused()
    # A part of the page, not a dialog over it: the keyboard goes on past it to the messages.
    expect(page.get_by_role("dialog")).to_have_count(0)
    page.focus("#settings-panel button[type=submit]")
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUS)[1] is False




# --- what ended a reply, in words ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("language", "code", "said"),
    [
        ("en", "content_filter", "Error: stopped by the provider's content filter"),
        ("en", "thinking_exhausted", "Error: the model used all its output tokens thinking"),
        ("en", "interrupted", "Error: the reply was interrupted"),
        ("ko", "refused", "오류: 모델이 답변을 계속하지 않았습니다"),
    ],
)
def test_a_reply_that_ended_in_an_error_says_why_in_words_after_a_reload(browser, live_server_url, make_user, language, code, said):
    """The saved reason of a reply that ended in an error, shown in the page's language, not as
    the stored code (the live error frame said it in full; a reload must not turn it into jargon)."""
    from conversations.models import Conversation, Message

    user = make_user(f"ended-{language}-{code}")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Ended")
    question = Message.objects.create(conversation=conversation, role="user", content="a question")
    Message.objects.create(
        conversation=conversation, role="assistant", content="Here is", status="error", finish_reason="error",
        error_code=code, reply_to=question,
    )
    context = signed_in_context(browser, live_server_url, user, locale=language, **DESKTOP)
    context.add_cookies([{"name": "django_language", "value": language, "url": live_server_url}])
    page = context.new_page()
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    meta = page.locator(".message-assistant .message-meta")
    expect(meta).to_contain_text(said)
    assert f": {code}" not in meta.inner_text()  # not the stored code


# --- the conversation list and the keyboard --------------------------------------------------------
def _tab_stops(page, limit=40):
    """Each focus the Tab key gives from the top of the page, until it comes round again."""
    page.evaluate("() => { document.activeElement.blur(); window.scrollTo(0, 0); }")
    stops = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        stop = page.evaluate("""() => {
          const f = document.activeElement, r = f.getBoundingClientRect();
          const shown = r.right > 0 && r.bottom > 0 && r.left < innerWidth && r.top < innerHeight;
          return [f.id || f.textContent.trim().slice(0, 30), shown];
        }""")
        if stops and stop == stops[0]:
            break
        stops.append(stop)
    return stops


def test_the_closed_list_on_a_phone_takes_no_tab_stops_and_opens_to_the_keyboard(browser, live_server_url, make_user):
    user = make_user("phone-keys")
    first, _beta = _alpha_and_beta(user)
    page = signed_in_context(browser, live_server_url, user, **PHONE).new_page()
    page.goto(f"{live_server_url}/c/{first.id}/")
    expect(page.locator("#connection-status")).to_have_text("Connected")
    # Seen before: the list slid off the screen still took 10 of the Tab key's stops (New chat,
    # its filter, each conversation with its Rename and Delete, Log out), the focus out of sight.
    stops = _tab_stops(page)
    assert [s for s in stops if not s[1]] == [], stops
    assert "Alpha" not in [s[0] for s in stops]
    # Opened from the keyboard, focus goes into the list; Escape closes it, focus back on the button.
    page.focus("#sidebar-open")
    page.keyboard.press("Enter")
    expect(page.locator("#sidebar-close")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#conversation-filter")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#conversation-list a", has_text="Beta")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.locator("#sidebar-open")).to_be_focused()
    box = page.locator("#sidebar").bounding_box()
    assert box["x"] + box["width"] <= 0, box
    # A conversation chosen from the list closes it; the focus stays in sight, not on the hidden link.
    page.click("#sidebar-open")
    page.locator("#conversation-list a", has_text="Beta").press("Enter")
    expect(page.locator("#chat-title")).to_have_text("Beta")
    assert page.evaluate(
        "() => document.activeElement !== document.body && !document.activeElement.closest('#sidebar')"
    )


def test_renaming_keeps_the_focus_on_its_button_and_a_refused_name_does_not_outlive_a_good_one(
    browser, live_server_url, make_user
):
    from conversations.models import Conversation

    user = make_user("rename-keys")
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="Old name")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(f"{live_server_url}/c/{conversation.id}/")
    rename = page.locator("#conversation-list li.active button", has_text="Rename")
    answers = iter(["x" * 201, "New name"])
    page.on("dialog", lambda dialog: dialog.accept(next(answers)))
    rename.focus()
    page.keyboard.press("Enter")  # refused: too long
    expect(page.locator("#chat-error")).to_contain_text("200 characters")
    expect(rename).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("New name")
    # Seen before: the list, drawn again with the new name, dropped the focus on the page's body.
    expect(rename).to_be_focused()
    # Seen before: the refusal of the first name stayed in view under the name that was saved.
    expect(page.locator("#chat-error")).to_be_hidden()


def test_a_first_message_the_budget_refused_can_be_answered_once_the_budget_allows(browser, live_server_url, make_user):
    from billing import budgets, prices
    from conversations.models import Message

    user = make_user("refused-first")
    # Priced, so that a reply holds something: a budget of 0.01 USD cannot hold its worst case.
    prices.price_set(model_id="demo:echo", input_per_million="1", output_per_million="100", context_window=8192)
    budgets.budget_set(user=user, period="day", limit="0.01")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    send(page, "a question worth answering")
    expect(page.locator("#chat-error")).to_contain_text("budget")
    expect(page.locator(".message-user")).to_have_count(1)  # saved: the server keeps the question
    # Seen before: no Regenerate in a chat without a reply yet, so the only way to an answer was
    # to send the question again, twice in the record and twice in what the model reads.
    budgets.budget_set(user=user, period="day", limit="5")
    expect(page.locator("#regenerate-button")).to_be_visible()
    page.click("#regenerate-button")
    finished_replies(page).first.wait_for()
    expect(page.locator(".message-user")).to_have_count(1)
    assert Message.objects.filter(conversation__owner=user, role="user").count() == 1


def test_the_keyboard_reaches_rename_and_delete_of_a_conversation_that_is_not_open(browser, live_server_url, make_user):
    """On a desktop the row's buttons show on hover; a keyboard user tabbing through the list
    must reach them too, not only on the open conversation."""
    from conversations.models import Conversation

    user = make_user("list-keys")
    other = Conversation.objects.create(owner=user, model="demo:echo", title="Another chat")
    opened = Conversation.objects.create(owner=user, model="demo:echo", title="This chat")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(f"{live_server_url}/c/{opened.id}/")
    row = page.locator("#conversation-list li", has_text="Another chat")
    row.locator("a").focus()
    page.keyboard.press("Tab")
    expect(row.locator("button", has_text="Rename")).to_be_focused()
    page.keyboard.press("Tab")
    expect(row.locator("button", has_text="Delete")).to_be_focused()
    assert str(other.id) in row.locator("a").get_attribute("href")


def test_a_filter_that_matches_nothing_says_so(browser, live_server_url, make_user):
    from conversations.models import Conversation

    user = make_user("filter-none")
    Conversation.objects.create(owner=user, model="demo:echo", title="Trip to Busan")
    page = signed_in_context(browser, live_server_url, user, **DESKTOP).new_page()
    page.goto(live_server_url + "/")
    page.fill("#conversation-filter", "zzz-nothing")
    expect(page.locator("#conversation-list")).to_contain_text("No conversations match")
    page.fill("#conversation-filter", "Busan")
    expect(page.locator("#conversation-list li")).to_have_count(1)
    expect(page.locator("#conversation-list")).not_to_contain_text("No conversations match")
