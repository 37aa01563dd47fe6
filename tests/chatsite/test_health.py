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
    # Static files as in development (from static/, nothing collected here): the database is the subject.
    env["DJANGO_DEBUG"] = "true"
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


@pytest.mark.django_db
def test_readyz_answers_503_naming_static_files_until_they_are_collected(client, settings, tmp_path):
    """Without DEBUG every page names its CSS and images by their hashed names from the manifest
    collectstatic writes: a process started without it answered 500 on every page while /readyz
    said ok, so the load balancer kept sending people to it."""
    from django.contrib.staticfiles.storage import staticfiles_storage
    from django.core.management import call_command
    from django.utils.functional import empty

    settings.REDIS_URL = ""  # the database and the static files are the subject here
    settings.STATIC_ROOT = tmp_path / "staticfiles"
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["failed"] == ["static"]
    assert response.json()["checks"] == {"database": "ok", "static": "failed"}

    call_command("collectstatic", "--noinput", verbosity=0)
    staticfiles_storage._wrapped = empty  # a process started after collectstatic reads the manifest
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "static": "ok"}
    assert client.get("/accounts/login/").status_code == 200
