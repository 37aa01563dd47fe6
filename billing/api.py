"""JSON API: the user's own usage. CONTRACT section 4."""

from __future__ import annotations

import datetime as dt

from django.http import JsonResponse
from django.utils.translation import gettext as _

from chatsite.api import api_error as _error
from chatsite.api import api_view

from .money import money_str
from .selectors import USAGE_DATE_MAX, USAGE_DATE_MIN, current_month, usage_summary

MAX_RANGE_DAYS = 366


def _date(raw: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(raw) if raw and len(raw) == 10 else None
    except ValueError:
        return None


@api_view(("GET",))
def usage(request):
    default_from, default_to = current_month(user=request.user)
    raw_from, raw_to = request.GET.get("from"), request.GET.get("to")
    date_from = _date(raw_from) if raw_from is not None else default_from
    date_to = _date(raw_to) if raw_to is not None else default_to
    if date_from is None or date_to is None:
        return _error(400, "invalid_input", _("from and to must be dates written YYYY-MM-DD."))
    if not (USAGE_DATE_MIN <= date_from and date_to <= USAGE_DATE_MAX):
        return _error(
            400,
            "invalid_input",
            _("from and to must be between %(min)s and %(max)s.") % {"min": USAGE_DATE_MIN.isoformat(), "max": USAGE_DATE_MAX.isoformat()},
        )
    if date_from > date_to:
        return _error(400, "invalid_input", _("from must not be after to."))
    if (date_to - date_from).days >= MAX_RANGE_DAYS:
        return _error(400, "invalid_input", _("Ask for at most %(days)s days at a time.") % {"days": MAX_RANGE_DAYS})

    summary = usage_summary(user=request.user, date_from=date_from, date_to=date_to)
    return JsonResponse(
        {
            "from": summary.date_from.isoformat(),
            "to": summary.date_to.isoformat(),
            "spent": money_str(summary.spent),
            "by_model": [
                {
                    "model": m.model,
                    "spent": money_str(m.spent),
                    "input_tokens": m.input_tokens,
                    "output_tokens": m.output_tokens,
                    "requests": m.requests,
                }
                for m in summary.by_model
            ],
            "budgets": [
                {
                    "scope": b.scope,
                    "name": b.name,
                    "period": b.period,
                    "limit": money_str(b.limit),
                    "spent": money_str(b.spent),
                    "remaining": money_str(b.remaining),
                }
                for b in summary.budgets
            ],
        }
    )
