"""Periodic billing work. Scheduled in settings.CELERY_BEAT_SCHEDULE.
"""

from __future__ import annotations

from celery import shared_task

from . import budgets


@shared_task(name="billing.tasks.reservations_expire", ignore_result=True)
def reservations_expire() -> int:
    """Release holds left by processes that died before settling."""
    return budgets.reservations_expire()
