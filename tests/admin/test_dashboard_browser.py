"""The dashboard in a real Chromium: the charts draw under the strict CSP (no inline script)."""

import pytest

from tests.conftest import CHROMIUM

pytestmark = pytest.mark.browser

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]  # fmt: skip


def test_charts_draw_with_no_csp_violation(needs_chromium, live_server, client, make_ledger, make_user):
    from playwright.sync_api import sync_playwright

    operator = make_user("operator", is_staff=True, is_superuser=True)
    make_ledger(60, users=[operator, make_user("dana")], days=5)
    client.force_login(operator)
    session = client.cookies["sessionid"].value

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
            page = context.new_page()
            problems = []
            page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            response = page.goto(f"{live_server.url}/admin/dashboard/?range=7d")
            assert response.status == 200
            assert "script-src 'self'" in response.headers["content-security-policy"]
            page.wait_for_function("() => window.Chart && Chart.getChart('chart-by-model') !== undefined")
            datasets = page.evaluate("() => Chart.getChart('chart-by-provider').data.datasets.map(d => d.label)")
            assert set(datasets) <= {"openai", "anthropic", "demo"} and datasets
            # The figures are boxes in a row, not a bulleted list (the admin's CSS bullets every li).
            markers = page.eval_on_selector_all(".dashboard-figures li", "els => els.map(e => getComputedStyle(e).listStyleType)")
            assert markers and set(markers) == {"none"}
            page.wait_for_timeout(300)  # the browser's own request for an icon, if it makes one
            assert problems == []
        finally:
            browser.close()
