"""The usage page in a real Chromium: the chart draws from the JSON block under the strict
Content-Security-Policy (no inline script, nothing from another origin)."""

from decimal import Decimal

import pytest

from billing.budgets import budget_set
from billing.ledger import usage_record
from tests.colours import COLOUR_MATH

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


# WCAG 2.1's contrast ratio of CSS colours, each laid over what is under it (the row's cell over
# the page): for each kind of budget row, its background, its status label and icon, and the
# lowest contrast of any text in it.
ROW_LOOK = """() => {
""" + COLOUR_MATH + """  const background = (el) => {
    const chain = [];
    for (let n = el; n; n = n.parentElement) chain.unshift(parse(getComputedStyle(n).backgroundColor));
    return chain.reduce((under, top) => over(top, under), [255, 255, 255, 1]);
  };
  const shown = (el) => { const r = el.getBoundingClientRect(); return r.width > 2 && r.height > 2; };
  const look = (row) => {
    const flag = row.querySelector(".budget-flag");
    const icon = flag && flag.querySelector(".budget-icon");
    let lowest = 99;
    for (const el of row.querySelectorAll("*")) {
      if (![...el.childNodes].some((n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim())) continue;
      const bg = background(el);
      lowest = Math.min(lowest, ratio(over(parse(getComputedStyle(el).color), bg), bg));
    }
    return {
      background: "rgb(" + background(row.cells[0]).slice(0, 3).join(", ") + ")",
      luminance: luminance(background(row.cells[0])),
      flag: flag && shown(flag) ? flag.innerText.trim() : null,
      flagWeight: flag ? Number(getComputedStyle(flag).fontWeight) : 0,
      icon: icon && shown(icon) ? { text: icon.textContent.trim(), hidden: icon.getAttribute("aria-hidden"),
                                   radius: getComputedStyle(icon).borderTopLeftRadius } : null,
      lowestContrast: Math.round(lowest * 100) / 100,
    };
  };
  const rows = [...document.querySelectorAll("table.usage-budgets tbody tr")];
  const ok = rows.find((r) => !r.className);
  return { exceeded: look(document.querySelector("tr.budget-exceeded")),
           warn: look(document.querySelector("tr.budget-warn")), ok: look(ok) };
}"""


def test_used_up_and_nearly_used_budgets_stand_out_in_words_and_readable_colours(needs_chromium, live_server, make_user, client):
    # The rows had classes and no style: a used-up budget looked like one with room left.
    from playwright.sync_api import sync_playwright

    from billing.models import Budget
    from tests.conftest import CHROMIUM

    user = make_user("viewer")
    used_up = budget_set(user=user, period="day", limit="1")
    nearly = budget_set(user=user, period="month", limit="10", warn_ratio="0.8")
    budget_set(user=user, period="total", limit="100")
    Budget.objects.filter(pk=used_up.pk).update(spent=Decimal("1"))
    Budget.objects.filter(pk=nearly.pk).update(spent=Decimal("8.5"))
    client.force_login(user)
    session = client.cookies["sessionid"].value

    looks = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            for scheme in ("light", "dark"):
                context = browser.new_context(color_scheme=scheme)
                context.add_cookies([{"name": "sessionid", "value": session, "url": live_server.url}])
                page = context.new_page()
                page.goto(f"{live_server.url}/usage/")
                looks[scheme] = page.evaluate(ROW_LOOK)
                context.close()
        finally:
            browser.close()

    for scheme, rows in looks.items():
        exceeded, warn, ok = rows["exceeded"], rows["warn"], rows["ok"]
        # Told in words, with an icon each of its own (shown, and silent to screen readers, which
        # read the words), not by colour alone.
        assert exceeded["flag"].startswith("×") and "Used up" in exceeded["flag"], (scheme, exceeded)
        assert warn["flag"].startswith("!") and "Warning" in warn["flag"], (scheme, warn)
        assert exceeded["icon"]["hidden"] == warn["icon"]["hidden"] == "true"
        assert exceeded["icon"]["radius"] != warn["icon"]["radius"]  # a square and a round mark
        assert exceeded["flagWeight"] >= 600 and warn["flagWeight"] >= 600 and ok["flag"] is None
        # And by colour: three different rows, every text in them readable (WCAG AA).
        assert len({exceeded["background"], warn["background"], ok["background"]}) == 3, (scheme, rows)
        for kind, row in rows.items():
            assert row["lowestContrast"] >= 4.5, (scheme, kind, row)
    # Each scheme its own: light tints on the light page, dark ones on the dark page.
    assert all(looks["light"][k]["luminance"] > 0.7 for k in ("exceeded", "warn"))
    assert all(looks["dark"][k]["luminance"] < 0.1 for k in ("exceeded", "warn"))
