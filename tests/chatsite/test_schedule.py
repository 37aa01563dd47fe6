import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connections
from django.utils import timezone

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


@pytest.mark.django_db(transaction=True)
def test_the_embedded_beat_runs_the_periodic_jobs_in_process(make_user):
    # The embedded default has no broker and no beat process: without this thread, a reply
    # whose process died would answer "busy" in its conversation for ever.
    from chatsite.celery import beat_embedded_start
    from conversations.models import Conversation, Message

    user = make_user("restarted")
    conversation = Conversation.objects.create(owner=user, model="demo:echo")
    long_ago = timezone.now() - timedelta(minutes=30)
    question = Message.objects.create(conversation=conversation, role="user", content="before the restart")
    dead = Message.objects.create(
        conversation=conversation, role="assistant", status="streaming", reply_to=question, model="demo:echo",
        content="half a rep", heartbeat_at=long_ago,
    )
    schedule = app.conf.beat_schedule
    app.conf.beat_schedule = {"reap": {"task": "conversations.tasks.replies_reap_stale", "schedule": 0.2}}
    beat = beat_embedded_start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            dead.refresh_from_db()
            if dead.status != "streaming":
                break
            time.sleep(0.1)
    finally:
        beat.stop()
        app.conf.beat_schedule = schedule
        connections.close_all()
    assert (dead.status, dead.error_code, dead.content) == ("error", "interrupted", "half a rep")
