import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

app = Celery("chatsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The key vault keeps its periodic health check beside the keys, in billing/keys_tasks.py.
app.autodiscover_tasks(related_name="keys_tasks")


def beat_embedded_start():
    """Run the periodic jobs (CELERY_BEAT_SCHEDULE) in a daemon thread of this process: Celery's
    own beat service and scheduler, with the schedule kept in memory (no schedule file). Meant
    for the embedded default, where tasks run eagerly and no beat process exists: each due job
    runs in that thread. Returns the thread (stop() ends it)."""
    from celery.beat import EmbeddedService

    # A job whose task is not imported yet would be sent to the broker instead: here, nowhere.
    app.loader.import_default_modules()
    beat = EmbeddedService(app, thread=True, scheduler_cls="celery.beat:Scheduler")
    beat.start()
    return beat
