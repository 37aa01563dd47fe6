"""The cost dashboard page and its CSV downloads: parse, authorize, call the selectors of
billing.dashboard, lay the figures out as tables. Mounted by chatsite.admin_site (admin_view)."""

from __future__ import annotations

import csv
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.translation import gettext as _

from . import dashboard as d
from . import keys
from .models import UsageRecord
from .templatetags.billing_money import usd

PERMISSION = "billing.view_dashboard"
CENT = Decimal("0.01")
CHART_PLACES = Decimal("0.0001")
# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Table:
    name: str
    title: str
    columns: list[tuple[str, str]]  # (label, kind): kind in text, int, money, ratio, ms, datetime
    rows: list[list] = field(default_factory=list)
    links: list[str | None] = field(default_factory=list)
    note: str = ""
    empty: str = ""  # what an empty table says, when not "Nothing in this range." (a table of now)

    def add(self, values: list, link: str | None = None) -> None:
        self.rows.append(values)
        self.links.append(link)

    def display_rows(self) -> list[tuple[list[str], str | None]]:
        return [([_display(v, kind) for v, (_label, kind) in zip(row, self.columns, strict=True)], link)
                for row, link in zip(self.rows, self.links, strict=True)]


def _display(value, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "money":
        # As every other page shows money: a spend under a cent is shown, not "$0.00".
        return usd(value)
    if kind == "int":
        return f"{value:,}"
    if kind == "ratio":
        return f"{(value * 100).quantize(CENT)} %"
    if kind == "ms":
        return _("> %(ms)s ms") % {"ms": f"{-value:,}"} if value < 0 else _("≤ %(ms)s ms") % {"ms": f"{value:,}"}
    if kind == "datetime":
        return timezone.localtime(value).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _csv_cell(value, kind: str) -> str:
    if value is None:
        text = ""
    elif kind == "ms":
        text = f">{-value}" if value < 0 else str(value)
    elif kind == "datetime":
        text = timezone.localtime(value).isoformat()
    else:
        text = str(value)  # Decimals whole, not rounded: the CSV is for adding up
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _admin_url(name: str, *args, query: dict | None = None, user=None) -> str | None:
    """The admin page `name`, or None where it is not registered or `user` may not view it
    (a link that answers 403 is worse than none)."""
    if user is not None:
        app_label, model = name.split("_", 1)[0], name.split("_", 1)[1].rsplit("_", 1)[0]
        if not user.has_perm(f"{app_label}.view_{model}"):
            return None
    try:
        url = reverse(f"admin:{name}", args=args)
    except NoReverseMatch:  # that model's admin is not registered on this site
        return None
    return f"{url}?{urlencode(query)}" if query else url


class Dashboard:
    """The figures of one range, each table built on first use (a CSV asks for one table)."""

    def __init__(self, rng: d.DashboardRange, *, user=None):
        self.rng = rng
        self.user = user  # links are shown only to pages this operator may open
        start, end = rng.utc_bounds()
        # The ledger rows behind a figure: the same interval, the same team.
        self.ledger_query = {"created_at__gte": start.isoformat(sep=" "), "created_at__lt": end.isoformat(sep=" ")}
        if rng.team is not None:
            self.ledger_query["team__id__exact"] = rng.team.pk

    def ledger_link(self, **filters) -> str | None:
        return _admin_url("billing_usagerecord_changelist", query={**self.ledger_query, **filters}, user=self.user)

    @cached_property
    def spend(self) -> d.SpendBreakdown:
        return d.dashboard_spend(rng=self.rng)

    @cached_property
    def figures(self) -> list[tuple[str, str, str | None]]:
        t = self.spend.total
        errors = self.ledger_link(outcome__exact=UsageRecord.Outcome.ERROR)
        return [
            (_("Spend"), _display(t.cost, "money"), self.ledger_link()),
            (_("Requests"), _display(t.requests, "int"), self.ledger_link()),
            (_("Input tokens"), _display(t.input_tokens, "int"), self.ledger_link()),
            (_("Output tokens"), _display(t.output_tokens, "int"), self.ledger_link()),
            (_("Error rate"), _display(t.error_rate, "ratio"), errors),
        ]

    def table_providers(self) -> Table:
        table = Table("providers", _("By provider"), _usage_columns(_("Provider")))
        for provider, u in sorted(self.spend.by_provider.items(), key=lambda kv: -kv[1].cost):
            table.add([provider, *_usage_values(u)], self.ledger_link(provider__exact=provider))
        return table

    def table_models(self) -> Table:
        table = Table("models", _("By model"), _usage_columns(_("Model")))
        for (provider, model), u in sorted(self.spend.by_model.items(), key=lambda kv: -kv[1].cost):
            table.add([f"{provider}:{model}", *_usage_values(u)],
                      self.ledger_link(provider__exact=provider, model__exact=model))
        return table

    def table_users(self) -> Table:
        table = Table("users", _("Top users"), _usage_columns(_("User")))
        for row in d.dashboard_top_users(rng=self.rng):
            u = d.Usage()
            u.add(row)
            name = row["user__username"] or _("(erased or no user)")
            link = self.ledger_link(user__id__exact=row["user_id"]) if row["user_id"] else self.ledger_link(user__isnull="True")
            table.add([name, *_usage_values(u)], link)
        return table

    def table_teams(self) -> Table:
        table = Table("teams", _("Top teams"), _usage_columns(_("Team")))
        for row in d.dashboard_top_teams(rng=self.rng):
            u = d.Usage()
            u.add(row)
            table.add([row["team__name"], *_usage_values(u)], self.ledger_link(team__id__exact=row["team_id"]))
        return table

    def table_keys(self) -> Table:
        table = Table(
            "keys",
            _("Errors by key"),
            [(_("Provider"), "text"), (_("Key"), "text"), (_("Requests"), "int"), (_("Errors"), "int"),
             (_("Cancelled"), "int"), (_("Error rate"), "ratio")],
            note=_("All teams: key statistics are not kept per team.") if self.rng.team else "",
        )
        query = {k: v for k, v in self.ledger_query.items() if k != "team__id__exact"}
        for row in d.dashboard_by_key(rng=self.rng):
            if row["key_id"] is None:
                name, link = _("(no key)"), None
            else:
                name = row["name"] or _("(deleted key)")
                link = _admin_url("billing_usagerecord_changelist", query={**query, "key__id__exact": row["key_id"]}, user=self.user)
            table.add([row["provider"], name, row["requests"], row["errors"], row["cancelled"], row["error_rate"]], link)
        return table

    def table_latency(self) -> Table:
        table = Table(
            "latency",
            _("Latency by provider"),
            [(_("Provider"), "text"), (_("Calls"), "int"), (_("First token p50"), "ms"), (_("First token p95"), "ms"),
             (_("Total p50"), "ms"), (_("Total p95"), "ms")],
            note=_("Percentiles are the upper bounds of histogram buckets, over all teams."),
        )
        query = {k: v for k, v in self.ledger_query.items() if k != "team__id__exact"}
        for row in d.dashboard_latency(rng=self.rng):
            table.add(
                [row["provider"], row["calls"], row["ttft_p50"], row["ttft_p95"], row["total_p50"], row["total_p95"]],
                _admin_url("billing_usagerecord_changelist", query={**query, "provider__exact": row["provider"]}, user=self.user),
            )
        return table

    def table_budgets(self) -> Table:
        table = Table(
            "budgets",
            _("Budgets near or over their limit"),
            [(_("Owner"), "text"), (_("Period"), "text"), (_("Limit"), "money"), (_("Spent"), "money"),
             (_("Reserved"), "money"), (_("Used"), "ratio")],
            note=_("Current period, whatever the date range."),
            empty=_("No budget is near or over its limit."),
        )
        for b in d.dashboard_budgets_at_risk(team=self.rng.team):
            owner = _("team %(name)s") % {"name": b.team.name} if b.team_id else _("user %(name)s") % {"name": b.user.username}
            used = (b.spent_now + b.reserved) / b.limit if b.limit else None
            table.add([owner, b.get_period_display(), b.limit, b.spent_now, b.reserved, used],
                      _admin_url("billing_budget_change", b.pk, user=self.user))
        return table

    def table_key_alerts(self) -> Table:
        table = Table(
            "key_alerts",
            _("Keys cooling down or invalid"),
            [(_("Provider"), "text"), (_("Key"), "text"), (_("State"), "text"), (_("Health"), "text"),
             (_("Cooling down until"), "datetime"), (_("Last error"), "text"), (_("Failures in a row"), "int")],
            note=_("Now, whatever the date range."),
            empty=_("No key is cooling down or invalid."),
        )
        for k in d.dashboard_keys_unhealthy():
            table.add([k.provider, k.name, k.get_state_display(), k.get_health_display(), k.cooldown_until,
                       keys.error_kind_label(k.last_error_kind), k.consecutive_failures], _admin_url("billing_providerkey_change", k.pk, user=self.user))
        return table

    TABLES: dict[str, Callable[[Dashboard], Table]] = {
        "providers": table_providers,
        "models": table_models,
        "users": table_users,
        "teams": table_teams,
        "keys": table_keys,
        "latency": table_latency,
        "budgets": table_budgets,
        "key_alerts": table_key_alerts,
    }

    def table(self, name: str) -> Table:
        return self.TABLES[name](self)

    def chart_data(self) -> dict:
        labels = [day.isoformat() for day in self.rng.days]
        return {
            "labels": labels,
            "by_model": _series(self.rng.days, self.spend.day_by_model),
            "by_provider": _series(self.rng.days, self.spend.day_by_provider),
            "currency_label": _("Spend (USD)"),
        }


def _usage_columns(first: str) -> list[tuple[str, str]]:
    return [(first, "text"), (_("Spend"), "money"), (_("Requests"), "int"), (_("Errors"), "int"),
            (_("Error rate"), "ratio"), (_("Input tokens"), "int"), (_("Output tokens"), "int")]


def _usage_values(u: d.Usage) -> list:
    return [u.cost, u.requests, u.errors, u.error_rate, u.input_tokens, u.output_tokens]


def _series(days: list[datetime.date], per_day: dict[datetime.date, dict[str, Decimal]]) -> list[dict]:
    names = sorted({name for costs in per_day.values() for name in costs})
    # Decimal strings, not floats: the chart parses them for drawing; money stays exact in transit.
    return [
        {"label": name, "data": [str(per_day.get(day, {}).get(name, d.ZERO).quantize(CHART_PLACES)) for day in days]}
        for name in names
    ]


def dashboard_view(request: HttpRequest, *, site) -> HttpResponse:
    if not request.user.has_perm(PERMISSION):
        raise PermissionDenied
    rng, problems = d.dashboard_range_parse(params=request.GET, today=d.dashboard_today())
    for problem in problems:
        messages.warning(request, problem)
    board = Dashboard(rng, user=request.user)

    if request.GET.get("format") == "csv":
        return _csv(request, board)

    context = {
        **site.each_context(request),
        "title": _("Cost dashboard"),
        "rng": rng,
        "presets": [("today", _("Today")), ("7d", _("7 days")), ("30d", _("30 days")),
                    ("month", _("This month")), ("custom", _("Custom"))],
        "teams": d.dashboard_team_choices(),
        "figures": board.figures,
        "tables": [board.table(name) for name in Dashboard.TABLES],
        "chart_data": board.chart_data(),
        # Said on the page: the dates are UTC days, the rollup's calendar (billing.dashboard).
        "calendar_tz": "UTC",
        "query_base": _query_base(rng),
    }
    return TemplateResponse(request, "admin/parley/dashboard.html", context)


def _query_base(rng: d.DashboardRange) -> str:
    """The query string that reproduces the range shown (used by the CSV links)."""
    query = {"range": rng.preset}
    if rng.preset == "custom":
        query.update({"from": rng.start.isoformat(), "to": rng.end.isoformat()})
    if rng.team is not None:
        query["team"] = rng.team.pk
    return urlencode(query)


def _back(request: HttpRequest) -> HttpResponseRedirect:
    params = request.GET.copy()
    params.pop("format", None)
    params.pop("table", None)
    return HttpResponseRedirect(f"{request.path}?{params.urlencode()}" if params else request.path)


def _csv(request: HttpRequest, board: Dashboard) -> HttpResponse:
    name = request.GET.get("table", "")
    if name not in Dashboard.TABLES:
        messages.error(request, _("There is no table “%(table)s” to download.") % {"table": name[:30]})
        return _back(request)
    table = board.table(name)
    if not table.rows:
        messages.info(request, _("“%(title)s” is empty for this range: there is nothing to download.") % {"title": table.title})
        return _back(request)
    filename = f"parley-{name}-{board.rng.start.isoformat()}-{board.rng.end.isoformat()}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    # The byte-order mark: Excel reads a CSV without it in the system's legacy code page, and
    # Korean headers and names come out garbled. Spreadsheets and CSV readers take it as UTF-8.
    response.write("\ufeff")
    writer = csv.writer(response)
    writer.writerow([label for label, _kind in table.columns])
    for row in table.rows:
        writer.writerow([_csv_cell(v, kind) for v, (_label, kind) in zip(row, table.columns, strict=True)])
    return response
