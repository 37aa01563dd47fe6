"""A canary secret goes through every path a key takes (commands, admin, choosing, every failure
kind, tests of the key, re-encryption, the environment import, refused input) and must never
appear in a log record at any level, an admin page, an error message, an audit row, an admin log
entry, or anything sent to the database in plaintext."""

import io
import logging

import pytest
from cryptography.fernet import Fernet
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import AuditEvent
from billing import keys
from billing.models import ProviderKey
from conversations.llm.base import ErrorKind, ProviderError
from tests.billing.keys_support import no_env_keys  # noqa: F401 - autouse
from tests.logtext import record_text

pytestmark = pytest.mark.django_db
CANARIES = ["pk-canary-7f3a9c2e41d8b6aa", "pk-canary-second-55e0c1d9f2", "pk-canary-env-0b9d8e7f6a5c"]
CHANGELIST = reverse("admin:billing_providerkey_changelist")
ADD = reverse("admin:billing_providerkey_add")


@pytest.fixture
def every_log_record():
    """Every record from every logger at DEBUG, before any handler's redaction."""
    records: list[logging.LogRecord] = []

    class Grab(logging.Handler):
        def emit(self, record):
            records.append(record)

    grab = Grab(level=logging.DEBUG)
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    saved = [(lg, lg.level, lg.disabled) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
        lg.disabled = False
        lg.addHandler(grab)
    connection.force_debug_cursor = True  # SQL and its parameters are logged at DEBUG too
    yield records
    connection.force_debug_cursor = False
    for lg, level, disabled in saved:
        lg.removeHandler(grab)
        lg.setLevel(level)
        lg.disabled = disabled




class LeakyAdapter:
    """A badly behaved adapter: its errors repeat the key it was given."""

    def __init__(self):
        self.error: Exception | None = None

    async def ping(self, *, key):
        if self.error is not None:
            raise self.error
        return ["gpt-4o-mini"]

    async def stream(self, request, *, key):
        if self.error is not None:
            raise self.error
        yield  # pragma: no cover


def test_a_canary_secret_never_leaks(every_log_record, admin_client, settings, monkeypatch):
    adapter = LeakyAdapter()
    monkeypatch.setattr("conversations.llm.get_adapter", lambda provider: adapter)
    monkeypatch.setattr("billing.prices.prices_available", lambda: [])
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    first, second, from_env = CANARIES
    pages: list[str] = []
    errors: list[str] = []

    with CaptureQueriesContext(connection) as queries:
        # The command, secret from stdin; then refused commands carrying the secret.
        out = io.StringIO()
        call_command(
            "add_provider_key",
            "--provider",
            "openai",
            "--name",
            "cli",
            "--key",
            "-",
            stdin=io.StringIO(first + "\n"),
            stdout=out,
            stderr=out,
        )
        pages.append(out.getvalue())
        for bad in (["--name", "cli"], ["--name", "x", "--base-url", "http://169.254.169.254/"]):
            with pytest.raises(CommandError) as excinfo:
                call_command("add_provider_key", "--provider", "openai", "--key", first, *bad, stdout=out, stderr=out)
            errors.append(str(excinfo.value))
        for secret in (first + " tail", first + "\x00"):
            with pytest.raises(ValidationError) as excinfo:
                keys.key_add(provider="openai", name="y", secret=secret)
            errors.append(str(excinfo.value.message_dict))

        # The admin: add, list, change form, a new secret, a refused form.
        data = {
            "name": "web",
            "provider": "openai",
            "secret": second,
            "base_url": "",
            "priority": "100",
            "state": "enabled",
        }
        pages.append(admin_client.post(ADD, data, follow=True).content.decode())
        web = ProviderKey.objects.get(name="web")
        change = reverse("admin:billing_providerkey_change", args=[web.pk])
        pages.append(admin_client.get(CHANGELIST).content.decode())
        pages.append(admin_client.get(change).content.decode())
        pages.append(
            admin_client.post(change, {**data, "secret": second, "priority": "5"}, follow=True).content.decode()
        )
        pages.append(
            admin_client.post(change, {**data, "secret": first, "base_url": "http://u:p@127.0.0.1/"}).content.decode()
        )
        pages.append(admin_client.post(ADD, {**data, "name": "cli"}).content.decode())

        # Choosing and every kind of failure report.
        for kind in ErrorKind:
            lease = keys.key_choose(provider="openai")
            if lease is None:
                break
            keys.key_report_failure(key_id=lease.id, kind=kind, retry_after=1)
            keys.key_report_success(key_id=lease.id)

        # "Test key" with an adapter that repeats the secret in its errors.
        cli = ProviderKey.objects.get(name="cli")
        adapter.error = ProviderError(kind=ErrorKind.AUTH, message=f"bad key {first}", status=401)
        errors.append(str(keys.key_test(key_id=cli.pk)))
        adapter.error = RuntimeError(f"connection to proxy failed, key={first}")
        errors.append(str(keys.key_test(key_id=cli.pk)))
        adapter.error = ProviderError(kind=ErrorKind.UNAVAILABLE, message=f"upstream said {second}")
        pages.append(
            admin_client.post(
                CHANGELIST, {"action": "test_keys", "_selected_action": [web.pk]}, follow=True
            ).content.decode()
        )
        pages.append(admin_client.get(CHANGELIST).content.decode())

        # Re-encryption, and keys from the environment (added, then rotated).
        settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), *settings.FIELD_ENCRYPTION_KEYS]
        call_command("rotate_encryption_keys", stdout=out, stderr=out)
        settings.OPENAI_API_KEY = from_env
        call_command("import_provider_keys", stdout=out, stderr=out)
        settings.OPENAI_API_KEY = from_env + "x"
        keys.keys_import_from_env()
        pages.append(out.getvalue())

    assert len(every_log_record) > 20  # the net really caught things (SQL at DEBUG included)
    audit = [repr(row) for row in AuditEvent.objects.values()]
    admin_log = [repr(row) for row in LogEntry.objects.values()]
    sent_to_db = [repr(q) for q in queries.captured_queries]
    assert len(audit) >= 10
    for canary in CANARIES:
        for where, texts in {
            "logs": [record_text(r) for r in every_log_record],
            "admin pages and command output": pages,
            "error messages": errors,
            "audit rows": audit,
            "admin log entries": admin_log,
            "database statements": sent_to_db,
        }.items():
            leaked = [t for t in texts if canary in t]
            assert not leaked, f"{canary} leaked into {where}: {leaked[0][:500]}"
