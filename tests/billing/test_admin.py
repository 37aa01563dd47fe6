from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME

from accounts.models import AuditEvent
from billing.models import Budget, ModelPrice
from billing.prices import price_for
from tests.formpage import page_form

D = Decimal

PRICE_FORM = {
    "provider": "openai",
    "model": "gpt-4o",
    "label": "GPT-4o",
    "input_per_million": "2.00",
    "output_per_million": "9.00",
    "cached_input_per_million": "",
    "context_window": "128000",
    "max_output_tokens": "16384",
    "enabled": "on",
    "effective_from_0": "2025-01-01",
    "effective_from_1": "00:00:00",
}


def test_price_and_budget_lists_load(admin_client, user):
    from billing.budgets import budget_set

    budget_set(user=user, period="day", limit="3")
    assert admin_client.get("/admin/billing/modelprice/").status_code == 200
    assert admin_client.get("/admin/billing/budget/").status_code == 200
    assert admin_client.get(f"/admin/billing/budget/{Budget.objects.get().pk}/change/").status_code == 200


def test_editing_a_price_in_the_admin_adds_a_new_version_through_the_service(admin_client):
    seeded = ModelPrice.objects.get(provider="openai", model="gpt-4o")
    response = admin_client.post(f"/admin/billing/modelprice/{seeded.pk}/change/", PRICE_FORM)
    assert response.status_code == 302, response.content.decode()[:2000]

    seeded.refresh_from_db()
    assert seeded.input_per_million == D("2.5")  # history untouched
    assert price_for(model_id="openai:gpt-4o").input_per_million == D("2")
    assert AuditEvent.objects.get(action="price.set").actor_id is not None


def test_the_admin_refuses_a_negative_price(admin_client):
    count = ModelPrice.objects.count()
    response = admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, "input_per_million": "-1"})
    assert response.status_code == 200  # the form again, with the error
    assert ModelPrice.objects.count() == count


def test_the_admin_refuses_a_price_with_more_places_than_stored_and_takes_trailing_zeros(admin_client):
    count = ModelPrice.objects.count()
    for field in ("input_per_million", "output_per_million", "cached_input_per_million"):
        response = admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, "model": "tiny", field: "0.0000004"})
        html = response.content.decode()
        assert response.status_code == 200 and "6 decimal places" in html and "price is required" not in html
    assert ModelPrice.objects.count() == count and price_for(model_id="openai:tiny") is None
    response = admin_client.post(
        "/admin/billing/modelprice/add/",
        {**PRICE_FORM, "model": "tiny", "input_per_million": "1.50000000", "cached_input_per_million": "0.7500000"},
    )
    assert response.status_code == 302
    quote = price_for(model_id="openai:tiny")
    assert (quote.input_per_million, quote.cached_input_per_million) == (D("1.5"), D("0.75"))


def test_prices_cannot_be_deleted(admin_client):
    seeded = ModelPrice.objects.first()
    assert admin_client.get(f"/admin/billing/modelprice/{seeded.pk}/delete/").status_code == 403


def test_budget_admin_saves_and_deletes_through_the_service_with_audit(admin_client, user):
    response = admin_client.post(
        "/admin/billing/budget/add/", {"user": str(user.pk), "team": "", "period": "week", "limit": "7.5", "warn_ratio": "0.8"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    budget = Budget.objects.get()
    assert (budget.limit, budget.period, budget.time_zone) == (D("7.5"), "week", "UTC")
    assert AuditEvent.objects.filter(action="budget.set").count() == 1

    response = admin_client.post(f"/admin/billing/budget/{budget.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Budget.objects.exists()
    assert AuditEvent.objects.filter(action="budget.delete").count() == 1


def test_budget_admin_refuses_a_negative_limit(admin_client, user):
    response = admin_client.post(
        "/admin/billing/budget/add/", {"user": str(user.pk), "team": "", "period": "week", "limit": "-1", "warn_ratio": "0.8"}
    )
    assert response.status_code == 200
    assert not Budget.objects.exists()


def test_the_admin_refuses_a_cached_price_above_the_input_price(admin_client):
    count = ModelPrice.objects.count()
    response = admin_client.post(
        "/admin/billing/modelprice/add/", {**PRICE_FORM, "cached_input_per_million": "2.5", "effective_from_0": "2025-06-01"}
    )
    assert response.status_code == 200
    assert "The cached input price cannot be above the input price." in response.content.decode()
    assert ModelPrice.objects.count() == count


def test_editing_a_scheduled_price_in_the_admin_changes_that_scheduled_price(admin_client):
    """A price not yet in force is not history (no call used it): saving it again at the same
    moment corrects it, where it used to fail with a 500."""
    import datetime as dt

    from django.utils import timezone

    from billing.prices import price_set

    later = (timezone.now() + dt.timedelta(days=3)).replace(microsecond=0)
    scheduled = price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", effective_from=later)
    local = timezone.localtime(later)
    form = {
        **PRICE_FORM,
        "input_per_million": "1.5",
        "effective_from_0": local.strftime("%Y-%m-%d"),
        "effective_from_1": local.strftime("%H:%M:%S"),
    }
    count = ModelPrice.objects.count()
    response = admin_client.post(f"/admin/billing/modelprice/{scheduled.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]

    assert ModelPrice.objects.count() == count
    assert price_for(model_id="openai:gpt-4o", at=later).input_per_million == D("1.5")
    assert price_for(model_id="openai:gpt-4o").input_per_million == D("2.5")  # today's price untouched
    assert AuditEvent.objects.filter(action="price.set").count() == 2


def _scheduled(days: int, input_price: str = "1"):
    import datetime as dt

    from django.utils import timezone

    from billing.prices import price_set

    moment = (timezone.now() + dt.timedelta(days=days)).replace(microsecond=0)
    return price_set(model_id="openai:gpt-4o", input_per_million=input_price, output_per_million="2", effective_from=moment)


def _moment_fields(moment) -> dict:
    from django.utils import timezone

    local = timezone.localtime(moment)
    return {"effective_from_0": local.strftime("%Y-%m-%d"), "effective_from_1": local.strftime("%H:%M:%S")}


def test_moving_a_scheduled_price_in_the_admin_moves_it_instead_of_scheduling_it_twice(admin_client):
    import datetime as dt

    scheduled = _scheduled(days=3)
    later = scheduled.effective_from + dt.timedelta(days=4)
    count = ModelPrice.objects.count()

    response = admin_client.post(
        f"/admin/billing/modelprice/{scheduled.pk}/change/", {**PRICE_FORM, "input_per_million": "1.5", **_moment_fields(later)}
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    assert ModelPrice.objects.count() == count  # moved, not added beside it
    assert not ModelPrice.objects.filter(pk=scheduled.pk).exists()
    # Between the old moment and the new one, today's price still holds.
    assert price_for(model_id="openai:gpt-4o", at=scheduled.effective_from + dt.timedelta(days=1)).input_per_million == D("2.5")
    assert price_for(model_id="openai:gpt-4o", at=later).input_per_million == D("1.5")
    moves = [e.data.get("moved_from") for e in AuditEvent.objects.filter(action="price.set")]
    assert moves.count(scheduled.effective_from.isoformat()) == 1


def test_moving_a_scheduled_price_to_a_past_moment_puts_it_in_force_now_once(admin_client):
    scheduled = _scheduled(days=3, input_price="1.25")
    count = ModelPrice.objects.count()

    response = admin_client.post(f"/admin/billing/modelprice/{scheduled.pk}/change/", {**PRICE_FORM, "input_per_million": "1.25"})

    assert response.status_code == 302, response.content.decode()[:2000]
    assert ModelPrice.objects.count() == count
    assert price_for(model_id="openai:gpt-4o").input_per_million == D("1.25")


def test_adding_a_price_at_the_moment_an_older_price_started_puts_it_in_force_now(admin_client):
    # The page said "Model price with this Provider, Model and Effective from already exists.":
    # a moment that has passed is never written, the new price starts now, so nothing clashes.
    seeded = ModelPrice.objects.get(provider="openai", model="gpt-4o")
    response = admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, **_moment_fields(seeded.effective_from)})
    assert response.status_code == 302, _form_errors(response)
    assert price_for(model_id="openai:gpt-4o").input_per_million == D("2")
    seeded.refresh_from_db()
    assert seeded.input_per_million == D("2.5")  # history untouched


def test_adding_a_price_at_the_moment_of_a_scheduled_one_replaces_it_and_says_so(admin_client):
    # A price not in force yet is not history (no call used it): the new one takes its place, as
    # set_price does, and the page says which it replaced rather than that it "already exists".
    scheduled = _scheduled(days=3)
    count = ModelPrice.objects.count()
    response = admin_client.post(
        "/admin/billing/modelprice/add/",
        {**PRICE_FORM, "input_per_million": "1.75", **_moment_fields(scheduled.effective_from)},
        follow=True,
    )
    assert response.redirect_chain, _form_errors(response)
    assert ModelPrice.objects.count() == count
    assert price_for(model_id="openai:gpt-4o", at=scheduled.effective_from).input_per_million == D("1.75")
    said = " ".join(str(m) for m in response.context["messages"])
    assert "replaces the price scheduled for that moment" in said


def test_editing_a_price_in_force_keeps_it_as_history_and_cannot_change_its_model(admin_client):
    seeded = ModelPrice.objects.get(provider="openai", model="gpt-4o")
    page = admin_client.get(f"/admin/billing/modelprice/{seeded.pk}/change/").content.decode()
    assert 'name="model"' not in page and 'name="provider"' not in page

    # A crafted form naming another model changes this model's price, and only that.
    response = admin_client.post(
        f"/admin/billing/modelprice/{seeded.pk}/change/", {**PRICE_FORM, "provider": "anthropic", "model": "x-1"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert price_for(model_id="openai:gpt-4o").input_per_million == D("2")
    assert price_for(model_id="anthropic:x-1") is None
    seeded.refresh_from_db()
    assert seeded.input_per_million == D("2.5")


def test_a_scheduled_price_can_be_deleted_but_a_price_in_force_cannot(admin_client):
    import datetime as dt

    scheduled = _scheduled(days=3)
    seeded = ModelPrice.objects.get(provider="openai", model="gpt-4o", effective_from__lte=scheduled.created_at)

    assert admin_client.get(f"/admin/billing/modelprice/{seeded.pk}/delete/").status_code == 403
    assert admin_client.post(f"/admin/billing/modelprice/{seeded.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ModelPrice.objects.filter(pk=seeded.pk).exists()

    response = admin_client.post(f"/admin/billing/modelprice/{scheduled.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not ModelPrice.objects.filter(pk=scheduled.pk).exists()
    assert price_for(model_id="openai:gpt-4o", at=scheduled.effective_from + dt.timedelta(days=1)).input_per_million == D("2.5")
    assert AuditEvent.objects.filter(action="price.unschedule").count() == 1
    # The bulk action stays off: it would reach prices in force.
    assert "delete_selected" not in admin_client.get("/admin/billing/modelprice/").content.decode()


def test_unscheduling_a_price_that_came_into_force_is_refused_and_changes_nothing(db):
    import datetime as dt

    import pytest

    from billing.prices import PriceError, price_unschedule

    scheduled = _scheduled(days=3)
    ModelPrice.objects.filter(pk=scheduled.pk).update(effective_from=scheduled.effective_from - dt.timedelta(days=4))
    with pytest.raises(PriceError):
        price_unschedule(price_id=scheduled.pk)
    assert ModelPrice.objects.filter(pk=scheduled.pk).exists()
    assert not AuditEvent.objects.filter(action="price.unschedule").exists()


# --- A budget covering the operator is a superuser's to change --------------------------------

BUDGETS = "/admin/billing/budget/"
BUDGET_DESK = ("billing.view_budget", "billing.add_budget", "billing.change_budget", "billing.delete_budget")
COVERS_YOU = "This budget applies to you (it is yours, or your team&#x27;s): only a superuser can set, change or remove it."


@pytest.fixture
def budget_staff(make_staff, make_team, user, client):
    """Staff who manage budgets, in team Physics with alice; their own and their team's budgets."""
    from billing.budgets import budget_set

    staff = make_staff(*BUDGET_DESK)
    physics = make_team("Physics", staff, user)
    budget_set(user=staff, period="month", limit="5")
    budget_set(team=physics, period="month", limit="50")
    client.force_login(staff)
    return staff, physics


def _limits():
    return sorted((b.scope, b.period, b.limit) for b in Budget.objects.all())


@pytest.mark.parametrize("whose", ["own", "team"])
def test_staff_cannot_add_a_budget_covering_themselves_and_are_told_why(client, budget_staff, whose):
    staff, physics = budget_staff
    before = _limits()
    owner = {"user": str(staff.pk), "team": ""} if whose == "own" else {"user": "", "team": str(physics.pk)}
    response = client.post(f"{BUDGETS}add/", {**owner, "period": "day", "limit": "900", "warn_ratio": "0.8"})
    assert response.status_code == 200
    assert COVERS_YOU in response.content.decode()
    assert _limits() == before and not AuditEvent.objects.filter(action="budget.set", actor_id=staff.pk).exists()


@pytest.mark.parametrize("whose", ["user", "team"])
def test_staff_cannot_raise_or_delete_a_budget_covering_themselves(client, budget_staff, whose):
    staff, _physics = budget_staff
    budget = Budget.objects.get(**({"user": staff} if whose == "user" else {"team__isnull": False}))
    before = _limits()
    page = client.get(f"{BUDGETS}{budget.pk}/change/")
    assert page.status_code == 200 and not page.context["has_change_permission"], "shown, read-only"
    assert 'name="limit"' not in page.content.decode()
    assert client.post(f"{BUDGETS}{budget.pk}/change/", {"limit": "900", "warn_ratio": "0.8"}).status_code == 403
    assert client.post(f"{BUDGETS}{budget.pk}/delete/", {"post": "yes"}).status_code == 403

    selection = {"action": "delete_selected", ACTION_CHECKBOX_NAME: [budget.pk]}
    page = client.post(BUDGETS, selection)
    assert page.status_code == 200 and page.context["perms_lacking"]
    assert COVERS_YOU.replace("&#x27;", "'") in [str(m) for m in page.context["messages"]]
    assert client.post(BUDGETS, {**selection, "post": "yes"}).status_code == 403
    assert _limits() == before
    assert not AuditEvent.objects.filter(actor_id=staff.pk).exists()


def test_staff_still_set_change_and_delete_the_budgets_of_others(client, budget_staff, make_user, make_team):
    staff, _physics = budget_staff
    other = make_user("bob")
    chemistry = make_team("Chemistry", other)
    for owner in ({"user": str(other.pk), "team": ""}, {"user": "", "team": str(chemistry.pk)}):
        response = client.post(f"{BUDGETS}add/", {**owner, "period": "week", "limit": "9", "warn_ratio": "0.8"})
        assert response.status_code == 302, response.content.decode()[:2000]
    theirs = Budget.objects.get(user=other)
    response = client.post(f"{BUDGETS}{theirs.pk}/change/", {"limit": "12", "warn_ratio": "0.8"})
    assert response.status_code == 302
    assert Budget.objects.get(pk=theirs.pk).limit == D("12")
    response = client.post(
        BUDGETS, {"action": "delete_selected", ACTION_CHECKBOX_NAME: [theirs.pk, Budget.objects.get(team=chemistry).pk], "post": "yes"}
    )
    assert response.status_code == 302
    assert not Budget.objects.filter(user=other).exists() and not Budget.objects.filter(team=chemistry).exists()
    assert AuditEvent.objects.filter(action="budget.delete", actor_id=staff.pk).count() == 2


def test_a_superuser_changes_and_deletes_their_own_and_their_teams_budgets(admin_client, admin_user, make_team):
    from billing.budgets import budget_set

    team = make_team("Physics", admin_user)
    own = budget_set(user=admin_user, period="month", limit="5")
    response = admin_client.post(f"{BUDGETS}{own.pk}/change/", {"limit": "900", "warn_ratio": "0.8"})
    assert response.status_code == 302
    assert Budget.objects.get(pk=own.pk).limit == D("900")
    response = admin_client.post(
        f"{BUDGETS}add/", {"user": "", "team": str(team.pk), "period": "day", "limit": "70", "warn_ratio": "0.8"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    selection = [own.pk, Budget.objects.get(team=team).pk]
    response = admin_client.post(BUDGETS, {"action": "delete_selected", ACTION_CHECKBOX_NAME: selection, "post": "yes"})
    assert response.status_code == 302 and not Budget.objects.exists()


@pytest.mark.parametrize(
    "colleague, mine, expected",
    [
        ({"limit": "50"}, {"warn_ratio": "0.9"}, (D("50"), D("0.9"))),
        ({"warn_ratio": "0.5"}, {"limit": "20"}, (D("20"), D("0.5"))),
    ],
)
def test_saving_a_budget_page_opened_before_a_colleagues_change_keeps_that_change(admin_client, user, colleague, mine, expected):
    # A colleague raised the limit (or changed the warning) while this page was open: saving the
    # page's own change must not put the old limit back.
    from billing.budgets import budget_set

    budget = budget_set(user=user, period="month", limit="10")
    data = page_form(admin_client, f"{BUDGETS}{budget.pk}/change/", "budget_form")
    budget_set(user=user, period="month", **{"limit": "10", **colleague})
    response = admin_client.post(f"{BUDGETS}{budget.pk}/change/", {**data, **mine})
    assert response.status_code == 302, response.content.decode()[:2000]
    budget.refresh_from_db()
    assert (budget.limit, budget.warn_ratio) == expected


def test_a_limit_changed_on_the_budget_page_is_still_applied(admin_client, user):
    from billing.budgets import budget_set

    budget = budget_set(user=user, period="month", limit="10")
    data = page_form(admin_client, f"{BUDGETS}{budget.pk}/change/", "budget_form")
    assert admin_client.post(f"{BUDGETS}{budget.pk}/change/", {**data, "limit": "0"}).status_code == 302
    assert Budget.objects.get(pk=budget.pk).limit == D("0")


# --- The budget of an account that can do more than the operator is a superuser's to change -----

OUTRANKS_YOU = (
    "This account is an administrator or holds permissions you do not: only a superuser can set, change or remove "
    "its budget."
)


@pytest.fixture
def budget_clerk(make_staff, client):
    staff = make_staff(*BUDGET_DESK)
    client.force_login(staff)
    return staff


@pytest.mark.parametrize("whom", ["superuser", "key-manager"])
def test_staff_cannot_add_a_budget_on_an_account_that_outranks_them_and_are_told_why(client, budget_clerk, make_user, whom):
    from django.contrib.auth.models import Permission

    if whom == "superuser":
        target = make_user("root", is_staff=True, is_superuser=True)
    else:  # holds a permission the budgets clerk does not
        target = make_user("keyman", is_staff=True)
        target.user_permissions.add(Permission.objects.get(codename="change_providerkey"))
    response = client.post(f"{BUDGETS}add/", {"user": str(target.pk), "team": "", "period": "day", "limit": "0", "warn_ratio": "0.8"})
    assert response.status_code == 200
    assert OUTRANKS_YOU.replace("'", "&#x27;") in response.content.decode()
    assert not Budget.objects.exists() and not AuditEvent.objects.exists()


def test_staff_cannot_change_or_delete_the_budget_of_an_account_that_outranks_them(client, budget_clerk, make_user):
    from billing.budgets import budget_set

    root = make_user("root", is_staff=True, is_superuser=True)
    budget = budget_set(user=root, period="month", limit="500")  # the system (a command) may
    before = _limits()
    page = client.get(f"{BUDGETS}{budget.pk}/change/")
    assert page.status_code == 200 and not page.context["has_change_permission"], "shown, read-only"
    assert client.post(f"{BUDGETS}{budget.pk}/change/", {"limit": "0", "warn_ratio": "0.8"}).status_code == 403
    assert client.post(f"{BUDGETS}{budget.pk}/delete/", {"post": "yes"}).status_code == 403
    selection = {"action": "delete_selected", ACTION_CHECKBOX_NAME: [budget.pk]}
    page = client.post(BUDGETS, selection)
    assert page.status_code == 200 and page.context["perms_lacking"]
    assert OUTRANKS_YOU in [str(m) for m in page.context["messages"]]
    assert client.post(BUDGETS, {**selection, "post": "yes"}).status_code == 403
    assert _limits() == before and not AuditEvent.objects.filter(actor_id=budget_clerk.pk).exists()


def test_staff_still_set_the_budget_of_a_team_with_a_superuser_in_it(client, budget_clerk, make_user, make_team):
    """A team's budget binds every member, superusers included: the team clerk's to manage."""
    root = make_user("root", is_staff=True, is_superuser=True)
    team = make_team("Ops", root)
    response = client.post(f"{BUDGETS}add/", {"user": "", "team": str(team.pk), "period": "day", "limit": "0", "warn_ratio": "0.8"})
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Budget.objects.get(team=team).limit == D("0")


def test_a_second_budget_for_the_same_person_and_period_is_refused_in_words(admin_client, user):
    # The admin showed the database constraint's name ("Constraint “budget_user_period_unique”
    # is violated."): a sentence now, and the first budget unchanged.
    data = {"user": str(user.pk), "team": "", "period": "week", "limit": "7.5", "warn_ratio": "0.8"}
    assert admin_client.post("/admin/billing/budget/add/", data).status_code == 302
    response = admin_client.post("/admin/billing/budget/add/", {**data, "limit": "9"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "already has a budget for this period" in page and "budget_user_period_unique" not in page
    assert [b.limit for b in Budget.objects.all()] == [D("7.5")]


def _form_errors(response) -> list[str]:
    form = response.context["adminform"].form
    return [str(e) for errors in form.errors.values() for e in errors]


def test_a_budget_without_an_owner_is_refused_once_in_words(admin_client):
    # The service's sentence, and not again as "Constraint “budget_exactly_one_owner” is violated."
    response = admin_client.post(f"{BUDGETS}add/", {"user": "", "team": "", "period": "day", "limit": "1", "warn_ratio": "0.8"})
    assert response.status_code == 200
    assert _form_errors(response) == ["A budget belongs to exactly one user or one team: choose one of them."]
    assert not Budget.objects.exists()


def test_a_negative_price_is_refused_once_in_words(admin_client):
    # Not again as "Constraint “modelprice_non_negative” is violated.", nor with a claim that
    # the price already exists.
    response = admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, "input_per_million": "-1"})
    assert response.status_code == 200
    assert _form_errors(response) == ["The input price cannot be negative."]


@pytest.mark.parametrize(
    "changes, english, korean",
    [
        ({"input_per_million": "-1"}, "The input price cannot be negative.", "입력 가격은 음수일 수 없습니다."),
        (
            {"cached_input_per_million": "9"},
            "The cached input price cannot be above the input price.",
            "캐시된 입력 가격은 입력 가격보다 높을 수 없습니다.",
        ),
        (
            {"context_window": "1000", "max_output_tokens": "1000"},
            "The max output tokens must be below the context window (1000).",
            "최대 출력 토큰은 컨텍스트 윈도(1000)보다 작아야 합니다.",
        ),
    ],
)
def test_a_refused_price_is_explained_in_one_sentence_in_the_operators_language(
    client, django_user_model, changes, english, korean
):
    # The price service's reasons were lower-case fragments ("input price cannot be negative"),
    # as the budget service's were: whole sentences, in the operator's language.
    for language, expected in (("en", english), ("ko", korean)):
        operator = django_user_model.objects.create_superuser(f"root-{language}", f"{language}@example.test", language=language)
        client.force_login(operator)
        response = client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, **changes})
        assert response.status_code == 200
        assert _form_errors(response) == [expected]


@pytest.mark.parametrize(
    "changes, english, korean",
    [
        ({"limit": "-1"}, "The limit cannot be negative.", "한도는 음수일 수 없습니다."),
        ({"limit": "2000000"}, "The limit cannot be above 1000000 USD.", "한도는 1000000 USD를 넘을 수 없습니다."),
        (
            {"user": ""},
            "A budget belongs to exactly one user or one team: choose one of them.",
            "예산은 사용자 한 명 또는 팀 하나에만 속합니다. 둘 중 하나만 고르세요.",
        ),
        (
            {"warn_ratio": "1.5"},
            "The warning threshold must be a fraction above 0 and at most 1, such as 0.8.",
            "경고 기준값은 0.8처럼 0보다 크고 1 이하인 비율이어야 합니다.",
        ),
    ],
)
def test_a_refused_budget_is_explained_in_one_sentence_in_the_operators_language(
    client, django_user_model, user, changes, english, korean
):
    # The service's reasons were lower-case fragments ("limit cannot be negative"); shown on the
    # page in the operator's own language (their profile's), as whole sentences.
    data = {"user": str(user.pk), "team": "", "period": "day", "limit": "5", "warn_ratio": "0.8", **changes}
    for language, expected in (("en", english), ("ko", korean)):
        operator = django_user_model.objects.create_superuser(f"root-{language}", f"{language}@example.test", language=language)
        client.force_login(operator)
        response = client.post(f"{BUDGETS}add/", data)
        assert response.status_code == 200
        assert _form_errors(response) == [expected]
        assert expected in response.content.decode()
    assert not Budget.objects.exists()


def test_a_limit_that_is_not_a_number_is_refused_once(admin_client, user):
    # The field's own error, and not again by the service for the value the field refused.
    data = {"user": str(user.pk), "team": "", "period": "day", "limit": "lots", "warn_ratio": "0.8"}
    response = admin_client.post(f"{BUDGETS}add/", data)
    assert response.status_code == 200
    assert _form_errors(response) == ["Enter a number."]


def test_a_budgets_name_shows_its_limit_as_money(user):
    assert str(Budget(user=user, period="week", limit=D("5.0000000000"))) == "user alice / week: 5.00 USD"
    assert str(Budget(user=user, period="day", limit=D("0E-10"))) == "user alice / day: 0.00 USD"


# --- Amounts on the edit pages read as written, not padded to the stored places ------------------


@pytest.mark.parametrize(
    "limit, warn_ratio, shown",
    [
        ("3", "0.8", ("3.00", "0.8")),
        ("12.5", "0.75", ("12.50", "0.75")),
        ("0.0000000123", "1", ("0.0000000123", "1")),  # exact, never rounded to cents
        ("1000000", "0.125", ("1000000.00", "0.125")),  # no exponent ("1E+6")
    ],
)
def test_the_budget_page_shows_the_limit_as_money_and_saving_it_unchanged_keeps_it(
    admin_client, user, limit, warn_ratio, shown
):
    from billing.budgets import budget_set

    budget = budget_set(user=user, period="month", limit=limit, warn_ratio=warn_ratio)
    data = page_form(admin_client, f"{BUDGETS}{budget.pk}/change/", "budget_form")
    assert (data["limit"], data["warn_ratio"]) == shown
    assert admin_client.post(f"{BUDGETS}{budget.pk}/change/", data).status_code == 302
    budget.refresh_from_db()
    assert (budget.limit, budget.warn_ratio) == (D(limit), D(warn_ratio))


def test_the_price_page_shows_prices_as_written_and_saving_it_unchanged_keeps_them(admin_client):
    from billing.prices import price_set

    price_set(
        model_id="openai:tiny",
        input_per_million="0.15",
        output_per_million="2",
        cached_input_per_million="0.075",
        effective_from=datetime(2025, 1, 1, tzinfo=UTC),
    )
    row = ModelPrice.objects.get(provider="openai", model="tiny")
    data = page_form(admin_client, f"/admin/billing/modelprice/{row.pk}/change/", "modelprice_form")
    shown = (data["input_per_million"], data["output_per_million"], data["cached_input_per_million"])
    assert shown == ("0.15", "2.00", "0.075")
    assert admin_client.post(f"/admin/billing/modelprice/{row.pk}/change/", data).status_code == 302
    quote = price_for(model_id="openai:tiny")
    assert (quote.input_per_million, quote.output_per_million, quote.cached_input_per_million) == (
        D("0.15"),
        D("2"),
        D("0.075"),
    )


@pytest.mark.parametrize("field", ["context_window", "max_output_tokens"])
@pytest.mark.parametrize("value", ["-1", "0"])
def test_a_token_count_below_one_is_refused_as_below_one(admin_client, field, value):
    # -1 was refused as "greater than or equal to 0", and the 0 typed next as "between 1 and
    # 100000000"; the number input offered 0 (min="0").
    count = ModelPrice.objects.count()
    response = admin_client.post("/admin/billing/modelprice/add/", {**PRICE_FORM, "model": "tiny", field: value})
    assert response.status_code == 200 and ModelPrice.objects.count() == count
    assert _form_errors(response) == ["Ensure this value is greater than or equal to 1."]
    assert 'min="0"' not in response.content.decode()


def test_saving_a_price_page_opened_before_a_colleagues_new_price_keeps_theirs(admin_client):
    # Two tabs on the price in force: one raised the input price, the other (opened before)
    # then changed the output price, and its save put the old input price back in force.
    row = ModelPrice.objects.get(provider="openai", model="gpt-4o")
    url = f"/admin/billing/modelprice/{row.pk}/change/"
    first, second = page_form(admin_client, url, "modelprice_form"), page_form(admin_client, url, "modelprice_form")
    assert admin_client.post(url, {**first, "input_per_million": "3"}).status_code == 302
    count = ModelPrice.objects.count()

    response = admin_client.post(url, {**second, "output_per_million": "12"})
    assert response.status_code == 200
    assert "A newer price for openai:gpt-4o" in " ".join(_form_errors(response))
    quote = price_for(model_id="openai:gpt-4o")
    assert (quote.input_per_million, quote.output_per_million) == (D("3"), D("10"))
    assert ModelPrice.objects.count() == count
    # The price in force, opened now, takes the change.
    newest = ModelPrice.objects.filter(provider="openai", model="gpt-4o").latest("effective_from")
    newest_url = f"/admin/billing/modelprice/{newest.pk}/change/"
    data = page_form(admin_client, newest_url, "modelprice_form")
    assert admin_client.post(newest_url, {**data, "output_per_million": "12"}).status_code == 302
    quote = price_for(model_id="openai:gpt-4o")
    assert (quote.input_per_million, quote.output_per_million) == (D("3"), D("12"))
