"""The JSON API: shapes from CONTRACT section 4, owner scoping, auth, CSRF, validation."""

import json
import uuid
from decimal import Decimal

import pytest
from django.test import Client

from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(user):
    client = Client()
    client.force_login(user)
    return client


def _json(client, method, url, body=None, **extra):
    data = json.dumps(body) if body is not None and not isinstance(body, str | bytes) else body
    return getattr(client, method)(url, data=data, content_type="application/json", **extra)


def test_anonymous_calls_get_401_json_not_a_redirect(client, user):
    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    for method, url in [
        ("get", "/api/v1/models/"),
        ("get", "/api/v1/conversations/"),
        ("post", "/api/v1/conversations/"),
        ("get", f"/api/v1/conversations/{conversation.id}/"),
        ("delete", f"/api/v1/conversations/{conversation.id}/"),
    ]:
        response = getattr(client, method)(url)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"
    assert Conversation.objects.count() == 1


def test_models_lists_priced_models_with_usable_keys_and_the_demo(api, chat_backends):
    chat_backends.key("k")  # an openai key; no anthropic key
    results = api.get("/api/v1/models/").json()["results"]
    by_id = {r["id"]: r for r in results}
    assert set(by_id) == {"demo:echo", "openai:gpt-test"}
    assert "demo" in by_id["demo:echo"]["label"].lower() and by_id["demo:echo"]["demo"] is True
    assert by_id["openai:gpt-test"] == {"id": "openai:gpt-test", "label": "GPT test", "context_window": 8000, "demo": False}


def test_create_returns_201_with_the_fields_and_ignores_owner_and_id(api, user, other_user, chat_backends):
    forced_id = str(uuid.uuid4())
    response = _json(
        api,
        "post",
        "/api/v1/conversations/",
        {"title": "Plans", "model": "openai:gpt-test", "system_prompt": "Be brief.", "temperature": 0.7, "max_tokens": 256,
         "owner": other_user.id, "id": forced_id, "summary": "injected"},
    )
    assert response.status_code == 201
    data = response.json()
    assert set(data) >= {"id", "title", "model", "system_prompt", "temperature", "max_tokens", "created_at", "updated_at"}
    assert data["id"] != forced_id
    assert (data["title"], data["model"], data["system_prompt"], data["temperature"], data["max_tokens"]) == (
        "Plans", "openai:gpt-test", "Be brief.", 0.7, 256,
    )
    conversation = Conversation.objects.get(id=data["id"])
    assert conversation.owner == user and conversation.summary == "" and conversation.temperature == Decimal("0.70")


def test_create_with_no_body_uses_the_default_model(api, settings, chat_backends):
    response = api.post("/api/v1/conversations/", content_type="application/json")
    assert response.status_code == 201 and response.json()["model"] == settings.DEFAULT_MODEL


def test_a_new_conversation_starts_on_the_persons_default_model_while_it_has_a_price(api, user, settings, chat_backends):
    user.default_model = "openai:gpt-test"
    user.save(update_fields=["default_model"])
    assert api.post("/api/v1/conversations/", content_type="application/json").json()["model"] == "openai:gpt-test"
    assert api.get("/").context["config"]["defaultModel"] == "openai:gpt-test"
    # The operator disables that price: every message on it would be refused, so new
    # conversations (and the chat page's picker) start on the site's default instead.
    del chat_backends.price_table["openai:gpt-test"]
    assert api.post("/api/v1/conversations/", content_type="application/json").json()["model"] == settings.DEFAULT_MODEL
    assert api.get("/").context["config"]["defaultModel"] == settings.DEFAULT_MODEL
    user.refresh_from_db()
    assert user.default_model == "openai:gpt-test"  # their choice is kept, for when it is priced again


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        [1, 2],
        {"temperature": 3},
        {"temperature": "hot"},
        {"temperature": True},
        {"max_tokens": 0},
        {"max_tokens": "10"},
        {"title": "x" * 201},
        {"title": 5},
        {"model": "nosuch:model"},
        {"model": "no-colon"},
    ],
)
def test_bad_bodies_get_400_and_change_nothing(api, body, chat_backends):
    response = _json(api, "post", "/api/v1/conversations/", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input" and response.json()["error"]["message"]
    assert Conversation.objects.count() == 0


def test_list_is_newest_first_owner_only_and_paginated(api, user, other_user, chat_backends):
    from django.utils import timezone

    now = timezone.now()
    for index in range(55):
        Conversation.objects.create(owner=user, model="demo:echo", title=f"c{index}", updated_at=now + timezone.timedelta(seconds=index))
    Conversation.objects.create(owner=other_user, model="demo:echo", title="theirs")
    first = api.get("/api/v1/conversations/").json()
    assert [r["title"] for r in first["results"][:2]] == ["c54", "c53"]
    assert len(first["results"]) == 50 and first["next"]
    assert set(first["results"][0]) == {"id", "title", "model", "created_at", "updated_at"}
    second = api.get(first["next"]).json()
    assert [r["title"] for r in second["results"]] == ["c4", "c3", "c2", "c1", "c0"] and second["next"] is None
    assert api.get("/api/v1/conversations/?q=c5").json()["results"][0]["title"] == "c54"


def test_detail_has_messages_with_usage_and_sanitized_html(api, user, chat_backends):
    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    client_id = uuid.uuid4()
    question = Message.objects.create(conversation=conversation, role="user", content="<b>hi</b>", client_id=client_id)
    Message.objects.create(
        conversation=conversation, role="assistant", reply_to=question, content="**bold** <script>x</script>",
        input_tokens=3, output_tokens=2, cost=Decimal("0.0000012"),
    )
    data = api.get(f"/api/v1/conversations/{conversation.id}/").json()
    user_msg, reply = data["messages"]
    assert set(user_msg) >= {"id", "role", "content", "status", "created_at", "input_tokens", "output_tokens", "cost"}
    assert user_msg["content"] == "<b>hi</b>"
    # The sending tab's id for its message: a tab whose ack was lost finds its message saved.
    assert (user_msg["client_id"], reply["client_id"]) == (str(client_id), None)
    assert reply["cost"] == "0.0000012000" and reply["input_tokens"] == 3
    assert "<strong>bold</strong>" in reply["html"] and "<script>" not in reply["html"]


def test_patch_changes_only_editable_fields(api, user, other_user, chat_backends):
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="old")
    response = _json(api, "patch", f"/api/v1/conversations/{conversation.id}/", {"title": "new", "owner": other_user.id, "max_tokens": None})
    assert response.status_code == 200 and response.json()["title"] == "new"
    conversation.refresh_from_db()
    assert conversation.title == "new" and conversation.owner == user
    bad = _json(api, "patch", f"/api/v1/conversations/{conversation.id}/", {"temperature": -1})
    assert bad.status_code == 400
    conversation.refresh_from_db()
    assert conversation.temperature is None


def test_another_users_conversation_is_404_for_every_method(api, other_user, chat_backends):
    theirs = Conversation.objects.create(owner=other_user, model="demo:echo", title="private")
    url = f"/api/v1/conversations/{theirs.id}/"
    assert api.get(url).status_code == 404
    assert _json(api, "patch", url, {"title": "mine"}).status_code == 404
    assert api.delete(url).status_code == 404
    assert api.get(url).json()["error"]["code"] == "not_found"
    theirs.refresh_from_db()
    assert theirs.title == "private"


def test_delete_answers_204_and_removes_messages(api, user, chat_backends):
    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    Message.objects.create(conversation=conversation, role="user", content="bye")
    response = api.delete(f"/api/v1/conversations/{conversation.id}/")
    assert response.status_code == 204
    assert not Conversation.objects.exists() and not Message.objects.exists()


def test_delete_answers_a_204_without_body_length_or_type(api, user, chat_backends):
    """RFC 9110: a 204 has no content, and a server must not send Content-Length with one."""
    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    response = api.delete(f"/api/v1/conversations/{conversation.id}/")
    assert response.status_code == 204
    assert response.content == b""
    assert not response.has_header("Content-Length") and not response.has_header("Content-Type")
    assert response.has_header("X-Request-ID")  # the other middleware still runs


@pytest.mark.django_db(transaction=True)
def test_delete_answers_a_bodiless_204_on_the_wire(live_server_url, user):
    """As Daphne sends it: stray bytes after a 204 (the "{}" that was sent) would be read as the
    start of the next response on a keep-alive connection."""
    import socket
    from urllib.parse import urlsplit

    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    client = Client()
    client.force_login(user)
    host = urlsplit(live_server_url).netloc
    csrf = "a" * 32
    request = (
        f"DELETE /api/v1/conversations/{conversation.id}/ HTTP/1.1\r\nHost: {host}\r\n"
        f"Cookie: sessionid={client.cookies['sessionid'].value}; csrftoken={csrf}\r\nX-CSRFToken: {csrf}\r\n"
        f"Origin: {live_server_url}\r\nReferer: {live_server_url}/\r\nConnection: close\r\n\r\n"
    ).encode()
    raw = b""
    with socket.create_connection((urlsplit(live_server_url).hostname, urlsplit(live_server_url).port), timeout=10) as s:
        s.sendall(request)
        while chunk := s.recv(65536):  # the server closes: Connection: close
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    headers = {line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")[1:]}
    assert head.startswith(b"HTTP/1.1 204"), head
    assert body == b"", body
    assert not headers & {b"content-length", b"content-type", b"transfer-encoding"}, head
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_unsafe_methods_need_the_csrf_token(user, chat_backends):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post("/api/v1/conversations/", data="{}", content_type="application/json")
    assert response.status_code == 403 and response.json()["error"]["code"] == "csrf_failed"
    assert Conversation.objects.count() == 0
    client.get("/api/v1/models/")  # any page; the chat page sets the cookie in real use
    client.cookies["csrftoken"] = "a" * 32
    ok = client.post("/api/v1/conversations/", data="{}", content_type="application/json", HTTP_X_CSRFTOKEN="a" * 32)
    assert ok.status_code == 201


@pytest.mark.parametrize(
    "raw",
    [
        '{"temperature": NaN}',
        '{"temperature": "NaN"}',
        '{"temperature": "nan"}',
        '{"temperature": "sNaN"}',
        '{"temperature": "-NaN"}',
        '{"temperature": Infinity}',
        '{"temperature": -Infinity}',
        '{"temperature": "Infinity"}',
        '{"temperature": "-inf"}',
        '{"temperature": 1e400}',
    ],
)
def test_a_temperature_that_is_not_a_finite_number_is_400_on_create_and_patch(api, user, raw, chat_backends):
    response = _json(api, "post", "/api/v1/conversations/", raw)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"
    assert not Conversation.objects.exists()
    conversation = Conversation.objects.create(owner=user, model="demo:echo", temperature=Decimal("0.50"))
    patched = _json(api, "patch", f"/api/v1/conversations/{conversation.id}/", raw)
    assert patched.status_code == 400 and patched.json()["error"]["code"] == "invalid_input"
    conversation.refresh_from_db()
    assert conversation.temperature == Decimal("0.50")


@pytest.mark.parametrize("value", [-0.0, "-0", "-0.00"])
def test_a_negative_zero_temperature_is_saved_and_answered_as_zero(api, value, chat_backends):
    response = _json(api, "post", "/api/v1/conversations/", {"temperature": value})
    assert response.status_code == 201
    assert response.content.count(b'"temperature": 0.0') == 1, response.content
    conversation = Conversation.objects.get()
    assert conversation.temperature == 0 and not conversation.temperature.is_signed()


@pytest.mark.parametrize("raw", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 100_000 + "1" + "}" * 100_000])
def test_a_body_nested_too_deep_to_parse_is_400_on_create_and_patch(api, user, raw, chat_backends):
    response = _json(api, "post", "/api/v1/conversations/", raw)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"
    assert not Conversation.objects.exists()
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="kept")
    patched = _json(api, "patch", f"/api/v1/conversations/{conversation.id}/", raw)
    assert patched.status_code == 400 and patched.json()["error"]["code"] == "invalid_input"
    conversation.refresh_from_db()
    assert conversation.title == "kept"


@pytest.mark.parametrize("page", ["99999999999999999999", str(2**63), "9" * 5000])
def test_a_page_beyond_what_the_database_can_address_is_400(api, user, page, chat_backends):
    Conversation.objects.create(owner=user, model="demo:echo", title="mine")
    response = api.get("/api/v1/conversations/", {"page": page})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input" and "page" in response.json()["error"]["message"]


def test_the_last_addressable_page_is_an_empty_page(api, user, chat_backends):
    from conversations.api import MAX_PAGE

    Conversation.objects.create(owner=user, model="demo:echo", title="mine")
    response = api.get("/api/v1/conversations/", {"page": str(MAX_PAGE)})
    assert response.status_code == 200 and response.json() == {"results": [], "next": None}


@pytest.mark.parametrize("field", ["title", "system_prompt"])
@pytest.mark.parametrize("escaped", ["a\\ud800b", "\\udc00", "\\udc00\\ud83d", "a\\u0000b", "\\u0000"])
def test_text_with_a_lone_surrogate_or_a_nul_is_400_on_create_and_patch(api, user, field, escaped, chat_backends):
    raw = f'{{"{field}": "{escaped}"}}'  # JSON escapes: json.loads makes the lone surrogate / NUL
    response = _json(api, "post", "/api/v1/conversations/", raw)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_input" and error["field"] == field
    assert not Conversation.objects.exists()
    conversation = Conversation.objects.create(owner=user, model="demo:echo", title="kept", system_prompt="kept")
    patched = _json(api, "patch", f"/api/v1/conversations/{conversation.id}/", raw)
    assert patched.status_code == 400 and patched.json()["error"]["code"] == "invalid_input"
    conversation.refresh_from_db()
    assert (conversation.title, conversation.system_prompt) == ("kept", "kept")


def test_text_with_a_surrogate_pair_escape_is_the_character_it_names(api, chat_backends):
    response = _json(api, "post", "/api/v1/conversations/", '{"title": "hi \\ud83d\\ude00", "system_prompt": "\\ud83d\\ude00"}')
    assert response.status_code == 201
    conversation = Conversation.objects.get()
    assert (conversation.title, conversation.system_prompt) == ("hi \U0001f600", "\U0001f600")


def test_a_search_with_a_nul_is_400_on_every_database(api, user, chat_backends):
    # PostgreSQL cannot take NUL in a text parameter (it answered 500); SQLite answers the same.
    Conversation.objects.create(owner=user, model="demo:echo", title="mine")
    response = api.get("/api/v1/conversations/", {"q": "mi\x00ne"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input" and response.json()["error"]["message"].startswith("q:")


def test_a_refused_field_is_named_in_the_readers_language_not_by_its_key(make_user, chat_backends):
    # The page shows the message as it comes: a Korean reader saw "max_tokens: 최대 토큰 수는…".
    # The key stays for programs, as "field".
    person = make_user("minji", language="ko")
    client = Client()
    client.force_login(person)
    conversation = Conversation.objects.create(owner=person, model="demo:echo")
    url = f"/api/v1/conversations/{conversation.id}/"
    error = _json(client, "patch", url, {"max_tokens": 2_000_000}).json()["error"]
    assert error == {"code": "invalid_input", "field": "max_tokens", "message": "최대 토큰 수는 1에서 1000000 사이의 정수여야 합니다."}
    error = _json(client, "post", "/api/v1/conversations/", '{"system_prompt": "a\\u0000b"}').json()["error"]
    assert error["field"] == "system_prompt"
    assert error["message"].startswith("시스템 프롬프트: ") and "system_prompt" not in error["message"]
