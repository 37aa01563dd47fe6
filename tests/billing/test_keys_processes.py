"""Every process agrees on key state: it lives in the database (health, cooldowns) and the cache
(the spread counter), never in one process's memory. Proven with a second, real Python process
reading and writing the same test database (and, on Redis, the same cache)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from billing import keys
from billing.models import ProviderKey
from tests.billing.keys_support import no_env_keys  # noqa: F401 - autouse
from tests.dbenv import database_url

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db(transaction=True)


def _encryption_keys() -> str:
    """This process's keys, spelled out (as a deployment sets them), so the other process can
    read what this one wrote without deriving (and warning about) a key of its own."""
    from billing.crypto import _configured_keys

    return ",".join(_configured_keys())


def other_process(code: str) -> str:
    """Run `code` in a fresh interpreter on the same database and cache; return its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}}
    env.update(
        {"DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "chatsite.settings", "PYTHONWARNINGS": "ignore"}
    )
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    env["FIELD_ENCRYPTION_KEYS"] = _encryption_keys()
    prelude = "import django; django.setup(); from billing import keys; from billing.models import ProviderKey\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def add(name, priority=100):
    return keys.key_add(provider="openai", name=name, secret=f"sk-{name}-0123456789abcdef", priority=priority)


def test_another_process_sees_cooldowns_and_invalid_keys_reported_here_and_back():
    a, b = add("a", priority=10), add("b", priority=5)
    keys.key_report_failure(key_id=a.pk, kind="rate_limited", retry_after=300)
    # The other process skips the cooling key, and reports the key it got as invalid.
    assert (
        other_process(
            "lease = keys.key_choose(provider='openai'); print(lease.name); keys.key_report_failure(key_id=lease.id, kind='auth')"
        )
        == "b"
    )
    # This process sees what the other one reported.
    assert ProviderKey.objects.get(pk=b.pk).health == "invalid"
    assert keys.key_choose(provider="openai") is None


def test_another_process_sees_an_open_circuit(settings):
    settings.KEY_FAILURE_THRESHOLD = 3
    a, _ = add("a", priority=10), add("b", priority=5)
    for _ in range(3):
        keys.key_report_failure(key_id=a.pk, kind="unavailable")
    assert other_process("print(keys.key_choose(provider='openai').name)") == "b"


def test_the_spread_across_equal_keys_is_shared_through_redis(needs_redis):
    add("a")
    add("b")
    here = [keys.key_choose(provider="openai").name]
    here.append(other_process("print(keys.key_choose(provider='openai').name)"))
    here.append(keys.key_choose(provider="openai").name)
    here.append(other_process("print(keys.key_choose(provider='openai').name)"))
    # One counter for every process: the four choices alternate.
    assert here[0] != here[1] and here[1] != here[2] and here[2] != here[3]


def test_a_separate_cache_client_reads_the_same_spread_counter(needs_redis):
    from django.core.cache import caches

    add("a")
    add("b")
    keys.key_choose(provider="openai")
    keys.key_choose(provider="openai")
    fresh = caches.create_connection("default")  # a new client, its own connection
    assert fresh.get("billing:keys:rr:openai:100") == 2


def test_a_duplicate_name_from_the_real_command_exits_non_zero_and_changes_nothing():
    add("main")
    env = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}}
    env.update(
        {"DATABASE_URL": database_url(), "PYTHONWARNINGS": "ignore", "FIELD_ENCRYPTION_KEYS": _encryption_keys()}
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "add_provider_key", "--provider", "openai", "--name", "main", "--key", "-"],
        cwd=ROOT,
        env=env,
        input="sk-second-canary-0123456789\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "already exists" in result.stderr
    assert "sk-second-canary" not in result.stdout + result.stderr
    assert ProviderKey.objects.count() == 1


def test_concurrent_failure_reports_are_all_counted():
    from concurrent.futures import ThreadPoolExecutor

    from django.db import close_old_connections

    a = add("a")

    def report(_):
        try:
            keys.key_report_failure(key_id=a.pk, kind="unavailable")
        finally:
            close_old_connections()

    # Each thread has its own database connection: the row lock serialises the read-modify-write.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(report, range(8)))
    row = ProviderKey.objects.get(pk=a.pk)
    assert row.consecutive_failures == 8 and row.health == "failing"
