import pytest


@pytest.mark.django_db
def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_answers_ok_when_database_answers(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


def test_readyz_reports_an_unreachable_postgres_inside_the_compose_healthcheck_timeout():
    """CONTRACT 4: 503 naming the database. docker-compose's healthcheck gives up at 6 s (its
    script's request at 5 s), so the answer must come before then; the connection pool alone
    waited its full 10 s for a connection that could never come."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update({"DATABASE_URL": f"postgres://postgres@127.0.0.1:{port}/parley_absent", "PYTHONWARNINGS": "ignore"})
    script = (
        "import os, time, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'chatsite.settings'); django.setup()\n"
        "from django.test import Client\n"
        "started = time.monotonic(); response = Client(HTTP_HOST='localhost').get('/readyz')\n"
        "print(response.status_code, round(time.monotonic() - started, 2), response.content.decode())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    status, seconds, body = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert status == "503", result.stdout + result.stderr
    assert json.loads(body)["failed"] == ["database"]
    assert float(seconds) < 5, f"/readyz took {seconds}s to say the database is down"
