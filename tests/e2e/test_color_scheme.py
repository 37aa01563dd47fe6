"""Every page of the site (all but Django's admin, which has its own) follows the system's colour
scheme: dark where the person's system is dark, and readable there, element by element (text,
code, inputs, buttons, focus rings, errors and notices); as it always was where it is light.
The chat page's dark screenshot in docs/ is the one this test leaves in test-artifacts/."""

import json
import os

import pytest
from playwright.sync_api import expect

from tests.colours import COLOUR_MATH

from .conftest import finished_replies, send, signed_in_context

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

DESKTOP = {"viewport": {"width": 1280, "height": 800}}
LIGHT = {"background": "rgb(246, 247, 249)", "text": "rgb(29, 35, 48)"}  # as the site always was


# Where the colour arithmetic (tests.colours) finds the page failing, as it is shown.
# The background behind an element is its own and its ancestors' colours laid over each other.
# Returns {"body": {...}, "text": [failures], "surfaces": [failures]}: text below 4.5:1 (3:1 for
# large text); and, in the dark scheme, a surface (a box with a background of its own) that is
# light, where the filled accent buttons alone may be.
READABILITY = """(scheme) => {
""" + COLOUR_MATH + """  const canvas = scheme === "dark" ? [18, 18, 18, 1] : [255, 255, 255, 1];
  const background = (el) => {
    const chain = [];
    for (let n = el; n; n = n.parentElement) chain.unshift(parse(getComputedStyle(n).backgroundColor));
    return chain.reduce((under, top) => over(top, under), canvas);
  };
  const shown = (el) => {
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    return r.width > 2 && r.height > 2 && r.right > 0 && r.left < innerWidth && style.visibility === "visible" && style.opacity !== "0";
  };
  const name = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + (el.className && typeof el.className === "string" ? "." + el.className.trim().split(/\\s+/).join(".") : "");
  const filled = ".btn-primary, .button.primary, .button.danger";
  const result = { text: [], surfaces: [] };
  const bodyStyle = getComputedStyle(document.body);
  result.body = { background: bodyStyle.backgroundColor, text: bodyStyle.color,
                  backgroundLuminance: luminance(background(document.body)), textLuminance: luminance(parse(bodyStyle.color)) };
  for (const el of document.body.querySelectorAll("*")) {
    if (["SCRIPT", "STYLE", "TEMPLATE", "CANVAS", "OPTION"].includes(el.tagName) || !shown(el)) continue;
    const style = getComputedStyle(el);
    const bg = background(el);
    const control = ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName) && el.type !== "hidden" && !el.disabled;
    const ownText = [...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    if (control || ownText) {
      const placeholder = control && !el.value && el.placeholder;
      const fg = over(parse(getComputedStyle(el, placeholder ? "::placeholder" : null).color), bg);
      const size = parseFloat(style.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
      const contrast = ratio(fg, bg);
      if (contrast < (large ? 3 : 4.5)) {
        result.text.push([name(el) + (placeholder ? "::placeholder" : ""), (el.value || el.textContent).trim().slice(0, 30), Math.round(contrast * 100) / 100]);
      }
    }
    const own = parse(style.backgroundColor);
    if (scheme === "dark" && own[3] >= 0.5 && !el.matches(filled) && luminance(bg) > 0.15) {
      result.surfaces.push([name(el), style.backgroundColor]);
    }
  }
  // A chart is drawn on a canvas, out of CSS's reach: its labels are checked as its text.
  for (const canvas of document.querySelectorAll("canvas")) {
    const chart = window.Chart && window.Chart.getChart(canvas);
    if (!chart || !shown(canvas)) continue;
    const probe = document.createElement("span");
    document.body.append(probe);
    for (const [id, scale] of Object.entries(chart.scales)) {
      probe.style.color = scale.options.ticks.color;
      const bg = background(canvas);
      const contrast = ratio(over(parse(getComputedStyle(probe).color), bg), bg);
      if (contrast < 4.5) result.text.push(["chart " + id + " axis", scale.options.ticks.color, Math.round(contrast * 100) / 100]);
    }
    probe.remove();
  }
  return result;
}"""

# The focused element's focus ring (its outline, or a border that changes colour) against what
# lies around it: at least 3:1, as WCAG asks of a control's boundary.
FOCUS_RING = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
""" + COLOUR_MATH + """  const chain = [];
  for (let n = el.parentElement; n; n = n.parentElement) chain.unshift(parse(getComputedStyle(n).backgroundColor));
  const around = chain.reduce((under, top) => over(top, under), [128, 128, 128, 1]);
  const style = getComputedStyle(el);
  const rings = [];
  if (style.outlineStyle !== "none" && parseFloat(style.outlineWidth) >= 1) rings.push(ratio(over(parse(style.outlineColor), around), around));
  if (parseFloat(style.borderTopWidth) >= 1) rings.push(ratio(over(parse(style.borderTopColor), around), around));
  const best = rings.length ? Math.max(...rings) : 0;
  return [el.tagName.toLowerCase() + (el.id ? "#" + el.id : ""), Math.round(best * 100) / 100];
}"""


@pytest.fixture
def long_messages_refused(settings):
    """Set before live_server_url: the forked server inherits the settings at its start."""
    settings.MAX_MESSAGE_CHARS = 500


def _pages(browser, live_server_url, make_user, artifacts, scheme):
    """Each page of the site as a person sees it (with its errors and notices showing), in turn:
    yields (what, page)."""
    from billing import budgets

    user = make_user("mina")
    budgets.budget_set(user=user, period="month", limit="12.5")
    signed_in = signed_in_context(browser, live_server_url, user, color_scheme=scheme, **DESKTOP)
    anonymous = browser.new_context(color_scheme=scheme, **DESKTOP)

    page = signed_in.new_page()
    page.goto(live_server_url + "/")
    send(page, 'Explain **streaming** in one line, then show it:\n\n```python\nfor delta in reply:\n    print(delta, end="")\n```')
    finished_replies(page).first.wait_for(timeout=20_000)
    page.locator("#sidebar .conversation-item").first.wait_for()
    expect(page.locator("#connection-status")).to_have_text("Connected")
    page.mouse.move(0, 0)
    page.evaluate("() => document.activeElement.blur()")
    page.screenshot(path=str(artifacts / f"chat-{scheme}.png"))  # docs/screenshot-chat-dark.png
    yield "chat", page
    page.click("#settings-toggle")
    page.mouse.move(0, 0)  # nothing hovered: each colour as it rests
    send(page, "x" * 501)  # longer than a message may be: the error line says so
    expect(page.locator("#chat-error")).to_be_visible()
    yield "chat with its settings and an error", page

    page = signed_in.new_page()
    page.goto(live_server_url + "/accounts/profile/")
    page.click("form[action$='/profile/'] button[type=submit]")
    expect(page.locator(".flash")).to_be_visible()
    yield "profile, saved", page
    for path in ("/accounts/password/change/", "/usage/", "/accounts/data/"):
        page = signed_in.new_page()
        page.goto(live_server_url + path)
        yield path, page

    page = anonymous.new_page()
    page.goto(live_server_url + "/accounts/login/")
    page.fill("#id_username", "mina")
    page.fill("#id_password", "not the password")
    page.press("#id_password", "Enter")
    expect(page.locator(".form-errors")).to_be_visible()
    yield "login, refused", page
    for path in ("/accounts/signup/", "/accounts/password/reset/", "/accounts/password/reset/sent/",
                 "/accounts/password/reset/MQ/bad-token/", "/no-such-page/"):
        page = anonymous.new_page()
        page.goto(live_server_url + path)
        yield path, page


def _focus_rings_too_faint(page) -> list:
    """Through the whole page with the keyboard, from its first control round to it again: the
    focus rings that cannot be told from what is around them."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.evaluate("() => window.scrollTo(0, 0)")
    faint, seen = [], []
    for _ in range(80):
        page.keyboard.press("Tab")
        ring = page.evaluate(FOCUS_RING)
        if ring is None:
            continue  # out of the page, to the browser's own controls
        if seen and ring[0] == seen[0] and page.evaluate("() => document.activeElement === window.__firstFocused"):
            break
        if not seen:
            page.evaluate("() => { window.__firstFocused = document.activeElement; }")
        seen.append(ring[0])
        if ring[1] < 3:
            faint.append(ring)
    return faint


def test_every_page_is_dark_and_readable_where_the_system_is_dark(long_messages_refused, browser, live_server_url, make_user, artifacts):
    problems = {}
    for what, page in _pages(browser, live_server_url, make_user, artifacts, "dark"):
        found = page.evaluate(READABILITY, "dark")
        body = found.pop("body")
        if body["backgroundLuminance"] > 0.05 or body["textLuminance"] < 0.6:
            found["body"] = [body]
        found["focus"] = _focus_rings_too_faint(page)
        found = {k: v for k, v in found.items() if v}
        if found:
            problems[what] = found
    assert problems == {}, json.dumps(problems, indent=1, ensure_ascii=False)


# The chat's colours in the light scheme (chat.css): as they always were, but for the accent,
# one step darker so that a link on the sidebar reads at 4.5:1 (it was #1a73e8, 4.24:1).
CHAT_LIGHT = {
    "#chat": ("rgb(255, 255, 255)", "rgb(28, 30, 33)"),
    "#sidebar": ("rgb(247, 248, 250)", "rgb(28, 30, 33)"),
    ".message-user": ("rgb(227, 236, 253)", "rgb(28, 30, 33)"),
    ".message-assistant": ("rgb(242, 243, 245)", "rgb(28, 30, 33)"),
    ".message-assistant pre": ("rgb(30, 31, 34)", "rgb(232, 234, 237)"),
    "#settings-toggle": ("rgb(245, 246, 247)", "rgb(28, 30, 33)"),
    "#send-button": ("rgb(23, 101, 204)", "rgb(255, 255, 255)"),
    "#chat-error": ("rgb(252, 232, 230)", "rgb(179, 38, 30)"),
}


def test_the_light_scheme_keeps_its_colours_and_is_readable(long_messages_refused, browser, live_server_url, make_user, artifacts):
    # Light is the default most people see: every text at 4.5:1 (3:1 large), every focus ring at
    # 3:1, as in the dark scheme (WCAG 2.1 AA, which a school's or a public body's site must meet).
    problems = {}
    for what, page in _pages(browser, live_server_url, make_user, artifacts, "light"):
        found = page.evaluate(READABILITY, "light")
        body = found.pop("body")
        del found["surfaces"]  # light surfaces are the light scheme
        if {"background": body["background"], "text": body["text"]} != LIGHT:
            found["body"] = [body]
        found["focus"] = _focus_rings_too_faint(page)
        if what == "chat with its settings and an error":
            for selector, expected in CHAT_LIGHT.items():
                shown = page.locator(selector).first.evaluate("(n) => { const s = getComputedStyle(n); return [s.backgroundColor, s.color]; }")
                if tuple(shown) != expected:
                    found.setdefault("colours", []).append([selector, shown])
        found = {k: v for k, v in found.items() if v}
        if found:
            problems[what] = found
    assert problems == {}, json.dumps(problems, indent=1, ensure_ascii=False)
