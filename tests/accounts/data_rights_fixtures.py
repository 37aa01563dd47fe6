"""Builders and scanners shared by the data-rights tests (tests/accounts/test_data_rights*.py).

The ledger's writer (billing.ledger.usage_record) belongs to the billing work and is a stub in
this branch, so usage rows are written here directly with the ORM, as the ledger would."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from celery.app.trace import build_tracer
from django.apps import apps
from django.conf import settings
from django.core.cache import caches
from django.db import connection
from django.utils import timezone

from billing.models import DailyUsage, UsageRecord
from conversations.models import Conversation, Message
from tests.dbenv import database_url

ROOT = Path(__file__).resolve().parents[2]


def manage_py(*args: str) -> subprocess.CompletedProcess:
    """A real `manage.py` run, for what argparse does before Django's error handling. Only for
    command lines refused before the database is opened: it points at an unused SQLite file."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{ROOT / 'unused-cli-test.sqlite3'}"}
    env.pop("REDIS_URL", None)
    try:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        (ROOT / "unused-cli-test.sqlite3").unlink(missing_ok=True)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr without the dev-default warnings the settings print on every start."""
    return [line for line in proc.stderr.splitlines() if line and "Warning" not in line and "warnings.warn" not in line]


# --- Dead workers, clocks and redeliveries ----------------------------------------------------------


class WorkerKilled(BaseException):  # noqa: N818 - named for what it stands for, as SystemExit is
    """A worker killed mid-task, seen from inside: no `except Exception` of the code catches it,
    so the run stops where it is and leaves its row and files as a killed process would."""


def dies_on_call(n: int, real):
    """`real`, except that its `n`-th call kills the worker (raises WorkerKilled)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise WorkerKilled
        return real(*args, **kwargs)

    return wrapper


def travel(monkeypatch, delta: timedelta) -> None:
    """Move this process's clock (django.utils.timezone.now, which the leases read) by `delta`."""
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + delta)


def run_as_worker(task, *args) -> list[float]:
    """Run `task` as a worker runs a delivered message: through Celery's own tracer, not eagerly.
    Returns the countdowns of the retries it schedules; they are recorded, not sent."""
    task = getattr(task, "_get_current_object", lambda: task)()
    retries: list[float] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(task, "apply_async", lambda *a, countdown=None, **options: retries.append(countdown))
        tracer = build_tracer(task.name, task, eager=False, store_errors=False, app=task.app)
        result = tracer(str(uuid.uuid4()), list(args), {}, {"retries": 0, "delivery_info": {"redelivered": True}})
    assert result.info is None or result.info.state == "RETRY", result.retval
    return retries


def other_process(code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (Django set up) on this test's database, cache and
    MEDIA_ROOT: a second worker, which can be really killed (SIGKILL: no handler runs)."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"}}
    env.update(
        {
            "DATABASE_URL": database_url(),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "PYTHONWARNINGS": "ignore",
        }
    )
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    prelude = "import django\ndjango.setup()\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def make_history(user, *, conversations: int = 3, messages_each: int = 4, tag: str = "", start=None, team=None):
    """Conversations with alternating user/assistant messages, every text unique (a needle for the
    scans), each assistant reply with a ledger row and the day's rollup. Returns the texts."""
    start = start or timezone.now() - timedelta(hours=2)
    tag = tag or uuid.uuid4().hex[:10]
    texts: list[str] = []
    moment = start
    for c in range(conversations):
        conversation = Conversation.objects.create(
            owner=user,
            title=f"title-{tag}-{c}",
            model="demo:echo",
            system_prompt=f"sysprompt-{tag}-{c}",
            summary=f"summary-{tag}-{c}",
            created_at=moment,
            updated_at=moment,
        )
        texts += [conversation.title, conversation.system_prompt, conversation.summary]
        previous = None
        for m in range(messages_each):
            moment += timedelta(seconds=1)
            role = Message.Role.USER if m % 2 == 0 else Message.Role.ASSISTANT
            text = f"secret-{tag}-{c}-{m} 비밀"
            message = Message.objects.create(
                conversation=conversation,
                role=role,
                content=text,
                model="demo:echo" if role == Message.Role.ASSISTANT else "",
                reply_to=previous if role == Message.Role.ASSISTANT else None,
                input_tokens=10 * m,
                output_tokens=5 * m if role == Message.Role.ASSISTANT else 0,
                cost=Decimal("0.0000012345") * m,
                created_at=moment,
            )
            texts.append(text)
            if role == Message.Role.ASSISTANT:
                record_usage(user=user, conversation=conversation, message=message, team=team)
            previous = message
        Conversation.objects.filter(pk=conversation.pk).update(summary_upto=previous, updated_at=moment)
    return texts


def record_usage(*, user, conversation, message, team=None, cost=Decimal("0.0012500000")):
    """One ledger row and its rollup, as billing.ledger.usage_record writes them."""
    UsageRecord.objects.create(
        user=user,
        team=team,
        conversation_id=conversation.id,
        message_id=message.id,
        provider="demo",
        model="echo",
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        cost=cost,
        outcome=UsageRecord.Outcome.OK,
        latency_ms=120,
    )
    row, _created = DailyUsage.objects.get_or_create(
        day=message.created_at.date(), user=user, team=team, provider="demo", model="echo"
    )
    DailyUsage.objects.filter(pk=row.pk).update(
        requests=row.requests + 1,
        input_tokens=row.input_tokens + message.input_tokens,
        output_tokens=row.output_tokens + message.output_tokens,
        cost=row.cost + cost,
    )


# --- Scans ----------------------------------------------------------------------------------------


def _text_of(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False) + json.dumps(value)
    return str(value)


def _hits(haystack: str, needles: list[str]) -> list[str]:
    folded = haystack.casefold()
    return [needle for needle in needles if needle.casefold() in folded]


def scan_database(needles: list[str]) -> list[tuple[str, str, str]]:
    """Every row of every installed model (and every other table in the database): returns
    (table, column, needle) for each value holding a needle."""
    found = []
    model_tables = set()
    for model in apps.get_models(include_auto_created=True):
        model_tables.add(model._meta.db_table)
        fields = [f.attname for f in model._meta.concrete_fields]
        for row in model._base_manager.values_list(*fields).iterator():
            for name, value in zip(fields, row, strict=True):
                for needle in _hits(_text_of(value), needles):
                    found.append((model._meta.db_table, name, needle))
    with connection.cursor() as cursor:
        for table in sorted(set(connection.introspection.table_names()) - model_tables):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            columns = [c[0] for c in cursor.description]
            for row in cursor.fetchall():
                for name, value in zip(columns, row, strict=True):
                    for needle in _hits(_text_of(value), needles):
                        found.append((table, name, needle))
    return found


def scan_cache(needles: list[str]) -> list[tuple[str, str]]:
    """With REDIS_URL: every key and value of the Redis database (cache, channel layer, Celery).
    Without: every key and value of the local-memory cache."""
    found = []
    if settings.REDIS_URL:
        import redis

        client = redis.Redis.from_url(settings.REDIS_URL)
        try:
            for key in client.scan_iter(count=1000):
                kind = client.type(key).decode()
                if kind == "string":
                    values = [client.get(key) or b""]
                elif kind == "hash":
                    values = [k + b"=" + v for k, v in client.hgetall(key).items()]
                elif kind == "list":
                    values = client.lrange(key, 0, -1)
                elif kind == "set":
                    values = list(client.smembers(key))
                elif kind == "zset":
                    values = client.zrange(key, 0, -1)
                elif kind == "stream":
                    values = [json.dumps({k.decode("latin-1"): v.decode("latin-1") for k, v in fields.items()}).encode()
                              for _id, fields in client.xrange(key)]
                else:
                    values = []
                for blob in [key, *values]:
                    for needle in _hits(_text_of(blob), needles):
                        found.append((key.decode("utf-8", "replace"), needle))
        finally:
            client.close()
        return found
    cache = caches["default"]
    for key, value in list(getattr(cache, "_cache", {}).items()):
        for needle in _hits(_text_of(key) + _text_of(value), needles):
            found.append((key, needle))
    return found


def scan_media(needles: list[str]) -> list[tuple[str, str]]:
    """Every file under MEDIA_ROOT (exports included); zip entries are read uncompressed."""
    found = []
    root = Path(settings.MEDIA_ROOT)
    if not root.exists():
        return found
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            data = path.read_bytes()
            blobs = [name.encode(), data]
            if zipfile.is_zipfile(io.BytesIO(data)):
                with zipfile.ZipFile(io.BytesIO(data)) as archive:
                    blobs += [archive.read(info) for info in archive.infolist()]
            for blob in blobs:
                for needle in _hits(_text_of(blob), needles):
                    found.append((str(path), needle))
    return found


def broker_down_once(monkeypatch, task) -> list:
    """The task's first send fails as with Redis down (kombu's OperationalError); later sends go.
    Returns the list of sends' arguments, failed one included."""
    from kombu.exceptions import OperationalError

    real, sent = task.delay, []

    def delay(*args):
        sent.append(args)
        if len(sent) == 1:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return real(*args)

    monkeypatch.setattr(task, "delay", delay)
    return sent
