"""A Redis password may hold any character, also those that mean something in a URL (@ / : # %):
given apart from REDIS_URL in REDIS_PASSWORD (or percent-encoded into it), every part of the site
that talks to Redis logs in with it: the cache (and its async path), the channel layer, Celery's
broker and results, and /readyz."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.chatsite.test_database_password import compose_app_environment
from tests.chatsite.test_readyz_redis import free_port, stop
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "p@ss/w:rd#1%41?x y"
# Every part that reads REDIS_URL, each doing one round trip to the server; a server that asks for
# a password answers none of them without the right one.
PROBE = """
import asyncio, json
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache
from django.test import Client
from chatsite import asynccache
from chatsite.celery import app

seen = {}
cache.set("probe", "cache-ok", 60)
seen["cache"] = cache.get("probe")
async def async_cache():
    await asynccache.aset("probe-async", "async-ok", 60)
    return await asynccache.aget("probe-async")
seen["async_cache"] = asyncio.run(async_cache())
layer = get_channel_layer()
async def layer_round_trip():
    channel = await layer.new_channel()
    await layer.group_add("probe", channel)
    await layer.group_send("probe", {"type": "probe.message", "text": "layer-ok"})
    return (await asyncio.wait_for(layer.receive(channel), 10))["text"]
seen["channel_layer"] = async_to_sync(layer_round_trip)()
with app.connection_for_write() as connection:
    connection.ensure_connection(max_retries=1)
    with connection.SimpleQueue("parley-probe") as queue:
        queue.put({"text": "broker-ok"})
        seen["celery_broker"] = queue.get(timeout=5).payload["text"]
app.backend.store_result("parley-probe", "results-ok", "SUCCESS")
seen["celery_results"] = app.backend.get_task_meta("parley-probe")["result"]
seen["readyz"] = Client(HTTP_HOST="localhost").get("/readyz").json()["checks"]
print(json.dumps(seen))
"""
EXPECTED = {
    "cache": "cache-ok",
    "async_cache": "async-ok",
    "channel_layer": "layer-ok",
    "celery_broker": "broker-ok",
    "celery_results": "results-ok",
    "readyz": {"database": "ok", "redis": "ok"},
}


def probe(code: str, tmp_path, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DATABASE_PASSWORD", "REDIS_URL", "REDIS_PASSWORD"}}
    env.update(
        {
            "DJANGO_SECRET_KEY": "x" * 60,
            "PYTHONWARNINGS": "ignore",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'probe.sqlite3'}",
            "DJANGO_DEBUG": "true",  # static files from static/: Redis is the subject here
            **env_overrides,
        }
    )
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def redis_with_password(tmp_path):
    """A second redis-server on a free port, asking for PASSWORD; stopped afterwards."""
    need(bool(shutil.which("redis-server")), "needs redis-server on PATH (CI has it)")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield port, client
    finally:
        client.close()
        stop(process)


def _every_part_logs_in(tmp_path, client, **env: str) -> None:
    result = probe(PROBE, tmp_path, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == EXPECTED
    assert client.dbsize() > 0  # it was this server they wrote to


def test_redis_password_apart_from_the_url_logs_every_part_in(redis_with_password, tmp_path):
    port, client = redis_with_password
    _every_part_logs_in(tmp_path, client, REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PASSWORD=PASSWORD)


def test_a_percent_encoded_password_in_redis_url_logs_every_part_in(redis_with_password, tmp_path):
    port, client = redis_with_password
    _every_part_logs_in(tmp_path, client, REDIS_URL=f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{port}/0")


def test_without_the_password_redis_is_not_ready(redis_with_password, tmp_path):
    """The probe's server really asks for the password: the tests above prove something."""
    port, _client = redis_with_password
    code = "from django.test import Client; print(Client(HTTP_HOST='localhost').get('/readyz').status_code)"
    result = probe(code, tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0")
    assert result.stdout.strip().splitlines()[-1] == "503", result.stderr[-3000:]


def _one_line_naming(result: subprocess.CompletedProcess, variable: str) -> str:
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "password", ["p@ss/word", "pass/word", "pa?ss", "pass#word", "p@ss#w", "100%zz", "pa%4"]
)
def test_a_password_written_into_the_url_as_it_is_stops_with_one_line_saying_how(password, tmp_path):
    """Unencoded, these cut the URL elsewhere (the site took part of the password for the host, or
    the database number, and failed at its first cache call or connected elsewhere), or read as a
    percent-encoding that is none."""
    result = probe("print('started')", tmp_path, REDIS_URL=f"redis://:{password}@redis:6379/0")
    line = _one_line_naming(result, "REDIS_URL")
    assert "percent-encode" in line and "REDIS_PASSWORD" in line
    assert password not in line


@pytest.mark.parametrize("url", ["redis://redis:6379/zero", "redis://redis:6379/0/1"])
def test_a_url_naming_no_database_number_stops_with_one_line(url, tmp_path):
    _one_line_naming(probe("print('started')", tmp_path, REDIS_URL=url), "REDIS_URL")


def test_a_password_in_both_places_stops_with_one_line(tmp_path):
    result = probe(
        "print('started')", tmp_path, REDIS_URL="redis://:url-secret-1@redis:6379/0", REDIS_PASSWORD="env-secret-2"
    )
    line = _one_line_naming(result, "REDIS_PASSWORD")
    assert "secret" not in line


def test_a_password_without_a_url_stops_with_one_line(tmp_path):
    _one_line_naming(probe("print('started')", tmp_path, REDIS_PASSWORD="env-secret-2"), "REDIS_PASSWORD")


def test_the_compose_set_up_takes_any_redis_password(tmp_path):
    """README: set REDIS_PASSWORD in .env and `docker compose up`: the redis container asks for it
    as it is (its command), and the app must log in with the very same password."""
    environment = compose_app_environment(
        {"POSTGRES_PASSWORD": "pg", "DJANGO_SECRET_KEY": "x" * 60, "REDIS_PASSWORD": PASSWORD}
    )
    code = (
        "import json; from django.conf import settings as s; from redis.connection import parse_url;"
        "p = parse_url(s.REDIS_URL); print(json.dumps([p.get('password'), p.get('host'), p.get('port'), p.get('db')]))"
    )
    result = probe(code, tmp_path, REDIS_URL=environment["REDIS_URL"], REDIS_PASSWORD=environment["REDIS_PASSWORD"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [PASSWORD, "redis", 6379, 0]
    # Without REDIS_PASSWORD in .env compose gives it empty: Redis without a password, as before.
    environment = compose_app_environment({"POSTGRES_PASSWORD": "pg", "DJANGO_SECRET_KEY": "x" * 60})
    assert environment["REDIS_PASSWORD"] == ""


def _compose_redis_service() -> tuple[str, str]:
    """The redis service's command and healthcheck in docker-compose.yml, as its shell runs them."""
    text = (ROOT / "docker-compose.yml").read_text()
    block = re.search(r"^  redis:\n((?:(?:    .*)?\n)+?)(?=^\S|^  \S)", text, re.MULTILINE).group(1)
    command = re.search(r"^      - '(.*)'$", block, re.MULTILINE).group(1)
    healthcheck = re.search(r"\[\"CMD-SHELL\", '(.*)'\]", block).group(1)
    return command.replace("$$", "$"), healthcheck.replace("$$", "$")


@pytest.mark.parametrize("password", [PASSWORD, ""])
def test_the_compose_redis_asks_for_the_password_and_its_healthcheck_logs_in(password, tmp_path):
    """The redis container's own command and healthcheck, run by sh here (on a free port)."""
    need(bool(shutil.which("redis-server") and shutil.which("redis-cli")), "needs redis-server and redis-cli on PATH")
    import redis

    port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The container's redis-server and redis-cli, on this test's port.
    wrappers = {
        "redis-server": f'exec {shutil.which("redis-server")} "$@" --port {port} --bind 127.0.0.1 --save "" --dir {tmp_path}',
        "redis-cli": f'exec {shutil.which("redis-cli")} -p {port} "$@"',
    }
    for name, script in wrappers.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    command, healthcheck = _compose_redis_service()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_PASSWORD": password}
    env.pop("REDISCLI_AUTH", None)
    server = subprocess.Popen(["sh", "-c", command], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        healthy = None
        for _ in range(100):
            healthy = subprocess.run(["sh", "-c", healthcheck], env=env, capture_output=True, text=True, timeout=10)
            if healthy.returncode == 0:
                break
            time.sleep(0.05)
        assert healthy.returncode == 0 and "AUTH failed" not in healthy.stderr, healthy.stderr
        assert redis.Redis(host="127.0.0.1", port=port, password=password or None).ping()
        if password:
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(host="127.0.0.1", port=port).ping()
    finally:
        stop(server)
