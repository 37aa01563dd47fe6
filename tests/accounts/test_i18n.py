import gettext
import json
import re
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings


@pytest.mark.django_db
def test_browser_korean_gets_the_korean_login_page(client):
    response = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="ko-KR,ko;q=0.9")
    body = response.content.decode()
    assert response["Content-Language"] == "ko"
    assert '<html lang="ko">' in body
    assert "Parley에 로그인" in body
    assert "비밀번호를 잊으셨나요?" in body


@pytest.mark.django_db
def test_browser_english_gets_the_english_login_page(client):
    body = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert "Log in to Parley" in body


@pytest.mark.django_db
def test_the_profile_language_overrides_the_browser(client, user):
    user.language = "ko"
    user.save()
    client.force_login(user)
    body = client.get("/accounts/profile/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert "프로필" in body and "Your profile" not in body
    user.language = "en"
    user.save()
    body = client.get("/accounts/profile/", HTTP_ACCEPT_LANGUAGE="ko").content.decode()
    assert "Your profile" in body


@pytest.mark.django_db
def test_language_switcher_saves_the_choice_to_the_profile(client, user):
    client.force_login(user)
    response = client.post("/accounts/language/", {"language": "ko", "next": "/accounts/profile/"})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.language == "ko"


@pytest.mark.django_db
def test_language_switcher_for_anonymous_sets_the_cookie(client, settings):
    client.post("/accounts/language/", {"language": "ko", "next": "/accounts/login/"})
    body = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Parley에 로그인" in body


@pytest.mark.django_db
def test_korean_signup_errors_are_korean(client):
    response = client.post(
        "/accounts/signup/",
        {"username": "kim", "email": "kim@example.test", "password1": "plum orchard 7", "password2": "other"},
        HTTP_ACCEPT_LANGUAGE="ko",
    )
    assert "두 비밀번호가 일치하지 않습니다." in response.content.decode()


def _po_entries(text: str) -> list[dict]:
    """The entries of a .po file: {"flags", "msgid", "msgid_plural", "msgstr": [..]}. A small
    reader, so the test needs no gettext tools either."""

    def unquote(line: str) -> str:
        body = line[line.index('"') + 1 : line.rindex('"')]
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)

    entries = []
    for block in text.split("\n\n"):
        entry: dict = {"flags": [], "msgid": None, "msgid_plural": None, "msgstr": []}
        field = None
        for line in block.strip().splitlines():
            if line.startswith("#,"):
                entry["flags"] = [f.strip() for f in line[2:].split(",")]
            elif line.startswith("#~"):
                entry["obsolete"] = True
            elif line.startswith("#"):
                continue
            elif line.startswith(("msgid_plural ", "msgid ", "msgstr")):
                field = line.split(" ", 1)[0]
                if field.startswith("msgstr"):
                    entry["msgstr"].append(unquote(line))
                else:
                    entry[field] = unquote(line)
            elif line.startswith('"') and field:
                if field.startswith("msgstr"):
                    entry["msgstr"][-1] += unquote(line)
                else:
                    entry[field] += unquote(line)
        if entry["msgid"] is not None or entry.get("obsolete"):
            entries.append(entry)
    return entries


def _placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"%\(\w+\)[sdf]|%[sdf]|\{\w*\}", text))


def test_korean_catalogue_is_complete_and_compiled():
    """Both files are committed, so a fresh machine needs no gettext tools. Every entry of the .po
    has a translation (none fuzzy, none obsolete), keeps the placeholders of its English, and the
    compiled .mo gives the same text for every entry (so it was compiled after the last edit)."""
    folder = Path(settings.BASE_DIR) / "locale" / "ko" / "LC_MESSAGES"
    po = (folder / "django.po").read_text(encoding="utf-8")
    entries = [e for e in _po_entries(po) if e["msgid"]]
    assert len(entries) > 400
    assert not [e["msgid"] for e in entries if e.get("obsolete")]
    assert not [e["msgid"] for e in entries if "fuzzy" in e["flags"]]
    assert "#, fuzzy" not in po
    untranslated = [e["msgid"] for e in entries if not e["msgstr"] or not all(s.strip() for s in e["msgstr"])]
    assert not untranslated
    wrong_placeholders = [
        e["msgid"] for e in entries if any(_placeholders(s) != _placeholders(e["msgid_plural"] or e["msgid"]) for s in e["msgstr"])
    ]
    assert not wrong_placeholders
    catalogue = gettext.GNUTranslations((folder / "django.mo").open("rb"))
    stale = [
        e["msgid"]
        for e in entries
        if (catalogue.ngettext(e["msgid"], e["msgid_plural"], 1) if e["msgid_plural"] else catalogue.gettext(e["msgid"])) != e["msgstr"][0]
    ]
    assert not stale, "run: python manage.py compilemessages"
    assert catalogue.gettext("Log in to Parley") == "Parley에 로그인"


def test_the_korean_catalogue_names_a_provider_one_way():
    """A reply that failed reads its banner and its own line together: "제공업체를 사용할 수
    없습니다" over "오류: 제공자를 사용할 수 없었습니다" named the same provider two ways."""
    po = (Path(settings.BASE_DIR) / "locale" / "ko" / "LC_MESSAGES" / "django.po").read_text(encoding="utf-8")
    entries = [e for e in _po_entries(po) if "provider" in (e["msgid"] or "").lower()]
    assert entries
    assert [e["msgid"] for e in entries if any("제공자" in s for s in e["msgstr"])] == []


def test_no_javascript_catalogue_is_needed():
    """The pages' scripts take their words from the page (json_script, data- attributes), so
    there is no djangojs catalogue to keep in step."""
    assert not (Path(settings.BASE_DIR) / "locale" / "ko" / "LC_MESSAGES" / "djangojs.po").exists()
    for script in [*(Path(settings.BASE_DIR) / "static" / "js").glob("*.js"), Path(settings.BASE_DIR) / "billing/static/billing/usage.js"]:
        assert "gettext(" not in script.read_text(encoding="utf-8"), script


@pytest.mark.django_db
def test_signup_keeps_a_language_picked_with_the_switcher_else_follows_the_browser(client, django_user_model):
    strong = "plum orchard 7 lantern"
    client.post(
        "/accounts/signup/",
        {"username": "en1", "email": "en1@example.test", "password1": strong, "password2": strong},
        HTTP_ACCEPT_LANGUAGE="ko",
    )
    assert django_user_model.objects.get(username="en1").language == ""
    client.post("/accounts/logout/")
    client.post("/accounts/language/", {"language": "ko", "next": "/"})
    client.post(
        "/accounts/signup/", {"username": "ko1", "email": "ko1@example.test", "password1": strong, "password2": strong}
    )
    assert django_user_model.objects.get(username="ko1").language == "ko"


# --- Korean pages, for a person whose profile says Korean ----------------------------------------
# Words that stay as they are in Korean: the product, units and formats, codes, and data (names,
# model ids) the tests make.
KEEP_ENGLISH = {
    "parley", "usd", "utc", "json", "csv", "zip", "erase", "shift", "enter", "api", "demo", "echo",
    "kim", "physics", "openai", "anthropic", "gpt", "mini", "claude", "sonnet", "haiku", "opus", "nano",
    "hello", "there",
    "english",  # the language switcher names each language in its own words
}


class _VisibleText(HTMLParser):
    """The words a person sees or hears: text outside script and style, and the attributes a
    browser shows or reads out. `root_id` limits it to one element (the admin's content)."""

    SHOWN_ATTRIBUTES = {"placeholder", "aria-label", "title", "alt"}

    def __init__(self, root_id: str | None = None):
        super().__init__()
        self.root_id, self.depth, self.skip, self.parts = root_id, 0 if root_id else 1, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.depth:
            self.depth += tag not in {"br", "input", "img", "meta", "link", "hr"}
        elif attrs.get("id") == self.root_id:
            self.depth = 1
        if tag in {"script", "style"}:
            self.skip += 1
        if self.depth:
            self.parts += [v for k, v in attrs.items() if k in self.SHOWN_ATTRIBUTES and v]
            if tag == "input" and attrs.get("type") in {"submit", "button"}:
                self.parts.append(attrs.get("value") or "")

    def handle_endtag(self, tag):
        if tag in {"script", "style"}:
            self.skip -= 1
        if self.depth and self.root_id:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth and not self.skip:
            self.parts.append(data)


def english_words(html: str, root_id: str | None = None) -> set[str]:
    parser = _VisibleText(root_id)
    parser.feed(html)
    text = " ".join(parser.parts)
    # Placeholders and model ids in the provider:model notation are code, not words.
    text = re.sub(r"%\(\w+\)[sd]|[\w.-]+:[\w.-]+", " ", text)
    words = {w.lower() for w in re.findall(r"[A-Za-z]{3,}", text)}
    return words - KEEP_ENGLISH


@pytest.fixture
def korean(make_user):
    person = make_user("kim", language="ko", is_staff=True, is_superuser=True)
    return person


@pytest.fixture
def korean_client(client, korean):
    client.force_login(korean)
    return client


def _page(client, url: str) -> str:
    # The browser asks for English: the profile's Korean must win.
    response = client.get(url, HTTP_ACCEPT_LANGUAGE="en-US,en;q=0.9")
    assert response.status_code == 200
    assert response["Content-Language"] == "ko"
    body = response.content.decode()
    assert '<html lang="ko"' in body
    return body


@pytest.mark.django_db
def test_the_chat_page_is_korean_and_so_are_the_words_its_script_shows(korean_client, korean):
    from conversations.models import Conversation, Message

    conversation = Conversation.objects.create(owner=korean, title="", model="demo:echo")
    Message.objects.create(conversation=conversation, role="user", content="hello there")
    body = _page(korean_client, f"/c/{conversation.id}/")
    assert "새 채팅" in body and "보내기" in body and "메시지를 입력하세요…" in body
    assert "내려받기:" in body and f"/api/v1/conversations/{conversation.id}/export.md" in body
    assert not english_words(body)
    config = json.loads(re.search(r'<script id="chat-config" type="application/json">(.*?)</script>', body, re.S).group(1))
    strings = config["strings"]
    assert strings["untitled"] == "새 대화" and strings["send"] == "보내기"
    # Nested tables too (what ended a reply, by its saved code): every word the script can show.
    words = [w for v in strings.values() for w in (v.values() if isinstance(v, dict) else [v])]
    assert not english_words("<p>" + " ".join(words) + "</p>")
    assert [m["label"] for m in config["models"] if m["id"] == "demo:echo"] == ["데모(오프라인 에코)"]


@pytest.fixture
def spending(korean):
    """A month budget and one call on the ledger, so the tables have rows."""
    from billing import budgets, ledger

    budgets.budget_set(user=korean, period="month", limit=Decimal("5"))
    ledger.usage_record(
        user=korean, conversation_id=None, message_id=None, attempt=1, provider="demo", model="echo", key_id=None,
        input_tokens=3, output_tokens=5, cached_tokens=0, cost=Decimal("0.01"), estimated=False, ttft_ms=5,
        latency_ms=9, outcome="ok",
    )


@pytest.mark.django_db
def test_the_usage_page_is_korean(korean_client, spending):
    body = _page(korean_client, "/usage/")
    assert "내 사용량" in body and "예산" in body and "이번 달" in body and "모델별" in body
    assert "초기화" in body and "데모(오프라인 에코)" in body
    assert not english_words(body)


@pytest.mark.django_db
def test_the_your_data_page_is_korean(korean_client):
    body = _page(korean_client, "/accounts/data/")
    assert "내 데이터" in body and "내 데이터 내보내기" in body and "내 계정 삭제" in body
    assert not english_words(body)


@pytest.mark.django_db
def test_the_profile_page_links_the_data_and_usage_pages(korean_client):
    body = _page(korean_client, "/accounts/profile/")
    assert 'href="/accounts/data/"' in body and 'href="/usage/"' in body
    # Time zones are IANA names (Asia/Seoul), the same in every language.
    body = re.sub(r'<select name="timezone".*?</select>', "", body, flags=re.S)
    assert not english_words(body)


@pytest.mark.django_db
def test_the_admin_cost_dashboard_is_korean(korean_client, spending):
    body = _page(korean_client, "/admin/dashboard/")
    assert "비용 대시보드" in body and "기간" in body and "CSV 내려받기" in body
    assert "모델별" in body and "지출 상위 사용자" in body and "입력 토큰" in body and "행 보기" in body
    assert not english_words(body, root_id="content-main")
