from django.conf import settings

from chatsite.celery import app


def test_every_periodic_job_names_a_registered_task():
    app.loader.import_default_modules()
    registered = set(app.tasks.keys())
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled, "no periodic jobs are scheduled"
    assert scheduled <= registered, f"scheduled but not registered: {scheduled - registered}"
    # The jobs the issues ask for: the reaper, reservation expiry, key health, export purge,
    # resumable erasure and retention.
    assert {
        "conversations.tasks.replies_reap_stale",
        "billing.tasks.reservations_expire",
        "billing.keys_health_check",
        "accounts.exports_purge_expired",
        "accounts.erasures_resume",
        "accounts.conversations_retention",
    } <= scheduled
