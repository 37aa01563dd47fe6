"""Mass assignment: no body (API JSON, form, websocket frame) sets an owner, an id, a role, a
staff flag, a rate limit or timestamps. Each accepts an explicit list of fields; the rest are
ignored, and the victim's data is untouched."""

from __future__ import annotations

import json
import uuid

import pytest
from channels.db import database_sync_to_async

from accounts.models import DataExport, User
from conversations.models import Conversation, Message

from .conftest import session_cookie_of, ws_open

PASSWORD = "correct horse battery 9"


def _hostile(victim, victim_conversation) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "pk": str(uuid.uuid4()),
        "owner": victim.pk,
        "owner_id": victim.pk,
        "user": victim.pk,
        "user_id": victim.pk,
        "conversation": str(victim_conversation.id),
        "conversation_id": str(victim_conversation.id),
        "role": "assistant",
        "is_staff": True,
        "is_superuser": True,
        "summary": "planted summary",
        "created_at": "2000-01-01T00:00:00Z",
        "updated_at": "2000-01-01T00:00:00Z",
    }


@pytest.fixture
def victim_and_conversation(make_user):
    victim = make_user("victim")
    return victim, Conversation.objects.create(owner=victim, title="victim's", model="demo:echo")


@pytest.mark.django_db
def test_creating_a_conversation_ignores_owner_id_and_timestamps(client, user, victim_and_conversation):
    victim, theirs = victim_and_conversation
    client.force_login(user)
    body = {**_hostile(victim, theirs), "title": "mine"}
    response = client.post("/api/v1/conversations/", json.dumps(body), content_type="application/json")
    assert response.status_code == 201
    created = Conversation.objects.get(id=response.json()["id"])
    assert created.owner == user and created.title == "mine"
    assert str(created.id) not in {body["id"], body["pk"]}
    assert created.summary == "" and created.created_at.year > 2000
    assert Conversation.objects.filter(owner=victim).count() == 1


@pytest.mark.django_db
def test_changing_a_conversation_cannot_move_it_or_change_its_id(client, user, victim_and_conversation):
    victim, theirs = victim_and_conversation
    mine = Conversation.objects.create(owner=user, model="demo:echo")
    client.force_login(user)
    body = {**_hostile(victim, theirs), "title": "renamed"}
    response = client.patch(f"/api/v1/conversations/{mine.id}/", json.dumps(body), content_type="application/json")
    assert response.status_code == 200
    mine.refresh_from_db()
    assert mine.owner == user and mine.title == "renamed" and mine.summary == ""
    assert response.json()["id"] == str(mine.id)
    theirs.refresh_from_db()
    assert theirs.title == "victim's" and theirs.owner == victim


@pytest.mark.django_db
def test_signup_cannot_make_staff_or_superuser(client, make_user, settings):
    make_user("first-admin", is_staff=True, is_superuser=True)  # the first account is the admin; this is not it
    settings.SIGNUP_OPEN = True
    response = client.post(
        "/accounts/signup/",
        {
            "username": "climber",
            "email": "climber@example.test",
            "password1": PASSWORD,
            "password2": PASSWORD,
            "is_staff": "on",
            "is_superuser": "on",
            "is_active": "on",
            "groups": "1",
            "user_permissions": "1",
            "requests_per_minute": "100000",
        },
    )
    assert response.status_code == 302
    climber = User.objects.get(username="climber")
    assert not climber.is_staff and not climber.is_superuser
    assert climber.requests_per_minute is None
    assert not climber.groups.exists() and not climber.user_permissions.exists()


@pytest.mark.django_db
def test_the_profile_form_cannot_raise_flags_limits_or_rename(client, user):
    client.force_login(user)
    response = client.post(
        "/accounts/profile/",
        {
            "display_name": "Alice",
            "timezone": "UTC",
            "language": "",
            "default_model": "",
            "is_staff": "on",
            "is_superuser": "on",
            "username": "root",
            "email": "root@example.test",
            "requests_per_minute": "100000",
            "tokens_per_minute": "100000000",
            "password": "x",
        },
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.display_name == "Alice"
    assert (user.is_staff, user.is_superuser, user.username, user.email) == (False, False, "alice", "alice@example.test")
    assert user.requests_per_minute is None and user.tokens_per_minute is None
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_an_export_cannot_be_started_for_someone_else(client, user, victim_and_conversation):
    victim, theirs = victim_and_conversation
    client.force_login(user)
    response = client.post("/api/v1/account/export/", json.dumps(_hostile(victim, theirs)), content_type="application/json")
    assert response.status_code == 202
    export = DataExport.objects.get(id=response.json()["export_id"])
    assert export.user == user
    assert not DataExport.objects.filter(user=victim).exists()


@pytest.mark.django_db
def test_erasure_erases_only_the_caller_whatever_the_body_names(client, make_user, victim_and_conversation):
    victim, theirs = victim_and_conversation
    attacker = make_user("attacker")
    client.force_login(attacker)
    body = {**_hostile(victim, theirs), "password": PASSWORD, "confirm": "ERASE", "username": "victim"}
    response = client.post("/api/v1/account/erase/", json.dumps(body), content_type="application/json")
    assert response.status_code == 202
    victim.refresh_from_db()
    assert victim.is_active and victim.check_password(PASSWORD)
    assert Conversation.objects.filter(owner=victim).count() == 1


@pytest.mark.django_db(transaction=True)
async def test_a_chat_frame_cannot_pick_the_conversation_role_or_owner(user, make_user):
    from chatsite.asgi import application
    from conversations import turns

    victim = await database_sync_to_async(make_user)("victim")
    theirs = await database_sync_to_async(Conversation.objects.create)(owner=victim, model="demo:echo")
    mine = await database_sync_to_async(Conversation.objects.create)(owner=user, model="demo:echo")
    ws, connected, _ = await ws_open(application, f"/ws/chat/{mine.id}/", cookie=await session_cookie_of(user))
    assert connected
    frame = {**_hostile(victim, theirs), "type": "user_message", "content": "hello", "client_id": str(uuid.uuid4())}
    await ws.send_json_to(frame)
    assert (await ws.receive_json_from(timeout=5))["type"] == "ack"
    await turns.replies_wait()
    await ws.disconnect()
    saved = await database_sync_to_async(lambda: list(Message.objects.filter(client_id=frame["client_id"])))()
    assert len(saved) == 1
    assert saved[0].conversation_id == mine.id and saved[0].role == "user" and saved[0].content == "hello"
    assert await database_sync_to_async(Message.objects.filter(conversation=theirs).count)() == 0


