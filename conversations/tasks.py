"""Celery tasks: thin, take ids, call one service. Queued with transaction.on_commit.

Scheduled in settings.CELERY_BEAT_SCHEDULE.
"""

from celery import shared_task

from . import services, turns


@shared_task(autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
def conversation_title(conversation_id: str) -> None:
    services.conversation_title_generate(conversation_id=conversation_id)


@shared_task(autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=3)
def conversation_summarize(conversation_id: str, upto_message_id: str) -> None:
    services.conversation_summary_update(conversation_id=conversation_id, upto_message_id=upto_message_id)


@shared_task
def replies_reap_stale() -> int:
    return turns.replies_reap_stale()
