"""The cost dashboard's reads. Every figure comes from the rollups (DailyUsage, KeyDailyStats,
LatencyBucket) plus the small Budget and ProviderKey tables, never from the UsageRecord ledger:
the number of rows read grows with days x users x models, not with calls, and the number of
queries is fixed.

Dates: every date on the dashboard is a UTC day, "today" included (dashboard_today), because
the rollups are kept by UTC day (billing.ledger). A figure for a day equals the ledger's sum
between that day's UTC midnights. Days in the operator's own zone cannot be cut from UTC-day
rollups: "today" there would leave out the latest hours west of UTC, or be a day with no rows
yet east of it.
"""

from __future__ import annotations

import datetime
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import connection
from django.db.models import BigIntegerField, Case, DecimalField, ExpressionWrapper, F, Q, Sum, Value, When
from django.db.models.functions import Cast, Round
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import Team

from .budgets import budgets_with_spent_now
from .models import MONEY, Budget, DailyUsage, ProviderKey
from .models_stats import LATENCY_BUCKETS_MS, KeyDailyStats, LatencyBucket

ZERO = Decimal("0")
PRESETS = ("today", "7d", "30d", "month", "custom")
DEFAULT_PRESET = "7d"
# Longer ranges are almost always a typo (2205 for 2025); three years covers any real question.
MAX_RANGE_DAYS = 3 * 366
TOP_N = 10
LIST_CAP = 50  # rows in the budget and key alert tables; more than that is a different problem


@dataclass(frozen=True)
class DashboardRange:
    start: datetime.date  # first day, inclusive
    end: datetime.date  # last day, inclusive
    preset: str
    team: Team | None = None

    @property
    def days(self) -> list[datetime.date]:
        return [self.start + datetime.timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    def utc_bounds(self) -> tuple[datetime.datetime, datetime.datetime]:
        """The ledger interval these rollup days cover: [start 00:00, end+1 00:00) UTC."""
        start = datetime.datetime.combine(self.start, datetime.time.min, tzinfo=datetime.UTC)
        end = datetime.datetime.combine(self.end + datetime.timedelta(days=1), datetime.time.min, tzinfo=datetime.UTC)
        return start, end


def dashboard_today(*, now: datetime.datetime | None = None) -> datetime.date:
    """Today on the rollup's calendar: the current UTC day, whatever the operator's time zone."""
    return (now or timezone.now()).astimezone(datetime.UTC).date()


def _preset_bounds(preset: str, today: datetime.date) -> tuple[datetime.date, datetime.date]:
    if preset == "today":
        return today, today
    if preset == "30d":
        return today - datetime.timedelta(days=29), today
    if preset == "month":
        return today.replace(day=1), today
    return today - datetime.timedelta(days=6), today


def _parse_date(raw: str) -> datetime.date | None:
    try:
        return datetime.date.fromisoformat(raw.strip())
    except (ValueError, TypeError):
        return None


def dashboard_range_parse(*, params: Mapping[str, str], today: datetime.date) -> tuple[DashboardRange, list[str]]:
    """Read `range`, `from`, `to` and `team` from query parameters.

    Never raises on bad input: it returns the range actually shown (the default where the input
    made no sense) and the messages telling the operator what was wrong."""
    problems: list[str] = []
    preset = params.get("range") or ("custom" if params.get("from") or params.get("to") else DEFAULT_PRESET)
    if preset not in PRESETS:
        problems.append(_("Unknown date range “%(range)s”; showing the last 7 days.") % {"range": preset[:20]})
        preset = DEFAULT_PRESET
    if preset == "custom":
        start, end = _parse_date(params.get("from", "")), _parse_date(params.get("to", ""))
        if start is None or end is None:
            problems.append(_("Dates must look like 2025-01-31; showing the last 7 days."))
        elif start > end:
            problems.append(_("The start date is after the end date; showing the last 7 days."))
        elif (end - start).days + 1 > MAX_RANGE_DAYS:
            problems.append(
                _("A range can cover at most %(days)d days; showing the last 7 days.") % {"days": MAX_RANGE_DAYS}
            )
        elif start > today:
            problems.append(_("The range starts in the future; showing the last 7 days."))
        else:
            return DashboardRange(start, min(end, today), "custom", _team(params, problems)), problems
        preset = DEFAULT_PRESET
    start, end = _preset_bounds(preset, today)
    return DashboardRange(start, end, preset, _team(params, problems)), problems


def _team(params: Mapping[str, str], problems: list[str]) -> Team | None:
    raw = (params.get("team") or "").strip()
    if not raw:
        return None
    team = Team.objects.filter(pk=int(raw)).first() if raw.isdigit() and len(raw) < 19 else None
    if team is None:
        problems.append(_("There is no team “%(team)s”; showing every team.") % {"team": raw[:20]})
    return team


def _rollup(rng: DashboardRange):
    qs = DailyUsage.objects.filter(day__gte=rng.start, day__lte=rng.end)
    return qs.filter(team=rng.team) if rng.team is not None else qs


def _ratio(part: int, whole: int) -> Decimal | None:
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001")) if whole else None


@dataclass
class Usage:
    """Sums of one slice of the rollup."""

    cost: Decimal = ZERO
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def add(self, row: Mapping) -> None:
        self.cost += _cost(row["cost"])
        self.requests += row["requests"] or 0
        self.errors += row["errors"] or 0
        self.input_tokens += row["input_tokens"] or 0
        self.output_tokens += row["output_tokens"] or 0
        self.cached_tokens += row["cached_tokens"] or 0

    @property
    def error_rate(self) -> Decimal | None:
        return _ratio(self.errors, self.requests)


# SQLite keeps decimals as doubles and SUMs them in floating point, which drifts off the ledger in
# the last places. There the sum runs over whole 1e-10 dollars (exact 64-bit integers) and is
# scaled back in Python; PostgreSQL's numeric sum is exact as it is.
_SCALE = 10 ** MONEY["decimal_places"]


def _cost_sum() -> Sum:
    if connection.vendor == "sqlite":
        return Sum(Cast(Round(F("cost") * _SCALE), BigIntegerField()))
    return Sum("cost")


def _cost(value) -> Decimal:
    """A cost sum as the database returned it, as an exact Decimal."""
    if value is None:
        return ZERO
    if isinstance(value, int):
        return Decimal(value) / _SCALE
    return value


def _sums() -> dict:
    return {
        "cost": _cost_sum(),
        "requests": Sum("requests"),
        "errors": Sum("errors"),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cached_tokens": Sum("cached_tokens"),
    }




@dataclass
class SpendBreakdown:
    total: Usage = field(default_factory=Usage)
    by_provider: dict[str, Usage] = field(default_factory=dict)
    by_model: dict[tuple[str, str], Usage] = field(default_factory=dict)
    # day -> series -> cost, for the two stacked charts
    day_by_model: dict[datetime.date, dict[str, Decimal]] = field(default_factory=dict)
    day_by_provider: dict[datetime.date, dict[str, Decimal]] = field(default_factory=dict)


def dashboard_spend(*, rng: DashboardRange) -> SpendBreakdown:
    """Totals, per provider, per model and per day, from ONE grouped query over the rollup."""
    out = SpendBreakdown()
    by_model: dict = defaultdict(lambda: defaultdict(lambda: ZERO))
    by_provider: dict = defaultdict(lambda: defaultdict(lambda: ZERO))
    rows = _rollup(rng).values("day", "provider", "model").annotate(**_sums()).order_by()
    for row in rows:
        out.total.add(row)
        out.by_provider.setdefault(row["provider"], Usage()).add(row)
        out.by_model.setdefault((row["provider"], row["model"]), Usage()).add(row)
        by_model[row["day"]][f"{row['provider']}:{row['model']}"] += _cost(row["cost"])
        by_provider[row["day"]][row["provider"]] += _cost(row["cost"])
    out.day_by_model = {d: dict(v) for d, v in by_model.items()}
    out.day_by_provider = {d: dict(v) for d, v in by_provider.items()}
    return out


def _exact_costs(rows) -> list[dict]:
    rows = list(rows)
    for row in rows:
        row["cost"] = _cost(row["cost"])
    return rows


def dashboard_top_users(*, rng: DashboardRange, limit: int = TOP_N) -> list[dict]:
    """The biggest spenders: user id and name (None for erased users, folded together)."""
    return _exact_costs(
        _rollup(rng)
        .values("user_id", "user__username")
        .annotate(**_sums())
        .order_by("-cost", "user_id")[:limit]
    )


def dashboard_top_teams(*, rng: DashboardRange, limit: int = TOP_N) -> list[dict]:
    return _exact_costs(
        _rollup(rng)
        .filter(team__isnull=False)
        .values("team_id", "team__name")
        .annotate(**_sums())
        .order_by("-cost", "team_id")[:limit]
    )


def dashboard_by_key(*, rng: DashboardRange) -> list[dict]:
    """Requests and errors per key, with the key's name (None for keyless calls or a deleted key).

    KeyDailyStats has no team dimension: with a team filter these figures still cover everyone."""
    rows = list(
        KeyDailyStats.objects.filter(day__gte=rng.start, day__lte=rng.end)
        .values("provider", "key_id")
        .annotate(requests=Sum("requests"), errors=Sum("errors"), cancelled=Sum("cancelled"))
        .order_by("provider", "key_id")
    )
    ids = [r["key_id"] for r in rows if r["key_id"]]
    names = dict(ProviderKey.objects.filter(pk__in=ids).values_list("id", "name")) if ids else {}
    for row in rows:
        row["name"] = names.get(row["key_id"])
        row["error_rate"] = _ratio(row["errors"], row["requests"])
    return rows


def percentile_ms(counts: Mapping[int, int], fraction: float) -> int | None:
    """The upper bound (ms) of the bucket holding the `fraction` quantile; None without data.

    Beyond the last bound the answer is "more than" that bound, returned as -bound so the
    caller can say so."""
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return LATENCY_BUCKETS_MS[bucket] if bucket < len(LATENCY_BUCKETS_MS) else -LATENCY_BUCKETS_MS[-1]
    return None  # pragma: no cover - unreachable, the loop covers `total`


def dashboard_latency(*, rng: DashboardRange) -> list[dict]:
    """p50/p95 of time to first token and total latency per provider, from bucket counts."""
    counts: dict[str, dict[str, dict[int, int]]] = defaultdict(lambda: defaultdict(dict))
    rows = (
        LatencyBucket.objects.filter(day__gte=rng.start, day__lte=rng.end)
        .values("provider", "metric", "bucket")
        .annotate(n=Sum("count"))
        .order_by()
    )
    for row in rows:
        counts[row["provider"]][row["metric"]][row["bucket"]] = row["n"]
    out = []
    for provider in sorted(counts):
        metrics = counts[provider]
        out.append(
            {
                "provider": provider,
                "calls": sum(metrics.get(LatencyBucket.Metric.TOTAL, {}).values()),
                "ttft_p50": percentile_ms(metrics.get(LatencyBucket.Metric.TTFT, {}), 0.50),
                "ttft_p95": percentile_ms(metrics.get(LatencyBucket.Metric.TTFT, {}), 0.95),
                "total_p50": percentile_ms(metrics.get(LatencyBucket.Metric.TOTAL, {}), 0.50),
                "total_p95": percentile_ms(metrics.get(LatencyBucket.Metric.TOTAL, {}), 0.95),
            }
        )
    return out


def dashboard_budgets_at_risk(*, team: Team | None = None, limit: int = LIST_CAP) -> list[Budget]:
    """Budgets whose spend in their current period plus holds has reached their warning ratio,
    fullest first; each with `spent_now` (billing.budgets.budgets_with_spent_now: a period that
    has ended counts nothing, as at the budget check). With a team filter: that team's budgets
    and its members' own."""
    used = F("spent_now") + F("reserved")
    # A zero limit is "no spending allowed": any use fills it, so it sorts as fullest.
    fill = Case(
        When(limit__lte=0, then=Value(Decimal("1e6"))),
        default=ExpressionWrapper(used / F("limit"), output_field=DecimalField(**MONEY)),
        output_field=DecimalField(**MONEY),
    )
    qs = (
        budgets_with_spent_now(Budget.objects.all())
        .annotate(used=used, fill=fill)
        .filter(used__gte=F("limit") * F("warn_ratio"))
        .select_related("user", "team")
        .only("id", "period", "limit", "spent", "reserved", "warn_ratio", "user__username", "team__name")
        .order_by("-fill", "id")
    )
    if team is not None:
        qs = qs.filter(Q(team=team) | Q(user__teammembership__team=team))
    return list(qs[:limit])


def dashboard_keys_unhealthy(*, now: datetime.datetime | None = None, limit: int = LIST_CAP) -> list[ProviderKey]:
    """Keys cooling down, failing or invalid. Reads the key table directly (it is small); the
    encrypted secret is never loaded."""
    now = now or timezone.now()
    bad = [ProviderKey.Health.COOLING_DOWN, ProviderKey.Health.FAILING, ProviderKey.Health.INVALID]
    return list(
        ProviderKey.objects.filter(Q(health__in=bad) | Q(cooldown_until__gt=now))
        .only("id", "name", "provider", "state", "health", "cooldown_until", "last_error_kind", "consecutive_failures")
        .order_by("provider", "name")[:limit]
    )


def dashboard_team_choices() -> list[tuple[int, str]]:
    return list(Team.objects.order_by("name").values_list("id", "name"))

