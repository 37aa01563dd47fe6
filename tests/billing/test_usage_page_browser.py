"""The usage page in a real Chromium: the chart draws from the JSON block under the strict
Content-Security-Policy (no inline script, nothing from another origin)."""

from decimal import Decimal

import pytest

from billing.budgets import budget_set
from billing.ledger import usage_record

from .conftest import usage_kwargs

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def test_the_daily_chart_draws_under_the_csp(needs_chromium, live_server, make_user, client):
    from playwright.sync_api import sync_playwright

    from tests.conftest import CHROMIUM

    user = make_user("viewer")
    budget_set(user=user, period="month", limit="5")
    usage_record(**usage_kwargs(user, cost=Decimal("1.5")))
    client.force_login(user)
    session = client.cookies["sessionid"].value

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
            page = context.new_page()
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{live_server.url}/usage/")
            page.wait_for_function("() => window.Chart && window.Chart.getChart('usage-chart')")
            bars = page.evaluate("() => window.Chart.getChart('usage-chart').data.datasets[0].data")
        finally:
            browser.close()
    assert 1.5 in bars
    # The missing app.css (another branch's) 404s in this branch; nothing else may fail.
    assert [m for m in problems if "app.css" not in m and "404" not in m] == []
