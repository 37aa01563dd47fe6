import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

app = Celery("chatsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The key vault keeps its periodic health check beside the keys, in billing/keys_tasks.py.
app.autodiscover_tasks(related_name="keys_tasks")
