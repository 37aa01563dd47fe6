"""The cost dashboard: figures equal the ledger, constant queries, access rules, bad input."""

import csv
import datetime
import io
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Q, Sum
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing import dashboard as d
from billing.dashboard_views import Dashboard
from billing.models import Budget, ProviderKey, UsageRecord

URL = "/admin/dashboard/"


def ledger_sums(rng: d.DashboardRange, **filters) -> dict:
    start, end = rng.utc_bounds()
    qs = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end, **filters)
    if rng.team is not None:
        qs = qs.filter(team=rng.team)
    sums = qs.aggregate(
        requests=Count("id"), errors=Count("id", filter=Q(outcome="error")),
        input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"),
    )  # fmt: skip
    # Added in Python: SQLite's SUM of decimals is floating point, the ledger's truth is not.
    sums["cost"] = sum(qs.values_list("cost", flat=True), Decimal(0))
    return sums


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.mark.parametrize(
    "params",
    [{"range": "today"}, {"range": "7d"}, {"range": "30d"}, {"range": "month"}, {"from": "2000-01-01", "to": "2100-01-01"}],
    ids=["today", "7d", "30d", "month", "custom-all"],
)
def test_dashboard_figures_equal_the_ledger_sums_for_the_same_range(params, make_ledger, members, teams, provider_keys):
    make_ledger(600, users=members, teams=teams, keys=provider_keys, days=45)
    if "from" in params:  # an over-wide custom range is refused; use the widest allowed one
        today = timezone.localdate()
        params = {"from": (today - datetime.timedelta(days=d.MAX_RANGE_DAYS - 1)).isoformat(), "to": today.isoformat()}
    for team in (None, teams[0]):
        query = {**params, **({"team": str(team.pk)} if team else {})}
        rng, problems = d.dashboard_range_parse(params=query, today=timezone.localdate())
        assert problems == []
        spend = d.dashboard_spend(rng=rng)
        expected = ledger_sums(rng)
        assert spend.total.cost == (expected["cost"] or Decimal(0))  # exact, so also to the cent
        assert spend.total.requests == expected["requests"]
        assert spend.total.errors == expected["errors"]
        assert spend.total.input_tokens == (expected["input_tokens"] or 0)
        assert spend.total.output_tokens == (expected["output_tokens"] or 0)
        for provider, usage in spend.by_provider.items():
            assert usage.cost == ledger_sums(rng, provider=provider)["cost"]
        for (provider, model), usage in spend.by_model.items():
            assert usage.cost == ledger_sums(rng, provider=provider, model=model)["cost"]
        for row in d.dashboard_top_users(rng=rng):
            assert row["cost"] == ledger_sums(rng, user_id=row["user_id"])["cost"]
        for row in d.dashboard_top_teams(rng=rng):
            assert row["cost"] == ledger_sums(rng, team_id=row["team_id"])["cost"]
        for row in d.dashboard_by_key(rng=rng):
            start, end = rng.utc_bounds()
            # Key statistics are kept for all teams together.
            led = UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end, key_id=row["key_id"], provider=row["provider"])
            assert row["requests"] == led.count()
            assert row["errors"] == led.filter(outcome="error").count()


def test_dashboard_page_shows_the_ledger_total_to_the_cent_and_the_csv_is_exact(su_client, make_ledger, members, teams):
    make_ledger(300, users=members, teams=teams, days=20)
    response = su_client.get(URL, {"range": "30d"})
    assert response.status_code == 200
    rng = response.context["rng"]
    total = ledger_sums(rng)["cost"]
    assert f"${total.quantize(Decimal('0.01')):,}" in response.content.decode()

    csv_response = su_client.get(URL, {"range": "30d", "format": "csv", "table": "models"})
    assert csv_response["Content-Type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(csv_response.content.decode("utf-8-sig"))))
    assert sum(Decimal(r[1]) for r in rows[1:]) == total


def test_dashboard_and_ledger_links_lead_to_the_rows_behind_a_figure(su_client, make_ledger, members, teams):
    make_ledger(50, users=members, teams=teams, days=5)
    response = su_client.get(URL, {"range": "7d"})
    users = Dashboard(response.context["rng"], user=response.wsgi_request.user).table_users()
    link = users.links[0]
    assert link.startswith(reverse("admin:billing_usagerecord_changelist"))
    listing = su_client.get(link)
    assert listing.status_code == 200
    shown = listing.context["cl"].queryset
    rng = response.context["rng"]
    user_id = int(re.search(r"user__id__exact=(\d+)", link).group(1))
    assert shown.count() == ledger_sums(rng, user_id=user_id)["requests"]


def _query_count(client, url, params=None) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, params or {})
    assert response.status_code == 200
    return len(ctx.captured_queries)


def test_dashboard_runs_the_same_small_number_of_queries_with_10_or_10000_ledger_records(
    su_client, make_ledger, members, teams, provider_keys
):
    make_ledger(10, users=members, teams=teams, keys=provider_keys, days=30)
    Budget.objects.create(user=members[0], period="month", limit=Decimal("1"), spent=Decimal("0.95"), period_start=timezone.now())
    few = _query_count(su_client, URL, {"range": "30d", "team": teams[0].pk})
    make_ledger(9_990, users=members, teams=teams, keys=provider_keys, days=30, seed=8)
    Budget.objects.create(team=teams[0], period="month", limit=Decimal("1"), spent=Decimal("2"), period_start=timezone.now())
    many = _query_count(su_client, URL, {"range": "30d", "team": teams[0].pk})
    assert few == many
    assert many <= 16


def test_anonymous_and_non_staff_get_the_login_page(client, make_user):
    response = client.get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    client.force_login(make_user("plain"))
    response = client.get(URL)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_staff_without_the_dashboard_permission_get_403(client, make_staff):
    client.force_login(make_staff("accounts.view_user"))
    assert client.get(URL).status_code == 403
    assert client.get(URL, {"format": "csv", "table": "users"}).status_code == 403


def test_staff_with_the_dashboard_permission_see_it_and_the_index_links_it(client, make_staff, make_ledger, members):
    make_ledger(20, users=members, days=3)
    client.force_login(make_staff("billing.view_dashboard"))
    response = client.get(URL)
    assert response.status_code == 200
    assert URL in client.get("/admin/").content.decode()
    # No links to ledger pages this operator could not open.
    assert reverse("admin:billing_usagerecord_changelist") not in response.content.decode()
    client.force_login(make_staff("billing.view_dashboard", "billing.view_usagerecord"))
    assert reverse("admin:billing_usagerecord_changelist") in client.get(URL).content.decode()


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"range": "custom", "from": "2025-03-10", "to": "2025-03-01"}, "start date is after the end date"),
        ({"range": "custom", "from": "0001-01-01", "to": "9999-12-31"}, "at most"),
        ({"range": "custom", "from": "yesterday", "to": "2025-13-45"}, "Dates must look like"),
        ({"range": "custom", "from": "2999-01-01", "to": "2999-01-02"}, "starts in the future"),
        ({"range": "fortnight"}, "Unknown date range"),
        ({"team": "999999"}, "There is no team"),
        ({"team": "physics'; --"}, "There is no team"),
        ({"team": "9" * 40}, "There is no team"),
    ],
)
def test_bad_input_shows_a_clear_message_and_the_default_range(su_client, params, expected):
    response = su_client.get(URL, params)
    assert response.status_code == 200
    assert any(expected in m for m in messages_of(response)), messages_of(response)
    rng = response.context["rng"]
    assert rng.preset in {"7d", "custom"} and rng.start <= rng.end


def test_csv_of_an_empty_range_says_so_instead_of_an_error(su_client, make_ledger, members):
    make_ledger(20, users=members, days=3)
    params = {"range": "custom", "from": "2020-01-01", "to": "2020-01-31", "format": "csv", "table": "users"}
    response = su_client.get(URL, params, follow=True)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert any("nothing to download" in m for m in messages_of(response))
    assert response.context["rng"].start == datetime.date(2020, 1, 1)  # back on the same range


def test_csv_of_an_unknown_table_says_so(su_client):
    response = su_client.get(URL, {"format": "csv", "table": "passwords"}, follow=True)
    assert response.status_code == 200
    assert any("no table" in m for m in messages_of(response))


def test_csv_cells_that_would_run_as_formulas_are_neutralised(su_client, make_ledger, make_user):
    from accounts.models import Team

    evil = Team.objects.create(name='=HYPERLINK("http://evil.test","x")')
    make_ledger(10, users=[make_user("carol")], teams=[evil], days=2)
    response = su_client.get(URL, {"range": "7d", "format": "csv", "table": "teams"})
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert rows[0][0] == "Team"
    assert rows[1][0] == "'" + evil.name


def test_every_table_downloads_as_csv(su_client, make_ledger, members, teams, provider_keys):
    make_ledger(200, users=members, teams=teams, keys=provider_keys, days=5)
    ProviderKey.objects.filter(name="oa-main").update(health="invalid")
    Budget.objects.create(user=members[0], period="month", limit=Decimal("1"), spent=Decimal("0.9"), period_start=timezone.now())
    for name in Dashboard.TABLES:
        response = su_client.get(URL, {"range": "7d", "format": "csv", "table": name})
        assert response["Content-Type"].startswith("text/csv"), name
        assert f"parley-{name}-" in response["Content-Disposition"]


def test_budgets_near_their_limit_and_unhealthy_keys_are_listed(su_client, members, teams, provider_keys):
    Budget.objects.create(user=members[0], period="month", limit=Decimal("10"), spent=Decimal("7"), period_start=timezone.now(), reserved=Decimal("1.5"))
    Budget.objects.create(user=members[1], period="month", limit=Decimal("10"), spent=Decimal("1"), period_start=timezone.now())
    Budget.objects.create(team=teams[0], period="day", limit=Decimal("5"), spent=Decimal("6"), period_start=timezone.now())
    ProviderKey.objects.filter(name="oa-main").update(health="cooling_down", cooldown_until=timezone.now() + datetime.timedelta(minutes=5))
    ProviderKey.objects.filter(name="an-main").update(health="invalid", last_error_kind="auth")
    response = su_client.get(URL)
    tables = {t.name: t for t in response.context["tables"]}
    owners = [row[0] for row in tables["budgets"].rows]
    assert owners == ["team Physics", "user member0"]  # the fuller first; member1 is fine
    assert sorted(row[1] for row in tables["key_alerts"].rows) == ["an-main", "oa-main"]
    # The last error in words, not the state machine's code ("auth").
    assert {row[1]: row[5] for row in tables["key_alerts"].rows}["an-main"] == "key refused, HTTP 401/403"


def test_team_filter_narrows_spend_to_that_team(su_client, make_ledger, members, teams):
    make_ledger(200, users=members, teams=teams, days=5)
    response = su_client.get(URL, {"range": "7d", "team": teams[1].pk})
    rng = response.context["rng"]
    assert rng.team == teams[1]
    assert d.dashboard_spend(rng=rng).total.cost == ledger_sums(rng)["cost"]
    assert [row[0] for row in response.context["tables"][3].rows] == ["Chemistry"]


def test_dashboard_days_are_utc_days_whatever_the_operators_time_zone(client, make_staff, monkeypatch):
    staff = make_staff("billing.view_dashboard")
    staff.timezone = "Pacific/Kiritimati"  # UTC+14
    staff.save(update_fields=["timezone"])
    # 12:00 UTC on 10 June is 02:00 on 11 June in Kiritimati.
    monkeypatch.setattr(timezone, "now", lambda: datetime.datetime(2025, 6, 10, 12, 0, tzinfo=datetime.UTC))
    client.force_login(staff)
    response = client.get(URL, {"range": "today"})
    rng = response.context["rng"]
    # The rollup is kept by UTC day: the operator's own date (11 June) has no rows yet.
    assert rng.start == rng.end == datetime.date(2025, 6, 10)
    assert "dates in UTC" in response.content.decode()


def test_an_operator_west_of_utc_sees_the_spend_of_the_last_hours(client, make_staff, make_user, monkeypatch):
    from billing import ledger

    staff = make_staff("billing.view_dashboard")
    staff.timezone = "America/Los_Angeles"
    staff.save(update_fields=["timezone"])
    # 03:00 UTC on 10 June is 20:00 on 9 June in Los Angeles; the call was an hour ago.
    now = datetime.datetime(2025, 6, 10, 3, 0, tzinfo=datetime.UTC)
    monkeypatch.setattr(timezone, "now", lambda: now)
    ledger.usage_record(
        user=make_user("spender"), conversation_id=None, message_id=None, attempt=1, provider="openai",
        model="gpt-4o-mini", key_id=None, input_tokens=1000, output_tokens=500, cached_tokens=0,
        cost=Decimal("1.25"), estimated=False, ttft_ms=100, latency_ms=900, outcome="ok",
        at=now - datetime.timedelta(hours=1),
    )  # fmt: skip
    client.force_login(staff)
    shown = [
        client.get(URL, params).context["figures"][0][1]
        for params in ({"range": "today"}, {"range": "7d"}, {"from": "2025-06-09", "to": "2025-06-10"})
    ]
    assert shown == ["$1.25", "$1.25", "$1.25"]


def test_page_has_no_inline_script_and_passes_chart_data_as_json(su_client, make_ledger, members):
    make_ledger(30, users=members, days=5)
    html = su_client.get(URL).content.decode()
    for tag in re.findall(r"<script[^>]*>", html):
        assert "src=" in tag or 'type="application/json"' in tag, tag
    assert "vendor/chartjs/chart.umd.min.js" in html and "js/admin_dashboard.js" in html
    assert 'id="dashboard-chart-data"' in html


def test_a_budget_whose_period_ended_is_not_listed_with_last_periods_spend(su_client, members, teams):
    """The table is "current period": a day budget used up yesterday has nothing spent today,
    as the budget check (billing.budgets) and the user's own usage page both read it."""
    yesterday = timezone.now() - datetime.timedelta(days=1)
    Budget.objects.create(team=teams[0], period="day", limit=Decimal("5"), spent=Decimal("6"), period_start=yesterday - datetime.timedelta(hours=1))
    Budget.objects.create(user=members[0], period="week", limit=Decimal("10"), spent=Decimal("9"), reserved=Decimal("1"), period_start=timezone.now() - datetime.timedelta(days=8))
    Budget.objects.create(user=members[1], period="total", limit=Decimal("10"), spent=Decimal("9"), period_start=None)
    response = su_client.get(URL)
    rows = {t.name: t for t in response.context["tables"]}["budgets"].rows
    # The week budget still holds 1 of 10 in flight (not near 80%); the total never rolls over.
    assert [row[0] for row in rows] == ["user member1"]


@pytest.mark.django_db
def test_the_ledger_lists_show_costs_in_dollars_not_raw_decimals(su_client, members):
    from billing.models import DailyUsage

    UsageRecord.objects.create(user=members[0], provider="openai", model="gpt-4o-mini", cost=Decimal("0.00042"), outcome="ok")
    UsageRecord.objects.create(user=members[0], provider="openai", model="gpt-4o-mini", cost=Decimal("12.5"), outcome="ok")
    DailyUsage.objects.create(day=datetime.date(2026, 1, 2), user=members[0], provider="openai", model="gpt-4o-mini", cost=Decimal("12.50042"))
    records = su_client.get(reverse("admin:billing_usagerecord_changelist")).content.decode()
    assert "$0.00042" in records and "$12.50" in records
    assert "0.0004200000" not in records and "12.5000000000" not in records
    daily = su_client.get(reverse("admin:billing_dailyusage_changelist")).content.decode()
    assert "$12.50" in daily and "12.5004200000" not in daily


def test_a_spend_under_a_cent_shows_its_amount_as_on_the_budget_and_ledger_pages(su_client, members, teams):
    # A small site on cheap models: the dashboard said "Spend $0.00" over 19 requests, while the
    # budget list showed the same spend as $0.0010192.
    from billing import ledger

    ledger.usage_record(
        user=members[0], conversation_id=None, message_id=None, attempt=1, provider="openai",
        model="gpt-4o-mini", key_id=None, input_tokens=1000, output_tokens=500, cached_tokens=0,
        cost=Decimal("0.0010192"), estimated=False, ttft_ms=100, latency_ms=900, outcome="ok",
    )  # fmt: skip
    response = su_client.get(URL, {"range": "today"})
    tiles = {str(label): value for label, value, _link in response.context["figures"]}
    assert tiles["Spend"] == "$0.0010192"
    for table in ("providers", "models", "users", "teams"):
        rows = {t.name: t for t in response.context["tables"]}[table].display_rows()
        assert [cells[1] for cells, _link in rows] == ["$0.0010192"], table


def test_a_csv_download_opens_in_a_spreadsheet_as_utf8(su_client, make_ledger, members, teams):
    """Excel reads a CSV without a byte-order mark in the system's legacy code page: a Korean
    operator's headers (and Korean team names) would come out garbled. The mark says UTF-8."""
    from django.utils import translation

    make_ledger(20, users=members, teams=teams, days=2)
    with translation.override("ko"):
        response = su_client.get(URL, {"range": "7d", "format": "csv", "table": "teams"}, HTTP_ACCEPT_LANGUAGE="ko")
    body = response.content
    assert body.startswith("\ufeff".encode())
    header = next(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
    assert header[0] and not header[0].startswith("\ufeff")


def test_the_tables_of_now_say_nothing_is_wrong_now_not_nothing_in_this_range(su_client):
    # "Keys cooling down or invalid" is labelled "Now, whatever the date range."; empty, it said
    # "Nothing in this range.", as if a wider range might show some.
    html = su_client.get(URL, {"range": "7d"}).content.decode()
    assert "No key is cooling down or invalid." in html
    assert "No budget is near or over its limit." in html
    assert html.count("Nothing in this range.") == len(Dashboard.TABLES) - 2
