"""The embedded defaults with no variables; Redis and Postgres when their URLs are set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import json; from django.conf import settings as s; print(json.dumps({"
    "'engine': s.DATABASES['default']['ENGINE'], 'conn_max_age': s.DATABASES['default'].get('CONN_MAX_AGE'),"
    "'options': s.DATABASES['default'].get('OPTIONS', {}), 'layer': s.CHANNEL_LAYERS['default']['BACKEND'],"
    "'cache': s.CACHES['default']['BACKEND'], 'eager': s.CELERY_TASK_ALWAYS_EAGER, 'broker': s.CELERY_BROKER_URL,"
    "'beat_embedded': s.CELERY_BEAT_EMBEDDED}))"
)


def probe(**env_overrides: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DATABASE_PASSWORD", "REDIS_URL"}}
    env.update({"DJANGO_SECRET_KEY": "x" * 60, **env_overrides})
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_no_variables_means_the_embedded_defaults():
    config = probe()
    assert config["engine"] == "django.db.backends.sqlite3"
    assert config["options"]["transaction_mode"] == "IMMEDIATE"
    assert "journal_mode=WAL" in config["options"]["init_command"]
    assert config["layer"] == "chatsite.layers.InMemoryChannelLayer"
    assert config["cache"] == "django.core.cache.backends.locmem.LocMemCache"
    assert config["eager"] is True
    assert config["beat_embedded"] is True  # no beat process exists: the site runs the schedule


def test_redis_url_switches_layer_cache_and_celery_to_redis():
    config = probe(REDIS_URL="redis://127.0.0.1:6379/3")
    assert config["layer"] == "channels_redis.pubsub.RedisPubSubChannelLayer"
    assert config["cache"] == "chatsite.rediscache.RedisCache"  # Django's, one client per pool
    assert config["broker"] == "redis://127.0.0.1:6379/3"
    assert config["beat_embedded"] is False  # the `beat` service runs it, once for all processes


def test_postgres_url_uses_postgres_with_a_pool_not_persistent_connections():
    config = probe(DATABASE_URL="postgres://parley:pw@db.example.com:5432/parley", DATABASE_POOL_SIZE="7")
    assert config["engine"] == "django.db.backends.postgresql"
    assert config["conn_max_age"] == 0
    assert config["options"]["pool"]["max_size"] == 7


@pytest.mark.django_db(transaction=True)
def test_the_configured_database_runs_as_designed():
    """SQLite (first CI pass) really is in WAL mode; PostgreSQL (second pass) lends pooled
    connections: a closed one goes back to the pool, open, and the next call gets it again."""
    from django.db import connection

    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
    else:
        assert connection.vendor == "postgresql"
        assert connection.settings_dict["CONN_MAX_AGE"] == 0
        assert connection.pool is not None
        connection.ensure_connection()
        lent = connection.connection
        connection.close()
        assert not lent.closed  # back in the pool, still logged in
        assert connection.pool.get_stats()["pool_available"] >= 1


@pytest.mark.django_db(transaction=True)
def test_a_pooled_connection_the_server_ended_is_replaced_not_lent(needs_postgres):
    """PostgreSQL restarted (or a proxy dropped idle connections): the pool's idle connections
    are dead. The next request must get a live one, not a 500 per dead connection."""
    import psycopg
    from django.db import connection

    idle = set()
    for _ in range(3):  # a few idle connections in the pool
        connection.ensure_connection()
        idle.add(connection.connection.info.backend_pid)
        connection.close()
    assert connection.pool.get_stats()["pool_available"] >= 1
    params = {k: v for k, v in connection.get_connection_params().items() if k in {"dbname", "user", "password", "host", "port"}}
    # Only the pool's idle connections die, as after a restart; connections other threads of
    # the test session hold (a live server's, an earlier test's) are left alone.
    with psycopg.connect(**params, autocommit=True) as killer:
        killer.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [sorted(idle)])
    for _ in range(3):
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        connection.close()


@pytest.mark.parametrize("value, expected", [("", "media"), ("media", "media"), ("var/media", "var/media")])
def test_media_root_is_the_same_folder_whatever_folder_a_process_starts_in(tmp_path, value, expected):
    """Exports are written by the worker and served by the web process: a relative MEDIA_ROOT was
    read against each one's working folder (a worker started elsewhere wrote where the site never
    looked, and the download was gone), and an empty one meant the working folder itself."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DATABASE_PASSWORD", "REDIS_URL"}}
    env.update({"DJANGO_SECRET_KEY": "x" * 60, "MEDIA_ROOT": value, "DJANGO_SETTINGS_MODULE": "chatsite.settings"})
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; print(settings.MEDIA_ROOT)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(ROOT / expected)
