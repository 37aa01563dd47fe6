import datetime as dt
import json
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.budgets import budget_reserve, budget_set, budget_settle
from billing.ledger import usage_record

from .conftest import usage_kwargs

D = Decimal


@pytest.fixture
def alice_client(client, user):
    client.force_login(user)
    return client


def test_anonymous_gets_401_json(client, db):
    response = client.get("/api/v1/usage/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_usage_this_month_by_model_with_budgets_as_decimal_strings(alice_client, user, other_user, make_team):
    team = make_team("ops", user)
    budget_set(user=user, period="month", limit="10")
    budget_set(team=team, period="day", limit="2")
    usage_record(**usage_kwargs(user, cost=D("0.0000450000")))
    usage_record(**usage_kwargs(user, model="gpt-4o", input_tokens=1000, output_tokens=10, cost=D("1.25")))
    usage_record(**usage_kwargs(other_user, cost=D("5")))  # not alice's
    budget_settle(reservation_id=budget_reserve(user=user, amount=D("1.3")), actual=D("1.250045"))

    body = alice_client.get("/api/v1/usage/").json()

    today = timezone.now().date()
    assert body["from"] == today.replace(day=1).isoformat()
    assert body["to"] >= today.isoformat()
    assert body["spent"] == "1.250045"
    assert body["by_model"] == [
        {"model": "openai:gpt-4o", "spent": "1.25", "input_tokens": 1000, "output_tokens": 10, "requests": 1},
        {"model": "openai:gpt-4o-mini", "spent": "0.000045", "input_tokens": 100, "output_tokens": 50, "requests": 1},
    ]
    assert body["budgets"] == [
        {"scope": "user", "name": "alice", "period": "month", "limit": "10.00", "spent": "1.250045", "remaining": "8.749955"},
        {"scope": "team", "name": "ops", "period": "day", "limit": "2.00", "spent": "1.250045", "remaining": "0.749955"},
    ]


def test_remaining_is_what_the_budget_gate_still_lets_a_new_reply_hold(alice_client, admin_client, user):
    """`remaining` was limit - spent, while replies being written hold their worst case on the
    budget and the gate counts those holds: a person told 8.75 USD remained was refused a
    reply of 6. Now it is limit - spent - held, never negative, as the admin shows it too."""
    from billing.budgets import BudgetExceeded

    budget_set(user=user, period="month", limit="10")
    budget_settle(reservation_id=budget_reserve(user=user, amount=D("2")), actual=D("1.25"))
    budget_reserve(user=user, amount=D("3"))  # a reply being written now

    [budget] = alice_client.get("/api/v1/usage/").json()["budgets"]
    assert (budget["limit"], budget["spent"], budget["remaining"]) == ("10.00", "1.25", "5.75")
    assert "$5.75 left" in admin_client.get("/admin/accounts/user/").content.decode()
    # The gate agrees: a new reply may hold exactly that much, and not a bit more.
    with pytest.raises(BudgetExceeded):
        budget_reserve(user=user, amount=D(budget["remaining"]) + D("0.0000000001"))
    budget_reserve(user=user, amount=D(budget["remaining"]))
    assert alice_client.get("/api/v1/usage/").json()["budgets"][0]["remaining"] == "0.00"

    # Lowered below what is spent and held: nothing remains, never a negative amount.
    budget_set(user=user, period="month", limit="4")
    assert alice_client.get("/api/v1/usage/").json()["budgets"][0]["remaining"] == "0.00"


def test_the_usage_page_says_a_budget_held_by_running_replies_is_not_used_up(alice_client, user):
    # Nothing remains while the holds last, but the period need not end for the budget to free up.
    budget_set(user=user, period="day", limit="1")
    budget_reserve(user=user, amount=D("1"))
    page = alice_client.get("/usage/").content.decode()
    assert "The rest is held by replies being written: new requests are refused until they finish." in page
    assert "Used up" not in page


def test_usage_for_a_chosen_range(alice_client, user):
    usage_record(**usage_kwargs(user, cost=D("1"), at=dt.datetime(2026, 2, 3, 12, tzinfo=dt.UTC)))
    usage_record(**usage_kwargs(user, cost=D("2"), at=dt.datetime(2026, 2, 5, 12, tzinfo=dt.UTC)))
    body = alice_client.get("/api/v1/usage/?from=2026-02-01&to=2026-02-04").json()
    assert (body["from"], body["to"], body["spent"]) == ("2026-02-01", "2026-02-04", "1.00")


def test_usage_is_counted_in_the_users_own_calendar_like_their_monthly_budget(client, make_user, monkeypatch):
    """At 01:00 on 1 December in Auckland (still 30 November in UTC) "this month" is December
    there: the page must show the call made at 00:30, as the monthly budget does."""
    from billing.selectors import usage_summary

    kiwi = make_user("kiwi", timezone="Pacific/Auckland")
    now = dt.datetime(2025, 11, 30, 12, 0, tzinfo=dt.UTC)
    monkeypatch.setattr(timezone, "now", lambda: now)
    budget_set(user=kiwi, period="month", limit="10")
    usage_record(**usage_kwargs(kiwi, cost=D("2"), at=dt.datetime(2025, 11, 30, 10, 0, tzinfo=dt.UTC)))  # 23:00, 30 Nov
    usage_record(**usage_kwargs(kiwi, cost=D("1"), at=dt.datetime(2025, 11, 30, 11, 30, tzinfo=dt.UTC)))  # 00:30, 1 Dec
    budget_settle(reservation_id=budget_reserve(user=kiwi, amount=D("1")), actual=D("1"))
    client.force_login(kiwi)

    body = client.get("/api/v1/usage/").json()
    assert (body["from"], body["to"], body["spent"]) == ("2025-12-01", "2025-12-31", "1.00")
    assert body["by_model"][0]["requests"] == 1
    assert (body["budgets"][0]["period"], body["budgets"][0]["spent"]) == ("month", "1.00")
    # A chosen range is read in the same calendar, and so is the page's daily chart.
    assert client.get("/api/v1/usage/?from=2025-11-30&to=2025-11-30").json()["spent"] == "2.00"
    daily = usage_summary(user=kiwi, date_from=dt.date(2025, 11, 30), date_to=dt.date(2025, 12, 1)).daily
    assert [(d.day.isoformat(), d.spent, d.requests) for d in daily] == [("2025-11-30", D("2"), 1), ("2025-12-01", D("1"), 1)]


@pytest.mark.parametrize(
    "query", ["from=2026-13-01", "from=yesterday", "to=2026-02-30", "from=2026-03-02&to=2026-03-01", "from=2020-01-01&to=2026-01-01", "from=2026-3-1"]
)
def test_bad_dates_are_a_400_with_a_clear_error(alice_client, query):
    response = alice_client.get(f"/api/v1/usage/?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "Pacific/Kiritimati", "Etc/GMT+12", "UTC"])
@pytest.mark.parametrize("query", ["from=9999-12-01&to=9999-12-31", "from=0001-01-01&to=0001-01-31", "from=1999-12-31&to=2000-01-01"])
def test_days_at_the_ends_of_the_calendar_are_a_400_not_a_500(alice_client, user, zone, query):
    user.timezone = zone
    user.save(update_fields=["timezone"])
    response = alice_client.get(f"/api/v1/usage/?{query}")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Etc/GMT+12"])  # UTC+14 and UTC-12
def test_the_first_and_last_days_allowed_answer_in_every_zone(alice_client, user, zone):
    user.timezone = zone
    user.save(update_fields=["timezone"])
    for query in ("from=2000-01-01&to=2000-01-31", "from=9998-12-01&to=9998-12-31"):
        response = alice_client.get(f"/api/v1/usage/?{query}")
        assert response.status_code == 200 and response.json()["spent"] == "0.00", response.json()


def test_only_get_and_another_method_is_a_405_in_json(alice_client):
    response = alice_client.post("/api/v1/usage/")
    assert response.status_code == 405 and response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "method_not_allowed" and response["Allow"] == "GET"


def test_usage_page_shows_budgets_chart_and_models(alice_client, user, make_team):
    team = make_team("ops", user)
    budget_set(team=team, period="month", limit="1", warn_ratio="0.5")
    usage_record(**usage_kwargs(user, cost=D("0.75")))
    budget_settle(reservation_id=budget_reserve(user=user, amount=D("0.75")), actual=D("0.75"))

    response = alice_client.get("/usage/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Team ops" in html and "$0.75" in html and "budget-warn" in html
    assert "GPT-4o mini" in html
    assert '<script src="/static/vendor/chartjs/chart.umd.min.js"></script>' in html
    assert '<script src="/static/billing/usage.js"></script>' in html
    # Data for the chart goes in a JSON block, not inline script (strict CSP).
    start = html.index('<script id="usage-chart-data" type="application/json">') + len(
        '<script id="usage-chart-data" type="application/json">'
    )
    chart = json.loads(html[start : html.index("</script>", start)])
    assert len(chart["labels"]) == len(chart["spent"]) >= 28
    assert "0.75" in chart["spent"]
    assert "<script>" not in html


def test_a_budget_held_up_by_replies_being_written_is_flagged_like_a_nearly_spent_one(alice_client, user):
    # Nothing much spent, but the rest held: new requests are refused, so the row stands out as
    # a warning does (usage.css), with its own words.
    budget_set(user=user, period="day", limit="1", warn_ratio="0.9")
    budget_reserve(user=user, amount=D("1"))

    html = alice_client.get("/usage/").content.decode()

    row = html[html.index('<tr class="budget-warn">') :]
    row = row[: row.index("</tr>")]
    assert '<span class="budget-icon" aria-hidden="true">!</span>The rest is held by replies being written' in row


def test_usage_page_in_korean(alice_client, user):
    user.language = "ko"
    user.save()
    response = alice_client.get("/usage/", HTTP_ACCEPT_LANGUAGE="ko")
    assert response.status_code == 200


def test_usage_page_needs_login(client, db, settings):
    settings.LOGIN_URL = "/accounts/login/"  # the named route is the accounts work's
    response = client.get("/usage/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
