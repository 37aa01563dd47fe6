"""/readyz names Redis when Redis is configured and down, and recovers when it is back."""

import logging
import shutil
import socket
import subprocess
import time

import pytest

from tests.conftest import need


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, tmp_path) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.django_db
def test_readyz_answers_503_naming_redis_while_it_is_down_and_200_when_back(client, settings, tmp_path):
    need(bool(shutil.which("redis-server")), "needs redis-server on PATH")
    port = free_port()
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    redis = start_redis(port, tmp_path)
    try:
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json()["checks"] == {"database": "ok", "redis": "ok"}

        stop(redis)
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["failed"] == ["redis"]
        assert response.json()["checks"]["database"] == "ok"

        redis = start_redis(port, tmp_path)
        response = client.get("/readyz")
        assert response.status_code == 200
    finally:
        if redis.poll() is None:
            stop(redis)


@pytest.mark.django_db
def test_readyz_without_redis_configured_checks_only_the_database(client, settings):
    settings.REDIS_URL = ""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok"}


def _told(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.django_db
def test_readyz_tells_a_failure_in_one_warning_line_not_an_error_per_probe(client, settings, caplog, monkeypatch):
    """A load balancer polls /readyz every few seconds: while Redis was down, each 503 was also
    logged by Django as an ERROR ("Service Unavailable: /readyz"). One WARNING line when the
    state changes, then at most one a minute while it lasts, and one when it is ready again."""
    from chatsite import health

    now = [1000.0]
    monkeypatch.setattr(health, "_clock", lambda: now[0])
    settings.REDIS_URL = ""
    assert client.get("/readyz").status_code == 200  # ready: this process's state now
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    caplog.clear()
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            assert client.get("/readyz").status_code == 503
            now[0] += 5
        [record] = _told(caplog)
        assert (record.name, record.levelname, record.exc_info) == ("chatsite.health", "WARNING", None)
        assert "redis" in record.getMessage() and "503" in record.getMessage()

        caplog.clear()
        now[0] += 60  # a minute on, still down: one more line, saying how many it left out
        for _ in range(3):
            assert client.get("/readyz").status_code == 503
        [record] = _told(caplog)
        assert "redis" in record.getMessage() and "4 more" in record.getMessage()

        caplog.clear()
        settings.REDIS_URL = ""
        assert client.get("/readyz").status_code == 200
        assert client.get("/readyz").status_code == 200
        [record] = _told(caplog)
        assert record.name == "chatsite.health" and "ready again" in record.getMessage()
