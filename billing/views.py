"""The user's own usage page: budgets, a daily chart, spend by model."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.views.decorators.http import require_GET

from .money import money_str
from .selectors import current_month, usage_summary


@require_GET
@login_required
def usage_page(request):
    date_from, date_to = current_month(user=request.user)
    summary = usage_summary(user=request.user, date_from=date_from, date_to=date_to)
    chart = {
        "labels": [d.day.isoformat() for d in summary.daily],
        # Strings keep the exact decimals; the chart script parses them only to draw.
        "spent": [money_str(d.spent) for d in summary.daily],
    }
    return render(request, "billing/usage.html", {"summary": summary, "chart": chart})
