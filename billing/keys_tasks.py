"""Periodic work on provider keys. Thin: each task calls one service in billing.keys.

Scheduled in settings.CELERY_BEAT_SCHEDULE.
"""

from __future__ import annotations

from celery import shared_task

from . import keys


@shared_task(name="billing.keys_health_check", ignore_result=True)
def keys_health_check() -> dict[str, int]:
    """Test every enabled key (one-token calls) and disable keys that have finished draining.
    Safe to run twice: each test only moves a key's health to what the provider says now."""
    return keys.keys_check_health()


@shared_task(name="billing.keys_import_from_env", ignore_result=True)
def keys_import_from_env() -> dict[str, str]:
    return keys.keys_import_from_env()
