"""The audit log in the admin: read-only for everyone, filterable, kept after the actor goes,
and never holding a secret or message text."""

import json

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.serializers.json import DjangoJSONEncoder

from accounts.audit import audit_record
from accounts.models import AuditEvent, Team, TeamMembership, User
from billing.models import Budget, ProviderKey
from conversations.models import Conversation, Message

AUDIT = "/admin/accounts/auditevent/"
CANARY_SECRET = "sk-CANARY-0f9e8d7c6b5a4"
CANARY_TEXT = "canary message text: the heron flies at midnight"
CANARY_PASSWORD = "canary-password-Zq81!x"


@pytest.fixture
def event(superuser):
    return audit_record(action="key.rotated", actor=superuser, target_type="billing.providerkey", target_id="abc", data={"name": "k1"})


def test_audit_log_is_read_only_even_for_superusers(su_client, event):
    assert su_client.get(f"{AUDIT}add/").status_code == 403
    assert su_client.get(f"{AUDIT}{event.pk}/change/").status_code == 200  # the view page
    response = su_client.post(f"{AUDIT}{event.pk}/change/", {"action": "tampered"})
    assert response.status_code == 403
    assert su_client.post(f"{AUDIT}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    response = su_client.post(AUDIT, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [event.pk]})
    assert AuditEvent.objects.filter(pk=event.pk, action="key.rotated").exists()


def test_audit_log_filters_by_action_actor_and_target(su_client, superuser, make_user):
    other = make_user("bob", is_staff=True)
    audit_record(action="key.rotated", actor=superuser, target_type="billing.providerkey", target_id="k1")
    audit_record(action="budget.changed", actor=other, target_type="billing.budget", target_id="7")
    audit_record(action="login.lockout", target_type="accounts.user", target_id="99")

    def shown(params):
        response = su_client.get(AUDIT, params)
        assert response.status_code == 200
        return sorted(e.action for e in response.context["cl"].result_list)

    assert shown({"action": "budget.changed"}) == ["budget.changed"]
    assert shown({"actor_id": other.pk}) == ["budget.changed"]
    assert shown({"q": str(superuser.pk)}) == ["key.rotated"]
    assert shown({"q": "99"}) == ["login.lockout"]
    assert shown({"target_type": "billing.providerkey"}) == ["key.rotated"]
    assert shown({"q": "nothing-like-this"}) == []


def test_audit_records_keep_an_erased_actor_by_id(su_client, make_user):
    gone = make_user("gone", is_staff=True)
    audit_record(action="budget.changed", actor=gone, target_type="billing.budget", target_id="1")
    gone_id = gone.pk
    gone.delete()
    html = su_client.get(AUDIT).content.decode()
    assert f"#{gone_id} (erased)" in html
    assert AuditEvent.objects.get(action="budget.changed").actor_id == gone_id


def test_staff_without_the_audit_permission_get_403_and_with_it_can_only_read(client, make_staff, event):
    client.force_login(make_staff("accounts.view_user"))
    assert client.get(AUDIT).status_code == 403
    client.force_login(make_staff("accounts.view_auditevent", "accounts.change_auditevent", "accounts.delete_auditevent"))
    assert client.get(AUDIT).status_code == 200
    assert client.post(f"{AUDIT}{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_no_audit_record_contains_the_canary_secret_or_message_text(
    su_client, superuser, make_user, teams
):
    victim = make_user("victim", password=CANARY_PASSWORD)
    ProviderKey.objects.create(name="canary-key", provider="openai", secret_encrypted=CANARY_SECRET, secret_last4="4a5b")
    conversation = Conversation.objects.create(owner=victim, title=CANARY_TEXT, model="demo:echo")
    Message.objects.create(conversation=conversation, role="user", content=CANARY_TEXT)

    def act(action, **extra):
        su_client.post("/admin/accounts/user/", {"action": action, ACTION_CHECKBOX_NAME: [victim.pk], **extra})

    # Every action the admin offers on a person, and a role and membership change.
    act("set_budget", apply="1", period="day", limit="3")
    act("export_data")
    act("disable_users")
    act("erase_users")
    act("erase_users", confirm="yes")
    from accounts.admin_services import team_members_audit, user_roles_audit, user_roles_snapshot

    before = user_roles_snapshot(user=victim)
    User.objects.filter(pk=victim.pk).update(is_staff=True)
    victim.refresh_from_db()
    user_roles_audit(user=victim, before=before, actor=superuser)
    Team.objects.get(pk=teams[0].pk).teammembership_set.create(user=victim)
    team_members_audit(team=teams[0], before=[], actor=superuser)

    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"budget.set", "user.export", "user.disabled", "user.erase", "user.roles_changed",
            "team.member_added"} <= actions
    dump = json.dumps(list(AuditEvent.objects.values()), cls=DjangoJSONEncoder)
    for canary in (CANARY_SECRET, CANARY_TEXT, "heron", CANARY_PASSWORD):
        assert canary not in dump
    # and the pages showing them
    html = su_client.get(AUDIT).content.decode()
    assert CANARY_SECRET not in html and "heron" not in html
    assert AuditEvent.objects.filter(action="budget.set", data__period="day").exists()


@pytest.mark.parametrize("way", ["delete-page", "bulk-action"])
def test_deleting_a_team_is_audited_with_its_budgets(su_client, superuser, teams, members, way):
    team = teams[0]
    budgets = [Budget.objects.create(team=team, period=p, limit=10) for p in ("day", "month")]
    other = Budget.objects.create(team=teams[1], period="day", limit=10)
    member_ids = sorted(TeamMembership.objects.filter(team=team).values_list("user_id", flat=True))
    if way == "delete-page":
        response = su_client.post(f"/admin/accounts/team/{team.pk}/delete/", {"post": "yes"})
    else:
        response = su_client.post(
            "/admin/accounts/team/", {"action": "delete_selected", ACTION_CHECKBOX_NAME: [team.pk], "post": "yes"}
        )
    assert response.status_code == 302
    assert not Team.objects.filter(pk=team.pk).exists() and Budget.objects.filter(pk=other.pk).exists()
    [event] = AuditEvent.objects.filter(action="team.delete")
    assert (event.actor_id, event.target_type, event.target_id) == (superuser.pk, "accounts.team", str(team.pk))
    assert event.ip_address == "127.0.0.1"
    assert event.data == {"name": "Physics", "member_ids": member_ids}
    gone = AuditEvent.objects.filter(action="budget.delete")
    assert sorted(e.target_id for e in gone) == sorted(str(b.pk) for b in budgets)
    assert all(e.actor_id == superuser.pk for e in gone)
