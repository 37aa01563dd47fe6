"""Reads for pages and APIs.

A person's own usage is read from their ledger rows (index usage_user_time), counted in their own
calendar: the daily rollup's days are UTC days, which would put a call made just after midnight
in Auckland into the previous month, unlike the monthly budget beside it. Site and team totals
(the admin dashboards) stay on the rollup."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from .budgets import BudgetStatus, budget_status, time_zone
from .money import ZERO


@dataclass(frozen=True)
class ModelUsage:
    model: str  # "provider:model"
    label: str
    spent: Decimal
    input_tokens: int
    output_tokens: int
    requests: int


@dataclass(frozen=True)
class DayUsage:
    day: dt.date
    spent: Decimal
    requests: int


@dataclass(frozen=True)
class UsageSummary:
    date_from: dt.date
    date_to: dt.date
    spent: Decimal
    by_model: list[ModelUsage]
    daily: list[DayUsage]  # every day of the range, zero days included
    budgets: list[BudgetStatus]


def current_month(*, user) -> tuple[dt.date, dt.date]:
    """First and last day of the user's current calendar month, in their time zone."""
    today = timezone.now().astimezone(time_zone(user.timezone or "UTC")).date()
    first = today.replace(day=1)
    last = (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    return first, last


# The days usage_summary can be asked about. Its range ends at midnight after the last day, in
# the user's zone, and the database compares in UTC: at year 1 or 9999 those instants fall off
# Python's calendar (OverflowError). No usage predates this software or lies that far ahead.
USAGE_DATE_MIN = dt.date(2000, 1, 1)
USAGE_DATE_MAX = dt.date(9998, 12, 31)


def usage_summary(*, user, date_from: dt.date, date_to: dt.date) -> UsageSummary:
    """The user's own spend between two days inclusive of their calendar (their time zone), by
    model and by day, with every budget covering them. Both days within USAGE_DATE_MIN..USAGE_DATE_MAX."""
    from .models import UsageRecord
    from .prices import label_display, prices_available

    tz = time_zone(user.timezone or "UTC")
    start = dt.datetime.combine(date_from, dt.time(0), tzinfo=tz)
    end = dt.datetime.combine(date_to + dt.timedelta(days=1), dt.time(0), tzinfo=tz)
    rows = UsageRecord.objects.filter(user=user, created_at__gte=start, created_at__lt=end)
    labels = {q.model_id: label_display(q.label) for q in prices_available()}
    by_model = [
        ModelUsage(
            model=f"{r['provider']}:{r['model']}",
            label=labels.get(f"{r['provider']}:{r['model']}", r["model"]),
            spent=r["spent"] or ZERO,
            input_tokens=r["input_tokens"] or 0,
            output_tokens=r["output_tokens"] or 0,
            requests=r["requests"] or 0,
        )
        for r in rows.values("provider", "model")
        .annotate(
            spent=Sum("cost"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), requests=Count("id")
        )
        .order_by("provider", "model")
    ]
    by_model.sort(key=lambda m: (-m.spent, m.model))
    per_day = {
        r["day"]: r
        for r in rows.annotate(day=TruncDate("created_at", tzinfo=tz))
        .values("day")
        .annotate(spent=Sum("cost"), requests=Count("id"))
        .order_by()
    }
    daily = []
    day = date_from
    while day <= date_to:
        r = per_day.get(day)
        daily.append(DayUsage(day=day, spent=(r["spent"] if r else ZERO) or ZERO, requests=(r["requests"] if r else 0) or 0))
        day += dt.timedelta(days=1)
    return UsageSummary(
        date_from=date_from,
        date_to=date_to,
        spent=sum((m.spent for m in by_model), ZERO),
        by_model=by_model,
        daily=daily,
        budgets=budget_status(user=user),
    )
