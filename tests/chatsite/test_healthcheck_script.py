"""scripts/healthcheck.py, the container's probe, against a running server."""

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_probe(port: int, path: str = "/readyz") -> int:
    env = {**os.environ, "PORT": str(port), "DJANGO_ALLOWED_HOSTS": "localhost"}
    return subprocess.run([sys.executable, "scripts/healthcheck.py", path], cwd=ROOT, env=env, timeout=30).returncode


@pytest.mark.django_db(transaction=True)
def test_probe_passes_against_a_ready_server(live_server):
    assert run_probe(urlsplit(live_server.url).port) == 0
    assert run_probe(urlsplit(live_server.url).port, "/no-such-page") == 1


def test_probe_fails_when_nothing_listens():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run_probe(port) == 1
