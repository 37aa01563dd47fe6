"""The budget admin shows what a budget has spent in its current period, and what is held, as the
usage API and the budget check count them: a period that has ended counts nothing, though the row
keeps last period's spend until the budget's next use."""

import datetime as dt
import html
import re
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.budgets import budget_set, period_bounds
from billing.models import Budget
from billing.templatetags.billing_money import usd

D = Decimal
BUDGETS = "/admin/billing/budget/"
COLUMNS = ("spent_this_period", "held", "remaining", "current_period")


@pytest.fixture
def budgets(user, make_team):
    """alice's daily budget, last used yesterday (its stored spend is yesterday's), her monthly
    one used this month, and her team's total one, which never rolls over."""
    now = timezone.now()
    yesterday, _end = period_bounds(period="day", tz_name="UTC", now=now - dt.timedelta(days=1))
    day = budget_set(user=user, period="day", limit="3")
    Budget.objects.filter(pk=day.pk).update(spent=D("2.5"), reserved=D("0.4"), period_start=yesterday)
    month = budget_set(user=user, period="month", limit="20")
    Budget.objects.filter(pk=month.pk).update(spent=D("1.25"))
    team = make_team("Physics", user)
    total = budget_set(team=team, period="total", limit="100")
    Budget.objects.filter(pk=total.pk).update(spent=D("7"), reserved=D("0.4"))
    return {"day": day.pk, "month": month.pk, "total": total.pk}


def _cells(page: str, pk: int) -> dict[str, str]:
    row = re.search(rf'<tr>(?:(?!</tr>).)*value="{pk}"(?:(?!</tr>).)*</tr>', page, re.S).group(0)
    found = re.findall(r'<td class="field-(\w+)[^"]*">(.*?)</td>', row, re.S)
    return {name: html.unescape(re.sub(r"<[^>]+>", "", text)).strip() for name, text in found}


def _readonly(page: str, name: str) -> str:
    block = re.search(rf'field-{name}">.*?<div class="readonly">(.*?)</div>', page, re.S).group(1)
    return html.unescape(re.sub(r"<[^>]+>", "", block)).strip()


def test_the_budget_list_shows_the_current_periods_spend_as_the_usage_api_does(admin_client, client, user, budgets):
    page = admin_client.get(BUDGETS).content.decode()
    rows = {period: _cells(page, pk) for period, pk in budgets.items()}

    # Yesterday's 2.50 is not today's: the day budget has spent nothing today, and holds 0.40.
    assert (rows["day"]["spent_this_period"], rows["day"]["held"], rows["day"]["remaining"]) == ("$0.00", "$0.40", "$2.60")
    assert (rows["month"]["spent_this_period"], rows["month"]["remaining"]) == ("$1.25", "$18.75")
    assert (rows["total"]["spent_this_period"], rows["total"]["held"], rows["total"]["remaining"]) == ("$7.00", "$0.40", "$92.60")
    assert "$2.50" not in page

    # The same figures as alice's own usage API, which the budget check agrees with.
    client.force_login(user)
    api = {b["period"]: b for b in client.get("/api/v1/usage/").json()["budgets"]}
    for period, row in rows.items():
        assert row["spent_this_period"] == usd(D(api[period]["spent"]))
        assert row["remaining"] == usd(D(api[period]["remaining"]))

    # The period shown is the running one, not the stored one that has ended.
    today, tomorrow = period_bounds(period="day", tz_name="UTC", now=timezone.now())
    assert rows["day"]["current_period"].startswith(today.strftime("%Y-%m-%d"))
    assert tomorrow.strftime("%Y-%m-%d") in rows["day"]["current_period"]

    # Reading writes nothing: the row rolls over at its next use, as before.
    assert Budget.objects.get(pk=budgets["day"]).spent == D("2.5")


def test_the_budget_change_page_shows_the_current_periods_spend(admin_client, budgets):
    page = admin_client.get(f"{BUDGETS}{budgets['day']}/change/").content.decode()
    assert [_readonly(page, name) for name in ("spent_this_period", "held", "remaining")] == ["$0.00", "$0.40", "$2.60"]
    assert "2.5000000000" not in page and "$2.50" not in page

    page = admin_client.get(f"{BUDGETS}{budgets['total']}/change/").content.decode()
    assert _readonly(page, "spent_this_period") == "$7.00"


@pytest.mark.parametrize("column", COLUMNS[:3])
def test_the_budget_list_sorts_by_the_current_periods_figures(admin_client, budgets, column):
    # Sorting by the stored spend would put yesterday's day budget above the month's.
    columns = list(admin_client.get(BUDGETS).context["cl"].list_display)
    index = columns.index(column)  # counted as the "o=" numbers are: the checkbox column is 0
    order = {}
    for sign in ("", "-"):
        page = admin_client.get(f"{BUDGETS}?o={sign}{index}").content.decode()
        pks = [int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', page)]
        order[sign] = [period for pk in pks for period, p in budgets.items() if p == pk]
    expected = {
        "spent_this_period": ["day", "month", "total"],
        "held": ["month", "day", "total"],
        "remaining": ["day", "month", "total"],
    }[column]
    if column == "held":  # day and total hold the same: only the month's nothing is sure to be first
        assert order[""][0] == "month" and order["-"][-1] == "month"
    else:
        assert order[""] == expected and order["-"] == expected[::-1]


def test_the_add_page_shows_no_spend_of_a_budget_not_made_yet(admin_client):
    page = admin_client.get(f"{BUDGETS}add/").content.decode()
    assert admin_client.get(f"{BUDGETS}add/").status_code == 200
    assert "field-spent_this_period" not in page and "field-remaining" not in page
