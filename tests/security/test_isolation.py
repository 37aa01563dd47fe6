"""Isolation: every HTTP route and websocket route, enumerated from the URL conf and the
websocket routing (so a new route is covered without editing this file), tried as another user
and as an anonymous visitor against the victim's objects. Never the object: 404, 401, a redirect
to login, or a refusal; and afterwards the victim's data is exactly as it was."""

import itertools
import json
import re
import uuid

import pytest
from channels.testing import WebsocketCommunicator
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.models import DataExport, User
from conversations.models import Conversation, Message

from .conftest import signed_in_client

CANARY = "victim-canary-7f3a9c"  # in the victim's title and message text

# Routes anyone may reach (they hold no per-user object).
PUBLIC = re.compile(
    r"^(healthz|readyz|favicon\.ico$|static/|i18n/|accounts/(login|signup|language|password/reset|reset|data/erased/)|jsi18n)"
)
CONVERTER = re.compile(r"<(?:(?P<conv>[a-z_]+):)?(?P<name>\w+)>")


def _walk(patterns, prefix=""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern)


def http_routes() -> list[str]:
    routes = []
    for route in _walk(get_resolver().url_patterns):
        if route.startswith("admin/") or route.startswith("^") or "(?P" in route:
            continue  # the admin is walked by test_admin_is_staff_only; regex routes are Django's own
        routes.append(route)
    return sorted(set(routes))


def fill(route: str, values: dict[str, list[str]]) -> list[str]:
    """Every URL the route makes with the victim's ids in its parameters (capped)."""
    params = CONVERTER.findall(route)
    if not params:
        return ["/" + route.lstrip("^").rstrip("$")]
    choices = [values.get(conv or "str", values["str"]) for conv, _ in params]
    urls = []
    for combo in itertools.islice(itertools.product(*choices), 12):
        it = iter(combo)
        urls.append("/" + CONVERTER.sub(lambda _m: next(it), route))
    return urls


@pytest.fixture
def victim_world(make_user):
    victim = make_user("victim")
    conversation = Conversation.objects.create(owner=victim, title=f"title {CANARY}", model="demo:echo")
    message = Message.objects.create(
        conversation=conversation, role="user", content=f"secret words {CANARY}", client_id=uuid.uuid4()
    )
    export = DataExport.objects.create(user=victim, status=DataExport.Status.READY, file_name="x.zip")
    values = {
        "uuid": [str(conversation.id), str(message.id), str(export.id)],
        "int": [str(victim.pk)],
        "str": [str(conversation.id), victim.username],
        "slug": [str(conversation.id), victim.username],
        "path": [str(conversation.id)],
    }
    return victim, conversation, message, export, values


def _snapshot(victim):
    return (
        list(Conversation.objects.filter(owner=victim).values_list("id", "title", "model", "system_prompt")),
        list(Message.objects.filter(conversation__owner=victim).values_list("id", "content", "status")),
        list(DataExport.objects.filter(user=victim).values_list("id", "status")),
    )


def send(client, method: str, url: str):
    if method in {"get", "delete"}:
        return getattr(client, method)(url)
    return getattr(client, method)(url, data=json.dumps(ATTACK_BODY), content_type="application/json")


ATTACK_BODY = {
    "title": "pwned",
    "model": "demo:echo",
    "system_prompt": "pwned",
    "owner": 1,
    "owner_id": 1,
    "user": 1,
    "user_id": 1,
    "password": "x",
    "confirm": "ERASE",
}


@pytest.mark.django_db
def test_every_http_route_refuses_another_users_objects(client, make_user, victim_world):
    victim, conversation, message, export, values = victim_world
    attacker = make_user("attacker")
    before = _snapshot(victim)
    tried = 0
    for route in http_routes():
        for url in fill(route, values):
            for method in ("get", "post", "patch", "put", "delete"):
                client.force_login(attacker)
                response = send(client, method, url)
                tried += 1
                body = b"".join(response.streaming_content) if response.streaming else response.content
                assert CANARY.encode() not in body, f"{method.upper()} {url} leaked the victim's data"
                if CONVERTER.search(route) and not PUBLIC.match(route):
                    assert response.status_code in {301, 302, 400, 401, 403, 404, 405}, (
                        f"{method.upper()} {url} answered {response.status_code} to another user"
                    )
    assert tried > 20
    assert _snapshot(victim) == before, "another user changed the victim's data"
    assert Conversation.objects.filter(owner=victim).count() == 1


@pytest.mark.django_db
def test_every_http_route_refuses_anonymous_visitors(client, victim_world):
    victim, _conversation, _message, _export, values = victim_world
    before = _snapshot(victim)
    for route in http_routes():
        if PUBLIC.match(route):
            continue
        for url in fill(route, values):
            for method in ("get", "post", "patch", "delete"):
                response = send(client, method, url)
                body = b"".join(response.streaming_content) if response.streaming else response.content
                assert CANARY.encode() not in body
                if url.startswith("/api/"):
                    assert response.status_code in {401, 403, 405}, f"{method.upper()} {url}: {response.status_code}"
                    if response.status_code == 401:
                        assert response.json()["error"]["code"]
                else:
                    assert response.status_code in {302, 401, 403, 405}, f"{method.upper()} {url}: {response.status_code}"
                    if response.status_code == 302:
                        assert "/accounts/login/" in response["Location"]
    assert _snapshot(victim) == before


@pytest.mark.django_db
def test_admin_is_staff_only(client, make_user):
    client.force_login(make_user("plain"))
    routes = [r for r in _walk(get_resolver().url_patterns) if r.startswith("admin/")]
    assert routes
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    for route in routes:
        if CONVERTER.search(route) or "(?P" in route or "logout" in route or "login" in route:
            continue
        response = client.get("/" + route)
        assert response.status_code in {302, 404}, f"/{route}: {response.status_code}"


def _staff(make_user, *perms: str):
    """A signed-in staff member (not a superuser) with exactly these 'app.codename' permissions."""
    from django.contrib.auth.models import Permission
    from django.test import Client

    staff = make_user(f"staff{uuid.uuid4().hex[:6]}", is_staff=True)
    for perm in perms:
        app_label, codename = perm.split(".")
        staff.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    client = Client()
    client.force_login(staff)
    return client


@pytest.mark.django_db
def test_staff_who_may_only_view_conversations_cannot_stop_someone_elses_reply(make_user, victim_world, monkeypatch):
    from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

    from conversations import turns

    _victim, conversation, *_rest = victim_world
    stopped = []
    monkeypatch.setattr(turns, "turn_stop", lambda *, conversation_id: stopped.append(conversation_id) or True)
    url = "/admin/conversations/conversation/"
    body = {"action": "stop_replies", ACTION_CHECKBOX_NAME: [str(conversation.id)]}

    viewer = _staff(make_user, "conversations.view_conversation")
    assert viewer.get(url).context["action_form"] is None, "no action this operator may run"
    viewer.post(url, body)
    assert stopped == []

    editor = _staff(make_user, "conversations.view_conversation", "conversations.change_conversation")
    editor.post(url, body)
    assert stopped == [conversation.id]


@pytest.mark.django_db
@pytest.mark.parametrize("operator", ["staff who may change conversations", "superuser"])
def test_no_operator_can_hand_a_conversation_to_someone_else_or_read_its_system_prompt(
    operator, make_user, victim_world, admin_client
):
    # The admin never shows people's words. Making a conversation someone else's (their own
    # account's, say) would show every one of them on that person's chat page.
    from django.urls import reverse

    from tests.formpage import page_form

    _victim, conversation, *_rest = victim_world
    Conversation.objects.filter(pk=conversation.pk).update(system_prompt="prompt words 4d1e")
    if operator == "superuser":
        client, taker = admin_client, make_user("taker")
    else:
        client = _staff(make_user, "conversations.view_conversation", "conversations.change_conversation")
        taker = User.objects.get(pk=client.session["_auth_user_id"])
    url = reverse("admin:conversations_conversation_change", args=[conversation.pk])
    assert "prompt words 4d1e" not in client.get(url).content.decode()

    data = page_form(client, url, "conversation_form")
    data["owner"] = str(taker.pk)
    client.post(url, data)
    client.post(
        reverse("admin:conversations_conversation_add"),
        {"owner": str(taker.pk), "title": "planted", "model": "demo:echo", "system_prompt": "planted words"},
    )

    assert Conversation.objects.get(pk=conversation.pk).owner_id == _victim.pk
    assert not Conversation.objects.filter(owner=taker).exists()
    reader = signed_in_client(taker)
    assert reader.get(f"/api/v1/conversations/{conversation.id}/").status_code == 404
    assert CANARY not in reader.get(f"/c/{conversation.id}/").content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize("operator", ["staff", "superuser"])
def test_no_operator_can_change_a_persons_conversation_or_delete_one_of_its_messages(
    operator, make_user, victim_world, admin_client
):
    # A conversation's model, settings and title are its owner's: switched to a dearer model, or
    # given a larger max_tokens, every later turn would spend the owner's budget on an operator's
    # choice. And a message goes with its conversation (the person's delete, or erasure), never
    # alone: taking one out of the middle would change what the person said, and what the model
    # is told they said. The admin may look, and stop a running reply.
    from django.urls import reverse

    from tests.formpage import page_form

    victim, conversation, message, *_rest = victim_world
    if operator == "superuser":
        client = admin_client
    else:
        client = _staff(
            make_user, "conversations.view_conversation", "conversations.change_conversation",
            "conversations.view_message", "conversations.delete_message",
        )
    Message.objects.create(conversation=conversation, role="assistant", content="an answer", reply_to=message)
    url = reverse("admin:conversations_conversation_change", args=[conversation.pk])
    data = page_form(client, url, "conversation_form")
    data.update({"model": "openai:gpt-4o", "temperature": "1.9", "max_tokens": "100000", "title": "renamed"})
    client.post(url, data)
    message_page = client.get(reverse("admin:conversations_message_change", args=[message.pk]))
    assert message_page.status_code == 200 and "deletelink" not in message_page.content.decode()
    client.post(reverse("admin:conversations_message_delete", args=[message.pk]), {"post": "yes"})
    client.post(
        reverse("admin:conversations_message_changelist"),
        {"action": "delete_selected", "_selected_action": [str(message.pk)], "post": "yes"},
    )

    conversation.refresh_from_db()
    assert (conversation.model, conversation.temperature, conversation.max_tokens) == ("demo:echo", None, None)
    assert conversation.title == f"title {CANARY}"
    assert Message.objects.filter(pk=message.pk).exists()
    assert Message.objects.filter(conversation=conversation).count() == 2


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url, lookup",
    [
        ("/admin/conversations/message/", "content"),
        ("/admin/conversations/message/", "content__startswith"),
        ("/admin/conversations/message/", "reply_to__content__startswith"),
        ("/admin/conversations/message/", "conversation__summary__contains"),
        ("/admin/conversations/conversation/", "summary__startswith"),
        ("/admin/conversations/conversation/", "system_prompt__startswith"),
        ("/admin/conversations/conversation/", "messages__content__startswith"),
    ],
)
def test_the_admin_refuses_filters_on_hidden_text(make_user, victim_world, url, lookup):
    # Counting the rows a prefix matches would spell out words the admin never shows.
    _victim, conversation, *_rest = victim_world
    Conversation.objects.filter(pk=conversation.pk).update(summary=f"summary {CANARY}", system_prompt=f"prompt {CANARY}")
    viewer = _staff(make_user, "conversations.view_conversation", "conversations.view_message")
    assert viewer.get(url, {"status__exact": "done"} if "message" in url else {"model__exact": "demo:echo"}).status_code == 200
    response = viewer.get(url, {lookup: "s"})
    assert response.status_code == 400
    assert CANARY not in response.content.decode()


def websocket_routes() -> list[str]:
    from conversations.routing import websocket_urlpatterns

    return [str(p.pattern) for p in websocket_urlpatterns]


def _ws_url(route: str, conversation_id: str) -> str:
    return "/" + CONVERTER.sub(conversation_id, route.lstrip("^").rstrip("$"))


@pytest.mark.django_db(transaction=True)
async def test_every_websocket_route_refuses_another_user_and_anonymous(make_user, victim_world):
    from asgiref.sync import sync_to_async
    from django.test import Client

    from chatsite.asgi import application

    _victim, conversation, *_ = victim_world
    attacker = await sync_to_async(make_user)("attacker")
    http = Client()
    await sync_to_async(http.force_login)(attacker)
    cookie = f"sessionid={http.cookies['sessionid'].value}".encode()
    routes = websocket_routes()
    assert routes
    for route in routes:
        url = _ws_url(route, str(conversation.id))
        for headers in ([(b"origin", b"http://localhost"), (b"cookie", cookie)], [(b"origin", b"http://localhost")]):
            communicator = WebsocketCommunicator(application, url, headers=headers)
            connected, _ = await communicator.connect()
            assert not connected, f"{url} accepted a socket that does not own the conversation"
            await communicator.disconnect()
