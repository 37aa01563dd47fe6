"""Celery tasks of the accounts app: thin, take ids, call one service in accounts.data_rights.

Results are ignored (nothing a task returns belongs in the result backend), and the services
check state first, so a task delivered twice does its work once.
"""

from __future__ import annotations

from celery import shared_task

from . import data_rights, services


def _retry_when_free(task, held: data_rights.LeaseHeld) -> None:
    """Another run holds the lease: come back when a dead run's lease has run out (a live run
    has finished by then, and the retry finds nothing to do). In-process (eager, the embedded
    default) a retry would run again at once while the other run still holds it: that run
    finishes the work, or the periodic jobs pick it up if it dies."""
    if task.request.is_eager:
        return
    raise task.retry(countdown=held.retry_in, exc=held)


@shared_task(bind=True, name="accounts.export_build", ignore_result=True, max_retries=5)
def export_build_task(self, export_id: str) -> None:
    # Redelivered after its worker was killed (acks late), it finds the dead run's lease still
    # live: it retries, and rebuilds the export once that lease has run out.
    try:
        data_rights.export_build(export_id=export_id)
    except data_rights.LeaseHeld as held:
        _retry_when_free(self, held)


@shared_task(
    bind=True,
    name="accounts.erasure_run",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=10,
)
def erasure_run_task(self, erasure_id: str) -> None:
    # Each retry resumes after the last finished step; erasures_resume_task catches the rest.
    # Redelivered after its worker was killed, it finds the dead run's lease live and retries
    # when it runs out, instead of being acked having done nothing.
    try:
        data_rights.erasure_run(erasure_id=erasure_id)
    except data_rights.LeaseHeld as held:
        _retry_when_free(self, held)


@shared_task(name="accounts.exports_purge_expired", ignore_result=True)
def exports_purge_expired() -> int:
    return data_rights.exports_purge_expired()


@shared_task(name="accounts.erasures_resume", ignore_result=True)
def erasures_resume_task() -> None:
    data_rights.erasures_resume_stuck()


@shared_task(name="accounts.conversations_retention", ignore_result=True)
def conversations_retention_task() -> None:
    data_rights.retention_purge()


@shared_task(name="accounts.password_reset_send", ignore_result=True)
def password_reset_send_task(email: str, domain: str, use_https: bool) -> None:
    services.password_reset_send(email=email, domain=domain, use_https=use_https)
