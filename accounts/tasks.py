"""Celery tasks of the accounts app: thin, take ids, call one service in accounts.data_rights.

Results are ignored (nothing a task returns belongs in the result backend), and the services
check state first, so a task delivered twice does its work once.
"""

from __future__ import annotations

from celery import shared_task

from . import data_rights


@shared_task(name="accounts.export_build", ignore_result=True)
def export_build_task(export_id: str) -> None:
    data_rights.export_build(export_id=export_id)


@shared_task(
    name="accounts.erasure_run",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=30,
    retry_backoff_max=600,
    max_retries=10,
)
def erasure_run_task(erasure_id: str) -> None:
    # Each retry resumes after the last finished step; erasures_resume_task catches the rest.
    data_rights.erasure_run(erasure_id=erasure_id)


@shared_task(name="accounts.exports_purge_expired", ignore_result=True)
def exports_purge_expired() -> int:
    return data_rights.exports_purge_expired()


@shared_task(name="accounts.erasures_resume", ignore_result=True)
def erasures_resume_task() -> None:
    data_rights.erasures_resume_stuck()


@shared_task(name="accounts.conversations_retention", ignore_result=True)
def conversations_retention_task() -> None:
    data_rights.retention_purge()
