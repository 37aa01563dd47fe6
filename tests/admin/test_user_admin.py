"""User, group and team admin: the list (fast, constant queries), the four actions and their audit
rows, and who may grant roles (superusers only) or change an account that can do more than they can.
Actions run the real services (billing.budgets, accounts.data_rights), which write the one audit
row of each action."""

import datetime
from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import admin_services
from accounts.models import AuditEvent, DataExport, ErasureRequest, Team, TeamMembership, User
from accounts.services import OnlyAdmin
from billing.models import Budget
from tests.formpage import page_form

USERS = "/admin/accounts/user/"
HELPDESK = ("accounts.view_user", "accounts.change_user")  # e.g. resets passwords, disables accounts


@pytest.fixture
def powerful_group(db):
    from django.contrib.auth.models import Group, Permission

    group = Group.objects.create(name="key managers")
    group.permissions.add(Permission.objects.get(codename="change_providerkey"))
    return group


@pytest.fixture
def key_manager(make_user, powerful_group):
    """Staff who may change provider keys (through a group): more than the helpdesk may."""
    person = make_user("keyman", is_staff=True)
    person.groups.add(powerful_group)
    return person


def act(client, action, users, **extra):
    return client.post(USERS, {"action": action, ACTION_CHECKBOX_NAME: [u.pk for u in users], **extra})


def audits(action):
    return list(AuditEvent.objects.filter(action=action))


def test_user_list_shows_spend_budget_remaining_and_teams(su_client, make_ledger, members, teams):
    records = make_ledger(40, users=[members[0]], teams=teams, days=1)
    Budget.objects.create(user=members[0], period="month", limit=Decimal("50"), spent=Decimal("12.5"), period_start=timezone.now(), reserved=Decimal("2.5"))
    response = su_client.get(USERS)
    assert response.status_code == 200
    html = response.content.decode()
    month_spend = sum(r.cost for r in records)
    assert f"${month_spend.quantize(Decimal('0.01')):,}" in html
    assert "$12.50 / $50.00 ($35.00 left)" in html
    assert "Physics" in html


def test_user_list_runs_the_same_queries_with_10_or_10000_ledger_records(su_client, make_ledger, members, teams):
    for i, person in enumerate(members):
        Budget.objects.create(user=person, period="month", limit=Decimal("10"), spent=Decimal(i), period_start=timezone.now())
    make_ledger(10, users=members, teams=teams, days=20)
    with CaptureQueriesContext(connection) as few:
        assert su_client.get(USERS).status_code == 200
    make_ledger(9_990, users=members, teams=teams, days=20, seed=3)
    with CaptureQueriesContext(connection) as many:
        assert su_client.get(USERS).status_code == 200
    assert len(few) == len(many) <= 12


def test_user_list_never_counts_a_whole_big_table(su_client, make_user):
    User.objects.bulk_create([User(username=f"bulk{i}", email=f"bulk{i}@example.test") for i in range(30)])
    with CaptureQueriesContext(connection) as ctx:
        su_client.get(USERS)
    counts = [q["sql"] for q in ctx.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT" in sql.upper() for sql in counts), counts


def test_disable_action_disables_and_audits_and_refuses_self(su_client, superuser, members):
    act(su_client, "disable_users", [members[0], superuser])
    members[0].refresh_from_db()
    superuser.refresh_from_db()
    assert not members[0].is_active and superuser.is_active
    [event] = audits("user.disabled")
    assert (event.actor_id, event.target_id) == (superuser.pk, str(members[0].pk))
    act(su_client, "disable_users", [members[0]])  # already disabled: no second record
    assert len(audits("user.disabled")) == 1


def test_set_budget_asks_then_sets_and_audits(su_client, superuser, members):
    response = act(su_client, "set_budget", members[:2])
    assert response.status_code == 200 and b'name="limit"' in response.content
    assert not Budget.objects.exists()
    act(su_client, "set_budget", members[:2], apply="1", period="month", limit="25.50")
    budgets = Budget.objects.filter(user__in=members[:2], period="month")
    assert sorted((b.user_id, b.limit) for b in budgets) == [(m.pk, Decimal("25.50")) for m in members[:2]]
    events = audits("budget.set")
    assert len(events) == 2, "one audit row per budget, written by the service"
    assert all(e.actor_id == superuser.pk and e.ip_address == "127.0.0.1" for e in events)
    assert {e.data["owner_id"] for e in events} == {m.pk for m in members[:2]}
    assert all(e.data["period"] == "month" and Decimal(e.data["limit"]) == Decimal("25.50") for e in events)


def test_set_budget_takes_the_places_the_budget_page_takes(su_client, members):
    # The budget page takes a limit to ten places (a cheap model's budget of 0.00003 USD); the
    # bulk action took four, and refused it with "no more than 4 decimal places".
    act(su_client, "set_budget", members[:1], apply="1", period="day", limit="0.00003")
    assert Budget.objects.get(user=members[0]).limit == Decimal("0.00003")
    response = act(su_client, "set_budget", members[:1], apply="1", period="day", limit="0.00000000001")
    assert response.context["form"].errors["limit"]
    assert Budget.objects.get(user=members[0]).limit == Decimal("0.00003")


@pytest.mark.parametrize("limit, period", [("-5", "month"), ("lots", "month"), ("1e40", "month"), ("10", "decade")])
def test_set_budget_with_bad_input_explains_and_changes_nothing(su_client, members, limit, period):
    response = act(su_client, "set_budget", members[:1], apply="1", period=period, limit=limit)
    assert response.status_code == 200
    assert response.context["form"].errors
    assert not Budget.objects.exists() and not audits("budget.set")


def test_set_budget_above_the_largest_limit_says_so_and_changes_nothing(su_client, members):
    # The form took any 16-digit figure; the service refuses more than MAX_BUDGET_LIMIT, which
    # the action did not catch: a server error instead of the reason.
    response = act(su_client, "set_budget", members[:2], apply="1", period="month", limit="2000000")
    assert response.status_code == 200
    assert "The limit cannot be above 1000000 USD." in response.context["form"].errors["limit"]
    assert not Budget.objects.exists() and not audits("budget.set")


def test_set_budget_explains_a_refused_limit_in_the_operators_language(client, make_user, members):
    operator = make_user("관리자", is_staff=True, is_superuser=True, language="ko")
    client.force_login(operator)
    response = act(client, "set_budget", members[:1], apply="1", period="month", limit="2000000")
    assert response.status_code == 200
    assert response.context["form"].errors["limit"] == ["한도는 1000000 USD를 넘을 수 없습니다."]
    assert not Budget.objects.exists()


def test_export_action_requests_exports_and_audits(su_client, superuser, members, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        act(su_client, "export_data", members[:2])
    exports = DataExport.objects.filter(user__in=members[:2])
    assert sorted(e.user_id for e in exports) == [members[0].pk, members[1].pk]
    events = audits("user.export")
    assert len(events) == 2 and all(e.actor_id == superuser.pk for e in events)
    assert {e.data["export_id"] for e in events} == {str(x.pk) for x in exports}


def test_export_action_skips_an_account_being_erased_with_a_message_and_exports_the_others(
    su_client, members, django_capture_on_commit_callbacks
):
    # An erasure waits for a worker (or resumes after a crash): its account is still listed.
    ErasureRequest.objects.create(user_id=members[0].pk)
    with django_capture_on_commit_callbacks(execute=False):
        response = act(su_client, "export_data", members[:2])
    assert response.status_code == 302
    shown = [str(m) for m in response.wsgi_request._messages]
    assert any(members[0].username in m and "being erased" in m for m in shown), shown
    assert list(DataExport.objects.values_list("user_id", flat=True)) == [members[1].pk]
    assert [e.target_id for e in audits("user.export")] == [str(members[1].pk)]


def test_erase_shows_what_will_be_removed_then_erases_and_audits_by_id(
    su_client, superuser, members, django_capture_on_commit_callbacks
):
    from conversations.models import Conversation, Message

    conversation = Conversation.objects.create(owner=members[0], title="t", model="demo:echo")
    Message.objects.bulk_create([Message(conversation=conversation, role="user", content=f"m{i}") for i in range(3)])
    response = act(su_client, "erase_users", members[:1])
    html = response.content.decode()
    assert response.status_code == 200
    assert "member0" in html and "3 messages" in html and "1 conversation" in html
    assert not audits("user.erase") and User.objects.get(pk=members[0].pk).is_active

    with django_capture_on_commit_callbacks(execute=True):
        act(su_client, "erase_users", members[:1], confirm="yes")
    [event] = audits("user.erase")
    assert (event.actor_id, event.target_type, event.target_id) == (superuser.pk, "accounts.user", str(members[0].pk))
    assert "member0" not in str(event.data)
    assert not User.objects.filter(pk=members[0].pk).exists(), "the erasure ran (eager Celery)"


def test_the_erase_preview_says_in_words_what_goes_and_what_stays(client, make_user, members, make_ledger):
    # The page listed the preview's internal keys ("login_records: 2", "usage_records_kept: 5"),
    # the records kept among what is removed. Words now, in the operator's language.
    from accounts.models import Team
    from billing.budgets import budget_set
    from conversations.models import Conversation

    Conversation.objects.create(owner=members[0], title="t", model="demo:echo")
    budget_set(user=members[0], period="day", limit="1")
    make_ledger(2, users=[members[0]], teams=[Team.objects.first()])
    for language, goes, stays in (
        ("en", ["1 conversation", "0 messages", "1 budget", "0 signed-in sessions"], "2 usage records"),
        ("ko", ["대화 1개", "메시지 0개", "예산 1개", "로그인 세션 0개"], "사용 기록 2건"),
    ):
        operator = make_user(f"root-{language}", is_staff=True, is_superuser=True, language=language)
        client.force_login(operator)
        page = act(client, "erase_users", members[:1]).content.decode()
        gone = page[page.index('class="erase-preview"') : page.index("</ul>", page.index('class="erase-preview"'))]
        for words in goes:
            assert f"<li>{words}</li>" in gone, (words, gone)
        assert stays not in gone and stays in page
        for key in ("login_records", "usage_records", "budgets:", "sessions:", "exports:"):
            assert key not in page, key


def test_erase_refuses_the_operators_own_account(su_client, superuser):
    response = su_client.post(
        USERS, {"action": "erase_users", ACTION_CHECKBOX_NAME: [superuser.pk], "confirm": "yes"}, follow=True
    )
    assert User.objects.get(pk=superuser.pk).is_active and not audits("user.erase")
    assert any("cannot erase your own" in str(m) for m in response.context["messages"])


@pytest.mark.parametrize("whom", ["administrator", "key-manager"])
def test_staff_erase_refuses_the_whole_selection_when_it_holds_an_account_that_can_do_more(
    client, make_staff, superuser, key_manager, members, whom
):
    # A staff member (not an administrator) may erase plain accounts; the selection sorts member0
    # first, so a per-user loop would have started member0's erasure before reaching the other.
    target = superuser if whom == "administrator" else key_manager
    client.force_login(make_staff("accounts.view_user", "accounts.delete_user"))
    for step in ({"confirm": "yes"}, {}):  # refused when confirmed, and already on the confirmation page
        response = client.post(
            USERS, {"action": "erase_users", ACTION_CHECKBOX_NAME: [members[0].pk, target.pk], **step}, follow=True
        )
        assert response.status_code == 200
        [message] = [str(m) for m in response.context["messages"]]
        assert "only a superuser can erase" in message and target.username in message
        assert members[0].username not in message
    assert not ErasureRequest.objects.exists() and not audits("user.erase")
    assert all(User.objects.get(pk=u.pk).is_active for u in [members[0], target]), "nothing half done"


@pytest.mark.parametrize("other_admins", [0, 1], ids=["the-only-admin", "every-admin"])
def test_erase_refuses_the_whole_selection_when_it_would_leave_no_administrator(
    make_user, superuser, members, other_admins
):
    # Through the admin only a superuser may erase an administrator, and never themselves, so one
    # always remains; the rule still holds for any other caller (the shell), and under races.
    admins = [superuser, *(make_user(f"root{i}", is_staff=True, is_superuser=True) for i in range(other_admins))]
    for call in (admin_services.users_erase_preview, admin_services.users_erase):
        with pytest.raises(OnlyAdmin) as refused:
            call(users=[members[0], *admins], actor=None)
        assert refused.value.users == admins
    assert not ErasureRequest.objects.exists() and not audits("user.erase")
    assert all(User.objects.get(pk=u.pk).is_active for u in [members[0], *admins]), "nothing half done"


def test_staff_disable_skips_the_accounts_that_can_do_more_and_disables_the_others(
    client, make_staff, make_user, superuser, key_manager, members
):
    make_user("root2", is_staff=True, is_superuser=True)  # not the last administrator: not why it is refused
    client.force_login(make_staff(*HELPDESK))
    act(client, "disable_users", [members[0], superuser, key_manager])
    messages = [str(m) for m in client.get(USERS).context["messages"]]
    assert User.objects.get(pk=superuser.pk).is_active and User.objects.get(pk=key_manager.pk).is_active
    assert not User.objects.get(pk=members[0].pk).is_active
    assert [e.target_id for e in audits("user.disabled")] == [str(members[0].pk)]
    for name in ("root", "keyman"):
        assert any(m.startswith(name) and "only a superuser can disable" in m for m in messages), messages


def test_a_superuser_disables_another_but_never_the_last_administrator(su_client, superuser, make_user):
    root2 = make_user("root2", is_staff=True, is_superuser=True)
    act(su_client, "disable_users", [root2])
    assert not User.objects.get(pk=root2.pk).is_active
    # Through the admin the operator is an active administrator who cannot disable themselves;
    # the last-administrator rule holds for any other caller (the shell), and under races.
    with pytest.raises(OnlyAdmin):
        admin_services.user_disable(user=superuser, actor=None)
    assert User.objects.get(pk=superuser.pk).is_active


def _change_form_data(client, person, **changes):
    """The user change form as the admin shows it, with `changes` (None: unticked) applied."""
    form = client.get(f"{USERS}{person.pk}/change/").context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v not in (None, False) and k not in {"password", "groups", "user_permissions", "last_login", "date_joined"}}
    data.update({"last_login_0": "", "last_login_1": "", "date_joined_0": "2025-01-01", "date_joined_1": "00:00:00"})
    for name, value in changes.items():
        data.pop(name, None)
        if value is not None:
            data[name] = value
    return data


def test_the_admin_refuses_renaming_a_person_to_a_look_alike_of_another(su_client, make_user):
    person = make_user("bob")
    response = su_client.post(f"{USERS}{person.pk}/change/", _change_form_data(su_client, person, username="\u0430dmin"))
    assert response.status_code == 200 and "look-alike letters" in str(response.context["adminform"].form.errors["username"])
    assert User.objects.get(pk=person.pk).username == "bob"


def test_the_admin_refuses_a_new_person_or_a_rename_that_looks_like_another(su_client, make_user):
    make_user("paypal")
    person = make_user("bob")
    cyrillic_paypal = "\u0440\u0430\u0443\u0440\u04301"  # "раура1": no Latin letter in it
    response = su_client.post(f"{USERS}{person.pk}/change/", _change_form_data(su_client, person, username=cyrillic_paypal))
    assert response.status_code == 200
    assert "looks the same as an existing username" in str(response.context["adminform"].form.errors["username"])
    assert User.objects.get(pk=person.pk).username == "bob"
    response = su_client.post(
        f"{USERS}add/",
        {"username": cyrillic_paypal, "usable_password": "true", "password1": "a new Passphrase 42!", "password2": "a new Passphrase 42!"},
    )
    assert response.status_code == 200
    assert "looks the same as an existing username" in str(response.context["adminform"].form.errors["username"])
    assert not User.objects.filter(username=cyrillic_paypal).exists()


def test_the_admin_keeps_a_persons_own_name_in_another_case(su_client, make_user):
    person = make_user("paypal")
    response = su_client.post(f"{USERS}{person.pk}/change/", _change_form_data(su_client, person, username="PayPal"))
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    assert User.objects.get(pk=person.pk).username == "PayPal"


def test_user_form_refuses_unticking_active_on_the_operators_own_account(su_client, superuser, make_user):
    make_user("root2", is_staff=True, is_superuser=True)  # not the only administrator: the self rule alone
    response = su_client.post(f"{USERS}{superuser.pk}/change/", _change_form_data(su_client, superuser, is_active=None))
    assert response.status_code == 200
    assert "You cannot disable your own account." in response.context["adminform"].form.errors["is_active"]
    assert User.objects.get(pk=superuser.pk).is_active and not audits("user.roles_changed")


def test_user_form_refuses_the_last_administrator_demoting_themselves(su_client, superuser):
    # Nobody else may: only a superuser changes superuser status, or changes a superuser's account.
    response = su_client.post(f"{USERS}{superuser.pk}/change/", _change_form_data(su_client, superuser, is_superuser=None))
    assert response.status_code == 200
    assert any("only administrator" in e for e in response.context["adminform"].form.errors["is_superuser"])
    superuser.refresh_from_db()
    assert superuser.is_active and superuser.is_superuser and not audits("user.roles_changed")


def test_user_form_refuses_the_last_administrator_removing_their_own_staff_status(su_client, superuser, make_user):
    # Without staff status the admin refuses them at once, and nobody is left to give it back. A
    # superuser who is not staff cannot open the admin either, so they do not count as another.
    make_user("backstage", is_superuser=True)
    response = su_client.post(f"{USERS}{superuser.pk}/change/", _change_form_data(su_client, superuser, is_staff=None))
    assert response.status_code == 200
    assert any("only administrator" in e for e in response.context["adminform"].form.errors["is_staff"])
    superuser.refresh_from_db()
    assert superuser.is_staff and not audits("user.roles_changed")
    assert su_client.get("/admin/").status_code == 200


def test_the_last_administrator_may_drop_staff_status_once_another_administrator_exists(su_client, superuser, make_user):
    make_user("root2", is_staff=True, is_superuser=True)
    response = su_client.post(f"{USERS}{superuser.pk}/change/", _change_form_data(su_client, superuser, is_staff=None))
    assert response.status_code == 302
    assert not User.objects.get(pk=superuser.pk).is_staff


def test_saving_a_user_page_opened_before_a_colleague_disabled_the_account_keeps_it_disabled(su_client, members):
    # The page was opened with "active" ticked; meanwhile another operator disabled the account
    # (someone who left, an abuse report). Saving a new display name must not switch it back on.
    person = members[0]
    data = page_form(su_client, f"{USERS}{person.pk}/change/", "user_form")
    assert data["is_active"] == "on"
    admin_services.user_disable(user=person, actor=None)
    data["display_name"] = "Renamed"
    response = su_client.post(f"{USERS}{person.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    person.refresh_from_db()
    assert person.display_name == "Renamed" and not person.is_active
    assert not audits("user.roles_changed")


def test_saving_a_user_page_opened_before_a_colleague_made_the_account_staff_keeps_it_staff(
    su_client, make_user, members, powerful_group
):
    person = members[0]
    data = page_form(su_client, f"{USERS}{person.pk}/change/", "user_form")
    User.objects.filter(pk=person.pk).update(is_staff=True)
    person.groups.add(powerful_group)
    data["display_name"] = "Renamed"
    assert su_client.post(f"{USERS}{person.pk}/change/", data).status_code == 302
    person.refresh_from_db()
    assert person.display_name == "Renamed" and person.is_staff
    assert list(person.groups.all()) == [powerful_group]


def test_a_change_made_on_the_user_page_is_still_applied(su_client, members):
    person = members[0]
    data = page_form(su_client, f"{USERS}{person.pk}/change/", "user_form")
    data.pop("is_active")  # unticked on the page
    assert su_client.post(f"{USERS}{person.pk}/change/", data).status_code == 302
    assert not User.objects.get(pk=person.pk).is_active


def test_the_user_form_refuses_a_default_model_without_a_price(su_client, members):
    # Every new chat of this person would start on a model no turn may use (model_unavailable).
    person = members[0]
    data = page_form(su_client, f"{USERS}{person.pk}/change/", "user_form")
    data["default_model"] = "openai:gpt-unpriced"
    response = su_client.post(f"{USERS}{person.pk}/change/", data)
    assert response.status_code == 200
    [error] = response.context["adminform"].form.errors["default_model"]
    assert "openai:gpt-unpriced" in error and "no price" in error
    assert User.objects.get(pk=person.pk).default_model == ""

    data["default_model"] = "openai:gpt-4o-mini"  # priced (seeded)
    assert su_client.post(f"{USERS}{person.pk}/change/", data).status_code == 302
    assert User.objects.get(pk=person.pk).default_model == "openai:gpt-4o-mini"


def test_a_user_page_saves_when_the_default_model_it_did_not_change_lost_its_price(su_client, members):
    from billing.models import ModelPrice

    person = members[0]
    User.objects.filter(pk=person.pk).update(default_model="openai:gpt-4o-mini")
    ModelPrice.objects.filter(provider="openai", model="gpt-4o-mini").update(enabled=False)
    data = page_form(su_client, f"{USERS}{person.pk}/change/", "user_form")
    data["display_name"] = "Renamed"
    assert su_client.post(f"{USERS}{person.pk}/change/", data).status_code == 302
    assert User.objects.get(pk=person.pk).display_name == "Renamed"


def test_users_cannot_be_deleted_only_erased(su_client, members):
    assert su_client.get(f"{USERS}{members[0].pk}/delete/").status_code == 403
    assert User.objects.filter(pk=members[0].pk).exists()


def test_role_changes_are_audited(su_client, superuser, members):
    person = members[0]
    response = su_client.get(f"{USERS}{person.pk}/change/")
    form = response.context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k not in {"password", "groups", "user_permissions"}}
    data.update({"is_staff": "on", "is_active": "on", "last_login_0": "", "last_login_1": "", "date_joined_0": "2025-01-01",
                 "date_joined_1": "00:00:00"})
    data.pop("last_login", None)
    data.pop("date_joined", None)
    response = su_client.post(f"{USERS}{person.pk}/change/", data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    [event] = audits("user.roles_changed")
    assert event.data == {"is_staff": [False, True]} and event.actor_id == superuser.pk


def test_team_admin_lists_members_budget_and_spend_and_audits_membership(su_client, superuser, teams, members, make_user):
    Budget.objects.create(team=teams[0], period="week", limit=Decimal("100"), spent=Decimal("40"), period_start=timezone.now())
    html = su_client.get("/admin/accounts/team/").content.decode()
    assert "$40.00 / $100.00" in html
    newcomer = make_user("newcomer")
    team = teams[0]
    existing = list(TeamMembership.objects.filter(team=team))
    data = {
        "name": team.name, "requests_per_minute": "", "tokens_per_minute": "",
        "created_at_0": "2025-01-01", "created_at_1": "00:00:00",
        "teammembership_set-TOTAL_FORMS": str(len(existing) + 1), "teammembership_set-INITIAL_FORMS": str(len(existing)),
        "teammembership_set-MIN_NUM_FORMS": "0", "teammembership_set-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    for i, m in enumerate(existing):
        data.update({f"teammembership_set-{i}-id": m.pk, f"teammembership_set-{i}-team": team.pk,
                     f"teammembership_set-{i}-user": m.user_id, f"teammembership_set-{i}-DELETE": "on" if i == 0 else ""})
    n = len(existing)
    data.update({f"teammembership_set-{n}-team": team.pk, f"teammembership_set-{n}-user": newcomer.pk})
    response = su_client.post(f"/admin/accounts/team/{team.pk}/change/", data)
    assert response.status_code == 302, response.context and response.context["errors"]
    assert audits("team.member_added")[0].data == {"user_id": newcomer.pk}
    assert audits("team.member_removed")[0].data == {"user_id": existing[0].user_id}
    assert Team.objects.get(pk=team.pk).members.filter(pk=newcomer.pk).exists()


def test_staff_without_permission_get_403_on_user_and_team_lists(client, make_staff):
    client.force_login(make_staff("billing.view_dashboard"))
    assert client.get(USERS).status_code == 403
    assert client.get("/admin/accounts/team/").status_code == 403


def test_staff_who_may_only_view_users_cannot_run_actions(client, make_staff, members, fake_rights, fake_budget_set):
    client.force_login(make_staff("accounts.view_user"))
    response = client.get(USERS)
    assert response.status_code == 200
    assert response.context["action_form"] is None  # no action this operator may run
    act(client, "disable_users", members[:1])
    act(client, "erase_users", members[:1], confirm="yes")
    act(client, "set_budget", members[:1], apply="1", period="month", limit="1")
    members[0].refresh_from_db()
    assert members[0].is_active and fake_rights["erase"] == [] and fake_budget_set == []
    assert not AuditEvent.objects.exists()


def test_staff_with_change_but_not_delete_cannot_erase(client, make_staff, members, fake_rights):
    client.force_login(make_staff("accounts.view_user", "accounts.change_user"))
    actions = [name for name, _ in client.get(USERS).context["action_form"].fields["action"].choices]
    assert "disable_users" in actions and "export_data" in actions
    assert "erase_users" not in actions and "set_budget" not in actions



def test_user_list_shows_last_active_from_usage_when_never_logged_in(su_client, make_ledger, members):
    records = make_ledger(5, users=[members[1]], days=3)
    last_day = max(timezone.localdate(r.created_at) for r in records)
    response = su_client.get(USERS)
    row = next(u for u in response.context["cl"].result_list if u.pk == members[1].pk)
    assert members[1].last_login is None
    assert response.context["cl"].model_admin.last_active(row) == last_day.isoformat()


def test_password_set_by_an_admin_and_group_permission_changes_are_audited(su_client, superuser, members):
    from django.contrib.auth.models import Group, Permission

    response = su_client.post(
        f"{USERS}{members[0].pk}/password/",
        {"password1": "a new Passphrase 42!", "password2": "a new Passphrase 42!", "usable_password": "true"},
    )
    assert response.status_code == 302
    [event] = audits("user.password_set_by_admin")
    assert event.target_id == str(members[0].pk) and "Passphrase" not in str(event.data)

    perm = Permission.objects.get(codename="view_dashboard")
    response = su_client.post("/admin/auth/group/add/", {"name": "operators", "permissions": [perm.pk]})
    assert response.status_code == 302
    [event] = audits("group.permissions_changed")
    assert event.data == {"added": [perm.pk], "removed": []}
    assert event.target_id == str(Group.objects.get(name="operators").pk)


def test_deleting_a_team_in_the_admin_keeps_its_spend_on_the_dashboard(su_client, make_user):
    from billing import dashboard, ledger

    alice = make_user("alice")
    team = Team.objects.create(name="Biology")
    call = dict(conversation_id=None, message_id=None, attempt=1, provider="openai", model="gpt-4o-mini", key_id=None,
                input_tokens=10, output_tokens=5, cached_tokens=0, estimated=False, ttft_ms=100, latency_ms=900,
                outcome="ok")  # fmt: skip
    # Before and after alice joined the team, on the same UTC day: two rollup rows.
    ledger.usage_record(user=alice, cost=Decimal("1.00"), **call)
    TeamMembership.objects.create(team=team, user=alice)
    ledger.usage_record(user=alice, cost=Decimal("2.00"), **call)
    response = su_client.post(f"/admin/accounts/team/{team.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Team.objects.filter(pk=team.pk).exists()
    rng, _errors = dashboard.dashboard_range_parse(params={"range": "today"}, today=timezone.now().date())
    assert dashboard.dashboard_spend(rng=rng).total.cost == Decimal("3.00")


# --- Who grants roles: superusers only ------------------------------------------------------

ROLE_FIELDS = {"is_staff", "is_superuser", "groups", "user_permissions"}


def _crafted_roles(powerful_group):
    from django.contrib.auth.models import Permission

    return {
        "is_staff": "on", "is_superuser": "on", "groups": [powerful_group.pk],
        "user_permissions": [Permission.objects.get(codename="delete_user").pk],
    }  # fmt: skip


def _roles(person):
    person = User.objects.get(pk=person.pk)
    return (person.is_staff, person.is_superuser, list(person.groups.all()), list(person.user_permissions.all()))


def test_helpdesk_sees_roles_but_cannot_edit_them(client, make_staff, members):
    client.force_login(make_staff(*HELPDESK))
    response = client.get(f"{USERS}{members[0].pk}/change/")
    assert response.status_code == 200
    form = response.context["adminform"].form
    assert not ROLE_FIELDS & set(form.fields), "roles are not fields of a non-superuser's form"
    assert {"is_active", "email", "username"} <= set(form.fields), "the legitimate edits stay"
    html = response.content.decode()
    assert 'name="is_superuser"' not in html and 'name="groups"' not in html
    assert "Superuser status" in html, "shown read-only, so the helpdesk knows who is staff"


@pytest.mark.parametrize("whose", ["own", "another"])
def test_helpdesk_crafted_post_grants_no_role(client, make_staff, members, powerful_group, whose):
    staff = make_staff(*HELPDESK)
    person = staff if whose == "own" else members[0]
    client.force_login(staff)
    before = _roles(person)
    data = {**_change_form_data(client, person), **_crafted_roles(powerful_group)}
    response = client.post(f"{USERS}{person.pk}/change/", data)
    assert response.status_code == 302  # the rest of the form is fine: the role fields are ignored
    assert _roles(person) == before
    staff = User.objects.get(pk=staff.pk)
    assert not staff.is_superuser and not staff.has_perm("billing.change_providerkey")
    assert not audits("user.roles_changed")


def test_helpdesk_crafted_add_form_makes_a_plain_account(client, make_staff, powerful_group):
    client.force_login(make_staff("accounts.add_user", *HELPDESK))
    response = client.post(
        f"{USERS}add/",
        {"username": "newbie", "usable_password": "true", "password1": "a new Passphrase 42!",
         "password2": "a new Passphrase 42!", **_crafted_roles(powerful_group)},
    )  # fmt: skip
    assert response.status_code == 302
    newbie = User.objects.get(username="newbie")
    assert _roles(newbie) == (False, False, [], [])
    [event] = audits("user.created")
    assert event.target_id == str(newbie.pk)


def test_superuser_still_grants_roles_and_they_are_audited(su_client, superuser, members, powerful_group):
    person = members[0]
    data = {**_change_form_data(su_client, person), **_crafted_roles(powerful_group)}
    response = su_client.post(f"{USERS}{person.pk}/change/", data)
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    is_staff, is_superuser, groups, permissions = _roles(person)
    assert is_staff and is_superuser and groups == [powerful_group]
    assert [p.codename for p in permissions] == ["delete_user"]
    [event] = audits("user.roles_changed")
    assert set(event.data) == {"is_staff", "is_superuser", "groups", "permissions"} and event.actor_id == superuser.pk


def test_helpdesk_still_disables_and_resets_the_password_of_a_plain_account(client, make_staff, members):
    staff = make_staff(*HELPDESK)
    client.force_login(staff)
    person = members[0]
    response = client.post(f"{USERS}{person.pk}/change/", _change_form_data(client, person, is_active=None))
    assert response.status_code == 302
    assert not User.objects.get(pk=person.pk).is_active
    [event] = audits("user.roles_changed")
    assert event.data == {"is_active": [True, False]} and event.actor_id == staff.pk

    new = "a new Passphrase 42!"
    response = client.post(
        f"{USERS}{person.pk}/password/", {"password1": new, "password2": new, "usable_password": "true"}
    )
    assert response.status_code == 302
    assert User.objects.get(pk=person.pk).check_password(new)
    assert audits("user.password_set_by_admin")[0].actor_id == staff.pk


def test_role_audit_refuses_a_grant_by_someone_who_may_not_grant_roles(make_staff, members):
    """The second lock behind the read-only fields: whatever form or door made the change."""
    from django.core.exceptions import PermissionDenied

    staff = make_staff(*HELPDESK)
    person = members[0]
    before = admin_services.user_roles_snapshot(user=person)
    person.is_staff = True
    person.save(update_fields=["is_staff"])
    with pytest.raises(PermissionDenied):
        admin_services.user_roles_audit(user=person, before=before, actor=staff)
    with pytest.raises(PermissionDenied):  # a new account with a role, too
        admin_services.user_roles_audit(user=person, before={}, actor=staff)
    assert not AuditEvent.objects.exists()
    admin_services.user_roles_audit(user=person, before=before, actor=None)  # the system may
    assert audits("user.roles_changed")[0].data == {"is_staff": [False, True]}


# --- Accounts that can do more than the operator: a superuser's to change -------------------


@pytest.mark.parametrize("whom", ["administrator", "key-manager", "disabled-key-manager"])
def test_helpdesk_cannot_change_an_account_that_can_do_more(client, make_staff, superuser, key_manager, whom):
    target = superuser if whom == "administrator" else key_manager
    if whom.startswith("disabled"):  # switching it back on would hand over what it holds
        User.objects.filter(pk=target.pk).update(is_active=False)
    client.force_login(make_staff(*HELPDESK))
    page = client.get(f"{USERS}{target.pk}/change/")
    assert page.status_code == 200 and not page.context["has_change_permission"], "shown, read-only"
    assert 'name="email"' not in page.content.decode() and 'name="_save"' not in page.content.decode()

    before = User.objects.get(pk=target.pk)
    hijack = {"username": target.username, "email": "helpdesk@example.test", "is_active": "on",
              "timezone": "UTC", "date_joined_0": "2025-01-01", "date_joined_1": "00:00:00"}  # fmt: skip
    assert client.post(f"{USERS}{target.pk}/change/", hijack).status_code == 403
    new = "a new Passphrase 42!"
    password = {"password1": new, "password2": new, "usable_password": "true"}
    assert client.post(f"{USERS}{target.pk}/password/", password).status_code == 403
    after = User.objects.get(pk=target.pk)
    assert (after.email, after.is_active, after.password) == (before.email, before.is_active, before.password)
    assert not AuditEvent.objects.exists()


def test_helpdesk_may_change_a_colleague_who_can_do_no_more(client, make_staff):
    colleague = make_staff("accounts.view_user", username="colleague")
    client.force_login(make_staff(*HELPDESK))
    new = "a new Passphrase 42!"
    response = client.post(
        f"{USERS}{colleague.pk}/password/", {"password1": new, "password2": new, "usable_password": "true"}
    )
    assert response.status_code == 302
    assert User.objects.get(pk=colleague.pk).check_password(new)


def test_a_superuser_changes_any_account(su_client, key_manager, make_user):
    root2 = make_user("root2", is_staff=True, is_superuser=True)
    for target in (key_manager, root2):
        email, groups = f"new-{target.username}@example.test", [g.pk for g in target.groups.all()] or None
        response = su_client.post(f"{USERS}{target.pk}/change/", _change_form_data(su_client, target, email=email, groups=groups))
        assert response.status_code == 302, response.context and response.context["adminform"].form.errors
        assert User.objects.get(pk=target.pk).email == email
    assert not audits("user.roles_changed"), "their roles stay as they were"


# --- Groups are roles: a superuser's to edit ------------------------------------------------

GROUPS = "/admin/auth/group/"


def test_staff_with_change_group_cannot_grant_their_own_group_permissions(client, make_user, powerful_group):
    from django.contrib.auth.models import Group, Permission

    helpdesk = Group.objects.create(name="helpdesk")
    helpdesk.permissions.add(
        *Permission.objects.filter(
            content_type__app_label="auth", codename__in=["view_group", "add_group", "change_group", "delete_group"]
        )
    )
    staff = make_user("groupie", is_staff=True)
    staff.groups.add(helpdesk)
    client.force_login(staff)
    page = client.get(f"{GROUPS}{helpdesk.pk}/change/")
    assert page.status_code == 200 and not page.context["has_change_permission"], "shown, read-only"

    superuser_perm = Permission.objects.get(codename="change_providerkey")
    before = sorted(helpdesk.permissions.values_list("pk", flat=True))
    crafted = {"name": "helpdesk", "permissions": [*before, superuser_perm.pk]}
    assert client.post(f"{GROUPS}{helpdesk.pk}/change/", crafted).status_code == 403
    assert client.post(f"{GROUPS}add/", {"name": "mine", "permissions": [superuser_perm.pk]}).status_code == 403
    assert client.post(f"{GROUPS}{powerful_group.pk}/delete/", {"post": "yes"}).status_code == 403
    assert sorted(Group.objects.get(pk=helpdesk.pk).permissions.values_list("pk", flat=True)) == before
    assert not Group.objects.filter(name="mine").exists() and Group.objects.filter(pk=powerful_group.pk).exists()
    assert not User.objects.get(pk=staff.pk).has_perm("billing.change_providerkey")
    assert not audits("group.permissions_changed")


def test_a_superuser_edits_a_groups_permissions_and_it_is_audited(su_client, superuser, powerful_group):
    from django.contrib.auth.models import Permission

    perm = Permission.objects.get(codename="view_dashboard")
    old = list(powerful_group.permissions.values_list("pk", flat=True))
    data = {"name": powerful_group.name, "permissions": [perm.pk]}
    response = su_client.post(f"{GROUPS}{powerful_group.pk}/change/", data)
    assert response.status_code == 302
    assert list(powerful_group.permissions.values_list("pk", flat=True)) == [perm.pk]
    [event] = audits("group.permissions_changed")
    assert event.data == {"added": [perm.pk], "removed": old} and event.actor_id == superuser.pk


def test_group_permission_audit_refuses_a_change_by_someone_who_may_not_grant_roles(make_staff, powerful_group):
    """The second lock behind the group admin's permissions."""
    from django.contrib.auth.models import Permission
    from django.core.exceptions import PermissionDenied

    before = list(powerful_group.permissions.values_list("pk", flat=True))
    powerful_group.permissions.add(Permission.objects.get(codename="view_dashboard"))
    with pytest.raises(PermissionDenied):
        admin_services.group_permissions_audit(
            group=powerful_group, before=before, actor=make_staff("auth.change_group")
        )
    assert not audits("group.permissions_changed")


# --- The limits on one's own spending: a superuser's to change -------------------------------

LIMITS = {"requests_per_minute", "tokens_per_minute"}
BUDGETEER = ("accounts.view_user", "billing.add_budget", "billing.change_budget")  # may run "Set a budget"
TEAMS = "/admin/accounts/team/"
# Who manages teams: the inline's rows need the membership permissions too (Django asks them of
# an inline of an explicit model).
TEAM_DESK = (
    "accounts.view_team", "accounts.change_team",
    "accounts.add_teammembership", "accounts.change_teammembership", "accounts.delete_teammembership",
)  # fmt: skip


def _limits(owner):
    owner = type(owner).objects.get(pk=owner.pk)
    return owner.requests_per_minute, owner.tokens_per_minute


def test_helpdesk_sees_their_own_rate_limits_but_a_crafted_post_changes_nothing(client, make_staff):
    staff = make_staff(*HELPDESK)
    User.objects.filter(pk=staff.pk).update(requests_per_minute=5, tokens_per_minute=1000)
    client.force_login(staff)
    page = client.get(f"{USERS}{staff.pk}/change/")
    assert page.status_code == 200
    assert not LIMITS & set(page.context["adminform"].form.fields), "shown read-only, not fields of the form"
    assert "requests per minute" in page.content.decode().lower()

    data = _change_form_data(client, staff, requests_per_minute="100000", tokens_per_minute="99999999")
    response = client.post(f"{USERS}{staff.pk}/change/", data)
    assert response.status_code == 302  # the rest of the form is fine: the limit fields are ignored
    assert _limits(staff) == (5, 1000)
    assert not audits("user.limits_changed")


def test_helpdesk_still_changes_another_accounts_rate_limits_and_it_is_audited(client, make_staff, members):
    staff = make_staff(*HELPDESK)
    client.force_login(staff)
    person = members[0]
    assert LIMITS <= set(client.get(f"{USERS}{person.pk}/change/").context["adminform"].form.fields)
    response = client.post(f"{USERS}{person.pk}/change/", _change_form_data(client, person, requests_per_minute="7"))
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    assert _limits(person) == (7, None)
    [event] = audits("user.limits_changed")
    assert (event.actor_id, event.target_id, event.data) == (staff.pk, str(person.pk), {"requests_per_minute": [None, 7]})


def test_a_superuser_changes_their_own_rate_limits(su_client, superuser):
    data = _change_form_data(su_client, superuser, requests_per_minute="500", tokens_per_minute="900000")
    response = su_client.post(f"{USERS}{superuser.pk}/change/", data)
    assert response.status_code == 302, response.context and response.context["adminform"].form.errors
    assert _limits(superuser) == (500, 900000)
    assert audits("user.limits_changed")[0].actor_id == superuser.pk


def test_limits_audit_refuses_a_change_of_ones_own_limits_by_a_non_superuser(make_staff, members):
    """The second lock behind the read-only fields, whatever form or door made the change."""
    from django.core.exceptions import PermissionDenied

    staff = make_staff(*HELPDESK)
    before = admin_services.limits_snapshot(owner=staff)
    staff.requests_per_minute = 10_000
    with pytest.raises(PermissionDenied):
        admin_services.user_limits_audit(user=staff, before=before, actor=staff)
    admin_services.user_limits_audit(user=staff, before=before, actor=None)  # the system may
    other = members[0]
    before = admin_services.limits_snapshot(owner=other)
    other.tokens_per_minute = 5
    admin_services.user_limits_audit(user=other, before=before, actor=staff)  # another's: theirs to manage
    assert sorted(e.target_id for e in audits("user.limits_changed")) == sorted([str(staff.pk), str(other.pk)])


def test_set_budget_skips_the_operators_own_account_with_a_message_and_sets_the_others(client, make_staff, members):
    staff = make_staff(*BUDGETEER)
    Budget.objects.create(user=staff, period="month", limit=Decimal("5"))
    client.force_login(staff)
    act(client, "set_budget", [staff, members[0]], apply="1", period="month", limit="900")
    messages = [str(m) for m in client.get(USERS).context["messages"]]
    assert Budget.objects.get(user=staff, period="month").limit == Decimal("5")
    assert Budget.objects.get(user=members[0], period="month").limit == Decimal("900")
    assert "You cannot set your own budget: only a superuser can." in messages
    assert "Budget set for 1 account." in messages
    assert [e.data["owner_id"] for e in audits("budget.set")] == [members[0].pk]


def test_set_budget_on_only_the_operators_own_account_sets_nothing(client, make_staff):
    staff = make_staff(*BUDGETEER)
    client.force_login(staff)
    act(client, "set_budget", [staff], apply="1", period="day", limit="900")
    messages = [str(m) for m in client.get(USERS).context["messages"]]
    assert messages == ["You cannot set your own budget: only a superuser can."]
    assert not Budget.objects.exists() and not audits("budget.set")


def test_set_budget_skips_accounts_that_outrank_the_operator_with_a_message_and_sets_the_others(
    client, make_staff, superuser, key_manager, members
):
    """Disable and Erase refuse an account that can do more than the operator: so does "Set a
    budget" (a $0 budget would lock every administrator out of the chat)."""
    staff = make_staff(*BUDGETEER)
    Budget.objects.create(user=key_manager, period="day", limit=Decimal("5"))
    client.force_login(staff)
    act(client, "set_budget", [superuser, key_manager, members[0]], apply="1", period="day", limit="0")
    messages = [str(m) for m in client.get(USERS).context["messages"]]
    assert not Budget.objects.filter(user=superuser).exists()
    assert Budget.objects.get(user=key_manager, period="day").limit == Decimal("5")
    assert Budget.objects.get(user=members[0], period="day").limit == Decimal("0")
    for name in (superuser.username, key_manager.username):
        assert (
            f"{name} is an administrator or holds permissions you do not: only a superuser can set this account's budget."
            in messages
        )
    assert "Budget set for 1 account." in messages
    assert [e.data["owner_id"] for e in audits("budget.set")] == [members[0].pk]


def test_a_superuser_sets_the_budget_of_another_superuser(su_client, make_user):
    root2 = make_user("root2", is_staff=True, is_superuser=True)
    act(su_client, "set_budget", [root2], apply="1", period="day", limit="900")
    assert Budget.objects.get(user=root2, period="day").limit == Decimal("900")


def test_a_superuser_sets_their_own_budget(su_client, superuser):
    act(su_client, "set_budget", [superuser], apply="1", period="day", limit="900")
    assert Budget.objects.get(user=superuser, period="day").limit == Decimal("900")


def _team_form_data(team, *, remove=(), add=(), **changes):
    """The team change form as the admin shows it: members in `remove` ticked for deletion,
    users in `add` on new rows, and field `changes`."""
    existing = list(TeamMembership.objects.filter(team=team).order_by("pk"))
    data = {
        "name": team.name, "requests_per_minute": team.requests_per_minute or "",
        "tokens_per_minute": team.tokens_per_minute or "", "created_at_0": "2025-01-01", "created_at_1": "00:00:00",
        "teammembership_set-TOTAL_FORMS": str(len(existing) + len(add)),
        "teammembership_set-INITIAL_FORMS": str(len(existing)),
        "teammembership_set-MIN_NUM_FORMS": "0", "teammembership_set-MAX_NUM_FORMS": "1000",
    }  # fmt: skip
    for i, m in enumerate(existing):
        data.update({f"teammembership_set-{i}-id": m.pk, f"teammembership_set-{i}-team": team.pk,
                     f"teammembership_set-{i}-user": m.user_id})  # fmt: skip
        if m.user_id in {u.pk for u in remove}:
            data[f"teammembership_set-{i}-DELETE"] = "on"
    for j, person in enumerate(add, start=len(existing)):
        data.update({f"teammembership_set-{j}-team": team.pk, f"teammembership_set-{j}-user": person.pk})
    data.update(changes)
    return data


def _member_ids(team):
    return set(TeamMembership.objects.filter(team=team).values_list("user_id", flat=True))


@pytest.mark.parametrize("how", ["deleted", "switched-to-another"])
def test_staff_cannot_leave_their_own_team_and_are_told_why(client, make_staff, make_user, teams, members, how):
    staff = make_staff(*TEAM_DESK)
    team = teams[0]
    mine = TeamMembership.objects.create(team=team, user=staff)
    before = _member_ids(team)
    client.force_login(staff)
    if how == "deleted":
        data = _team_form_data(team, remove=[staff])
    else:  # their row now names someone else: they are gone all the same
        data = _team_form_data(team)
        row = next(k for k, v in data.items() if k.endswith("-id") and v == mine.pk)
        data[row.replace("-id", "-user")] = make_user("standin").pk
    response = client.post(f"{TEAMS}{team.pk}/change/", data)
    assert response.status_code == 200
    errors = [str(e) for formset in response.context["inline_admin_formsets"] for e in formset.formset.non_form_errors()]
    assert errors == ["You cannot add yourself to a team or remove yourself from one: only a superuser can."]
    assert _member_ids(team) == before
    assert not audits("team.member_removed")


def test_staff_cannot_join_a_team(client, make_staff, teams):
    staff = make_staff(*TEAM_DESK)
    team = teams[1]
    before = _member_ids(team)
    client.force_login(staff)
    response = client.post(f"{TEAMS}{team.pk}/change/", _team_form_data(team, add=[staff]))
    assert response.status_code == 200
    assert _member_ids(team) == before and not audits("team.member_added")


def test_staff_cannot_change_the_limits_of_their_own_team(client, make_staff, teams):
    staff = make_staff(*TEAM_DESK)
    team = teams[0]
    Team.objects.filter(pk=team.pk).update(requests_per_minute=3)
    team.refresh_from_db()
    TeamMembership.objects.create(team=team, user=staff)
    client.force_login(staff)
    page = client.get(f"{TEAMS}{team.pk}/change/")
    assert not LIMITS & set(page.context["adminform"].form.fields), "shown read-only, not fields of the form"
    response = client.post(
        f"{TEAMS}{team.pk}/change/", _team_form_data(team, requests_per_minute="900", tokens_per_minute="")
    )
    assert response.status_code == 302  # the rest of the form is fine: the limit fields are ignored
    assert _limits(team) == (3, None)
    assert not audits("team.limits_changed")


def test_staff_still_manage_the_members_and_limits_of_a_team_they_are_not_in(client, make_staff, teams, members, make_user):
    staff = make_staff(*TEAM_DESK)
    team = teams[0]
    TeamMembership.objects.create(team=teams[1], user=staff)  # in another team: no matter here
    newcomer = make_user("newcomer")
    leaving = members[0]
    client.force_login(staff)
    data = _team_form_data(team, remove=[leaving], add=[newcomer], requests_per_minute="9")
    response = client.post(f"{TEAMS}{team.pk}/change/", data)
    assert response.status_code == 302, response.context and response.context["errors"]
    assert leaving.pk not in _member_ids(team) and newcomer.pk in _member_ids(team)
    assert _limits(team) == (9, None)
    [event] = audits("team.limits_changed")
    assert event.actor_id == staff.pk and event.data == {"requests_per_minute": [None, 9]}


def test_staff_may_remove_another_member_of_their_own_team(client, make_staff, teams, members):
    staff = make_staff(*TEAM_DESK)
    team = teams[0]
    TeamMembership.objects.create(team=team, user=staff)
    client.force_login(staff)
    response = client.post(f"{TEAMS}{team.pk}/change/", _team_form_data(team, remove=[members[0]]))
    assert response.status_code == 302, response.context and response.context["errors"]
    assert _member_ids(team) == {staff.pk, members[2].pk}


def test_a_superuser_leaves_their_own_team_and_changes_its_limits(su_client, superuser, teams):
    team = teams[0]
    TeamMembership.objects.create(team=team, user=superuser)
    response = su_client.post(f"{TEAMS}{team.pk}/change/", _team_form_data(team, remove=[superuser], tokens_per_minute="50"))
    assert response.status_code == 302, response.context and response.context["errors"]
    assert superuser.pk not in _member_ids(team) and _limits(team) == (None, 50)
    assert audits("team.member_removed")[0].data == {"user_id": superuser.pk}


@pytest.mark.parametrize(
    "colleague, kept",
    [
        (dict(requests_per_minute=5, tokens_per_minute=1000), lambda team: _limits(team) == (5, 1000)),
        (dict(name="Physics (old)"), lambda team: Team.objects.get(pk=team.pk).name == "Physics (old)"),
    ],
)
def test_saving_a_team_page_opened_before_a_colleagues_change_keeps_that_change(su_client, teams, members, colleague, kept):
    # One operator tightens the team's limits (or renames it) while another has its page open to
    # rename it (or to set a limit): that page's save must apply only what its operator changed.
    team = teams[0]
    data = page_form(su_client, f"{TEAMS}{team.pk}/change/", "team_form")
    Team.objects.filter(pk=team.pk).update(**colleague)
    if "name" in colleague:
        data["tokens_per_minute"] = "777"
    else:
        data["name"] = "Physics lab"
    response = su_client.post(f"{TEAMS}{team.pk}/change/", data)
    assert response.status_code == 302, response.context and response.context["errors"]
    team.refresh_from_db()
    assert kept(team)
    assert team.name == "Physics lab" if "name" not in colleague else team.tokens_per_minute == 777
    assert {m.pk for m in team.members.all()} == {members[0].pk, members[2].pk}


def test_a_change_made_on_the_team_page_is_still_applied(su_client, teams):
    team = teams[0]
    Team.objects.filter(pk=team.pk).update(requests_per_minute=5)
    data = page_form(su_client, f"{TEAMS}{team.pk}/change/", "team_form")
    data["requests_per_minute"] = ""  # emptied on the page: no team limit
    assert su_client.post(f"{TEAMS}{team.pk}/change/", data).status_code == 302
    assert _limits(team) == (None, None)


def _member_row(data, person) -> str:
    """The name of the page's input holding `person` as a member (…-N-user)."""
    return next(k for k, v in data.items() if k.endswith("-user") and "__prefix__" not in k and v == str(person.pk))


@pytest.mark.parametrize("row", ["left-as-shown", "also-ticked-for-removal"])
def test_saving_a_team_page_after_a_colleague_removed_a_member_saves_the_rest_and_says_so(
    su_client, teams, members, make_user, row
):
    # A colleague (or the same operator in another tab) removes member0 while the page is open.
    # Its save was refused with "Please correct the error below." and no error anywhere below:
    # the error sat on the row's hidden id. Now the rest is saved and the removal stands.
    team = teams[0]
    newcomer = make_user("newcomer")
    data = page_form(su_client, f"{TEAMS}{team.pk}/change/", "team_form")
    TeamMembership.objects.filter(team=team, user=members[0]).delete()
    if row == "also-ticked-for-removal":
        data[_member_row(data, members[0]).replace("-user", "-DELETE")] = "on"
    data["name"] = "Physics lab"
    data["teammembership_set-2-user"] = str(newcomer.pk)  # the page's empty row
    response = su_client.post(f"{TEAMS}{team.pk}/change/", data, follow=True)
    assert response.redirect_chain, response.context and response.context["errors"]
    assert Team.objects.get(pk=team.pk).name == "Physics lab"
    assert _member_ids(team) == {members[2].pk, newcomer.pk}
    said = [str(m) for m in response.context["messages"]]
    gone_note = [m for m in said if "member0" in m]
    if row == "left-as-shown":  # the page still listed them: the operator hears they are gone
        assert gone_note == [
            "member0 had already been removed from this team by someone else after this page was opened; "
            "the rest of your changes were saved."
        ]
    else:  # they were removing them anyway
        assert gone_note == []


def test_a_member_row_given_to_another_account_after_a_colleague_removed_it_is_refused_in_words(
    su_client, teams, members, make_user
):
    # The row's membership is gone, so the operator's change to it cannot be saved as such: said
    # above the members, in the page, not on a hidden input, and nothing is saved.
    team = teams[0]
    newcomer = make_user("newcomer")
    data = page_form(su_client, f"{TEAMS}{team.pk}/change/", "team_form")
    TeamMembership.objects.filter(team=team, user=members[0]).delete()
    data[_member_row(data, members[0])] = str(newcomer.pk)
    data["name"] = "Physics lab"
    response = su_client.post(f"{TEAMS}{team.pk}/change/", data)
    assert response.status_code == 200
    html = response.content.decode()
    assert (
        "member0 was removed from this team by someone else after this page was opened, so their row cannot "
        "be changed to another account: add that account on a new row."
    ) in html
    assert Team.objects.get(pk=team.pk).name == "Physics" and _member_ids(team) == {members[2].pk}


def test_staff_cannot_delete_their_own_team_but_may_delete_another(client, make_staff, teams, members):
    staff = make_staff("accounts.view_team", "accounts.delete_team")
    mine, other = teams
    TeamMembership.objects.create(team=mine, user=staff)
    client.force_login(staff)
    assert client.get(f"{TEAMS}{mine.pk}/delete/").status_code == 403
    assert client.post(f"{TEAMS}{mine.pk}/delete/", {"post": "yes"}).status_code == 403
    selection = {"action": "delete_selected", ACTION_CHECKBOX_NAME: [mine.pk, other.pk]}
    page = client.post(TEAMS, selection)
    assert page.status_code == 200 and page.context["perms_lacking"]
    assert "You cannot delete a team you belong to: only a superuser can." in [str(m) for m in page.context["messages"]]
    assert client.post(TEAMS, {**selection, "post": "yes"}).status_code == 403
    assert Team.objects.filter(pk__in=[mine.pk, other.pk]).count() == 2 and not audits("team.delete")

    assert client.post(f"{TEAMS}{other.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not Team.objects.filter(pk=other.pk).exists()


def test_team_services_refuse_the_operator_changing_their_own_membership_or_deleting_their_team(make_staff, teams):
    from accounts import services

    staff = make_staff(*TEAM_DESK, "accounts.delete_team")
    mine, other = teams
    TeamMembership.objects.create(team=mine, user=staff)
    with pytest.raises(admin_services.ConstrainsOperator):
        services.team_remove_member(team=mine, user=staff, actor=staff)
    with pytest.raises(admin_services.ConstrainsOperator):
        services.team_add_member(team=other, user=staff, actor=staff)
    with pytest.raises(admin_services.ConstrainsOperator):
        services.team_delete(team=mine, actor=staff)
    assert _member_ids(mine) == {staff.pk} and _member_ids(other) == set()
    assert Team.objects.filter(pk=mine.pk).exists() and not AuditEvent.objects.exists()
    services.team_remove_member(team=mine, user=staff, actor=None)  # the system may
    assert _member_ids(mine) == set()


def test_team_audits_refuse_the_operators_own_membership_or_team_limits_whatever_the_door(make_staff, teams):
    """The second lock behind the membership form and the read-only team limits."""
    staff = make_staff(*TEAM_DESK)
    mine = teams[0]
    TeamMembership.objects.create(team=mine, user=staff)  # as a save that slipped through would have
    with pytest.raises(admin_services.ConstrainsOperator):  # joined
        admin_services.team_members_audit(team=mine, before=[], actor=staff)
    TeamMembership.objects.filter(team=mine, user=staff).delete()
    with pytest.raises(admin_services.ConstrainsOperator):  # left
        admin_services.team_members_audit(team=mine, before=[staff.pk], actor=staff)

    TeamMembership.objects.create(team=mine, user=staff)
    before = admin_services.limits_snapshot(owner=mine)
    mine.requests_per_minute = 10_000
    with pytest.raises(admin_services.ConstrainsOperator):
        admin_services.team_limits_audit(team=mine, before=before, actor=staff)
    admin_services.team_limits_audit(team=mine, before=before, actor=None)  # the system may
    assert [e.action for e in AuditEvent.objects.all()] == ["team.limits_changed"]


def test_the_admin_refuses_a_username_or_email_taken_in_another_letter_case_in_any_script(su_client, make_user, members):
    """Sign-up's rule (accounts.services.identity_taken): on SQLite, whose LOWER folds ASCII only,
    Django's own forms let "Émile" in beside "émile"."""
    make_user("émile", email="mina@exämple.org")
    count = User.objects.count()

    response = su_client.post(
        f"{USERS}add/",
        {"username": "ÉMILE", "usable_password": "true", "password1": "a new Passphrase 42!", "password2": "a new Passphrase 42!"},
    )
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["username"] == ["This username is already taken."]

    person = members[0]
    response = su_client.post(f"{USERS}{person.pk}/change/", _change_form_data(su_client, person, username="Émile"))
    assert response.context["adminform"].form.errors["username"] == ["This username is already taken."]
    response = su_client.post(f"{USERS}{person.pk}/change/", _change_form_data(su_client, person, email="MINA@EXÄMPLE.ORG"))
    assert response.context["adminform"].form.errors["email"] == ["An account with this email address already exists."]
    assert User.objects.count() == count
    assert User.objects.get(pk=person.pk).username == person.username

    # Saving an account under its own name, in another case, is a rename, not a clash.
    response = su_client.post(f"{USERS}{person.pk}/change/", _change_form_data(su_client, person, username=person.username.upper()))
    assert response.status_code == 302


# --- Memberships of accounts that can do more than the operator: a superuser's to change -------


OUTRANKS_TEAM = (
    "{} is an administrator or holds permissions you do not: only a superuser can add this account to a team or "
    "remove it from one."
)


@pytest.mark.parametrize("how", ["add-superuser", "remove-superuser", "add-key-manager", "switch-to-superuser"])
def test_team_clerk_cannot_add_or_remove_an_account_that_outranks_them_and_is_told_why(
    client, make_staff, superuser, key_manager, teams, members, how
):
    """Joining a team puts its limits and budgets on an account (a team held to 1 request a
    minute); leaving one lifts them. For an account that can do more than the operator, either
    is a superuser's to do."""
    staff = make_staff(*TEAM_DESK)
    team = teams[0]
    if how == "remove-superuser":
        TeamMembership.objects.create(team=team, user=superuser)
    before = _member_ids(team)
    client.force_login(staff)
    target = key_manager if how == "add-key-manager" else superuser
    if how == "remove-superuser":
        data = _team_form_data(team, remove=[superuser], requests_per_minute="1")
    elif how == "switch-to-superuser":  # a member's row now names the superuser
        data = _team_form_data(team)
        row = next(k for k, v in data.items() if k.endswith("-user") and v == members[0].pk)
        data[row] = superuser.pk
    else:
        data = _team_form_data(team, add=[target], requests_per_minute="1")
    response = client.post(f"{TEAMS}{team.pk}/change/", data)
    assert response.status_code == 200
    errors = [str(e) for formset in response.context["inline_admin_formsets"] for e in formset.formset.non_form_errors()]
    assert errors == [OUTRANKS_TEAM.format(target.username)]
    assert _member_ids(team) == before and _limits(team) == (None, None)
    assert not AuditEvent.objects.exists()


def test_team_limits_and_budgets_bind_a_superuser_member_and_stay_the_team_clerks(client, make_staff, superuser, teams):
    """A team's own limits hold every member, superusers included: a team with a superuser in it
    is managed as any other, members who do not outrank the operator included."""
    from billing.budgets import budget_set

    staff = make_staff(*TEAM_DESK, "billing.add_budget", "billing.change_budget")
    team = teams[0]
    TeamMembership.objects.create(team=team, user=superuser)
    newcomer = User.objects.create_user("newcomer")
    client.force_login(staff)
    response = client.post(f"{TEAMS}{team.pk}/change/", _team_form_data(team, add=[newcomer], requests_per_minute="1"))
    assert response.status_code == 302, response.context and response.context["errors"]
    assert _member_ids(team) == {superuser.pk, newcomer.pk} and _limits(team) == (1, None)
    assert budget_set(team=team, period="day", limit="0", actor=staff).limit == Decimal("0")


def test_a_superuser_adds_and_removes_a_superuser_in_a_team(su_client, make_user, teams):
    root2 = make_user("root2", is_staff=True, is_superuser=True)
    team = teams[0]
    response = su_client.post(f"{TEAMS}{team.pk}/change/", _team_form_data(team, add=[root2]))
    assert response.status_code == 302, response.context and response.context["errors"]
    assert _member_ids(team) == {root2.pk}
    response = su_client.post(f"{TEAMS}{team.pk}/change/", _team_form_data(team, remove=[root2]))
    assert response.status_code == 302 and _member_ids(team) == set()


def test_team_services_and_audit_refuse_memberships_of_accounts_that_outrank_the_operator(
    make_staff, superuser, key_manager, teams
):
    """Whatever the door: the services, and the second lock behind the membership form."""
    from accounts import services

    staff = make_staff(*TEAM_DESK)
    team, other = teams
    TeamMembership.objects.create(team=team, user=superuser)
    with pytest.raises(admin_services.OutranksOperator):
        services.team_remove_member(team=team, user=superuser, actor=staff)
    for person in (superuser, key_manager):
        with pytest.raises(admin_services.OutranksOperator):
            services.team_add_member(team=other, user=person, actor=staff)
    assert _member_ids(team) == {superuser.pk} and _member_ids(other) == set()
    TeamMembership.objects.create(team=other, user=key_manager)  # as a save that slipped through would have
    with pytest.raises(admin_services.OutranksOperator) as refused:
        admin_services.team_members_audit(team=other, before=[], actor=staff)
    assert refused.value.users == [key_manager]
    assert not AuditEvent.objects.exists()

    services.team_add_member(team=other, user=superuser, actor=None)  # the system may
    services.team_remove_member(team=team, user=superuser, actor=superuser)  # and a superuser
    assert _member_ids(team) == set() and superuser.pk in _member_ids(other)


def test_user_list_shows_a_budget_whose_period_ended_as_fresh(su_client, members):
    """Yesterday's spend of a day budget is not today's: the list reads the current period, as
    the budget check and the user's usage page do."""
    yesterday = timezone.now() - datetime.timedelta(days=1, hours=1)
    Budget.objects.create(user=members[0], period="day", limit=Decimal("5"), spent=Decimal("5"), period_start=yesterday)
    html = su_client.get(USERS).content.decode()
    assert "$0.00 / $5.00 ($5.00 left)" in html


@pytest.mark.parametrize(
    ("zone", "now"),
    [
        # 20:00 on 30 June in Los Angeles: the UTC month (July) began four hours ago.
        ("America/Los_Angeles", datetime.datetime(2025, 7, 1, 3, 0, tzinfo=datetime.UTC)),
        # 02:00 on 1 July in Kiritimati (UTC+14): the UTC month is still June.
        ("Pacific/Kiritimati", datetime.datetime(2025, 6, 30, 12, 0, tzinfo=datetime.UTC)),
    ],
)
def test_spend_this_month_is_the_utc_month_of_the_rollup_whatever_the_operators_zone(
    client, superuser, make_user, monkeypatch, zone, now
):
    """The rollup is kept by UTC day (billing.ledger), like the dashboard's "month": the list
    must not cut it at the operator's own midnight."""
    from billing import ledger

    superuser.timezone = zone
    superuser.save(update_fields=["timezone"])
    spender = make_user("spender")
    for at, cost in ((now.replace(day=1, hour=0) - datetime.timedelta(days=1), "100"), (now - datetime.timedelta(hours=1), "1.25")):
        ledger.usage_record(
            user=spender, conversation_id=None, message_id=None, attempt=1, provider="openai",
            model="gpt-4o-mini", key_id=None, input_tokens=1000, output_tokens=500, cached_tokens=0,
            cost=Decimal(cost), estimated=False, ttft_ms=100, latency_ms=900, outcome="ok", at=at,
        )  # fmt: skip
    monkeypatch.setattr(timezone, "now", lambda: now)
    client.force_login(superuser)
    response = client.get(USERS, {"q": "spender"})
    (row,) = [u for u in response.context["cl"].result_list if u.username == "spender"]
    assert row.month_spend == Decimal("1.25")


def test_the_user_and_team_lists_show_a_spend_under_a_cent_as_the_budget_list_does(su_client, members, teams):
    # The budget list showed $0.0010192 spent; the user and team lists said $0.00 for it.
    from billing import ledger

    Budget.objects.create(
        user=members[0], period="month", limit=Decimal("3"), spent=Decimal("0.0010192"), period_start=timezone.now()
    )
    ledger.usage_record(
        user=members[0], conversation_id=None, message_id=None, attempt=1, provider="openai",
        model="gpt-4o-mini", key_id=None, input_tokens=1000, output_tokens=500, cached_tokens=0,
        cost=Decimal("0.0010192"), estimated=False, ttft_ms=100, latency_ms=900, outcome="ok",
    )  # fmt: skip
    users = su_client.get(USERS, {"q": members[0].username}).content.decode()
    assert "$0.0010192</td>" in users
    assert "$0.0010192 / $3.00 ($3.00 left)" in users
    assert "$0.0010192" in su_client.get("/admin/billing/budget/").content.decode()
    assert "$0.0010192</td>" in su_client.get(TEAMS, {"q": teams[0].name}).content.decode()
