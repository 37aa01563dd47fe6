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
        "import psycopg, redis\n"
        "from django.test import Client\n"
        "from chatsite import health\n"
        "health.READY_DATABASE_TIMEOUT = health.READY_REDIS_TIMEOUT = 60\n"
        "client = Client(HTTP_HOST='localhost'); assert client.get('/healthz').status_code == 200\n"
        "started = time.monotonic(); response = client.get('/readyz')\n"
        "print(response.status_code, round(time.monotonic() - started, 2), response.content.decode())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    status, seconds, body = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert status == "503", result.stdout + result.stderr
    assert json.loads(body)["failed"] == ["database"]
    assert float(seconds) < 5, f"/readyz took {seconds}s to say the database is down"


def test_readyz_answers_within_its_own_timeout_when_the_database_and_redis_both_hang():
    """Hosts dropping packets: a connection is taken (here, by the kernel: the sockets listen and
    never answer) and nothing ever comes back. The checks ran one after another, each with its
    own timeout (about 3 s together); a probe must get its answer within READY_TIMEOUT.

    Here each check's own timeout is a minute, so that the answer coming at the probe's deadline
    (2 s) and not the checks' is plain even on a loaded machine; and the process has answered a
    request before, so what is timed is the probe, not the first request's imports."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from chatsite.health import READY_TIMEOUT

    holes = []
    for _ in range(2):
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # never accepted: connects succeed, nothing is ever answered
        holes.append(hole)
    database_port, redis_port = (h.getsockname()[1] for h in holes)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "DATABASE_URL"}}
    env.update(
        {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{database_port}/parley_absent",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "PYTHONWARNINGS": "ignore",
            "DJANGO_DEBUG": "true",  # static files as in development: the two services are the subject
        }
    )
    script = (
        "import os, time, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'chatsite.settings'); django.setup()\n"
        "import psycopg, redis\n"
        "from django.test import Client\n"
        "from chatsite import health\n"
        "health.READY_DATABASE_TIMEOUT = health.READY_REDIS_TIMEOUT = 60\n"
        "client = Client(HTTP_HOST='localhost'); assert client.get('/healthz').status_code == 200\n"
        "started = time.monotonic(); response = client.get('/readyz')\n"
        "print(response.status_code, round(time.monotonic() - started, 2), response.content.decode())\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    finally:
        for hole in holes:
            hole.close()
    status, seconds, body = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert status == "503", result.stdout + result.stderr
    assert json.loads(body)["failed"] == ["database", "redis"]
    # Well under the checks' own minute, with room for a loaded machine.
    assert float(seconds) < READY_TIMEOUT + 10, f"/readyz took {seconds}s with both services hanging"


@pytest.mark.django_db
def test_a_check_still_hanging_is_waited_on_again_not_started_twice(client, settings, monkeypatch):
    # Probes every few seconds against a host that holds each connection attempt for minutes
    # must not leave a new thread behind each time.
    import threading

    from chatsite import health

    settings.REDIS_URL = ""
    release, calls = threading.Event(), []

    def hanging():
        calls.append(1)
        release.wait(30)
        return True

    monkeypatch.setattr(health, "_database_ok", hanging)
    monkeypatch.setattr(health, "READY_TIMEOUT", 0.2)
    try:
        for _ in range(3):
            response = client.get("/readyz")
            assert response.status_code == 503 and response.json()["failed"] == ["database"]
        assert len(calls) == 1
    finally:
        release.set()


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


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_answer_a_load_balancer_that_names_the_container_by_its_address(client, path):
    """A Kubernetes probe sends the pod's address as Host, an AWS target group's health check the
    target's, and neither can always be told another. Django refused every such probe with 400
    (the Host is not in ALLOWED_HOSTS), so a healthy process was marked down and restarted."""
    response = client.get(path, HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "ok"


@pytest.mark.django_db
def test_pages_still_refuse_a_host_not_served(client):
    assert client.get("/accounts/login/", HTTP_HOST="10.1.2.3:8000").status_code == 400
    assert client.get("/readyz/", HTTP_HOST="10.1.2.3:8000").status_code == 400
