"""scripts/start, the README's first command, as an operator runs it: from its folder, with a
`.env` beside it."""

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.chatsite.test_readyz_redis import free_port

ROOT = Path(__file__).resolve().parents[2]
SITE = ["manage.py", "requirements.txt", "requirements-dev.txt", "chatsite", "accounts", "conversations", "billing",
        "templates", "static", "locale", "scripts"]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - a local test server
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_start_keeps_django_debug_false_from_the_env_file(tmp_path):
    """README: scripts/start honours every variable, also from a .env file. It set DJANGO_DEBUG=true
    whenever the environment did not, so a .env saying false still served Django's debug pages
    (the URL list on a 404, settings such as REDIS_URL with its password on a 500)."""
    site = tmp_path / "site"
    site.mkdir()
    for name in SITE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, site / name)
    (site / ".env").write_text(
        "DJANGO_DEBUG=false\nDJANGO_SECRET_KEY=start-script-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "REDIS_", "PYTEST"))}
    # The venv running these tests, whose requirement stamp scripts/test has just checked: nothing is installed.
    env.update({"VENV": sys.prefix, "PORT": str(port), "HOST": "127.0.0.1", "PYTHONWARNINGS": "ignore"})
    process = subprocess.Popen(
        ["scripts/start"], cwd=site, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        for _ in range(240):  # migrate and collectstatic first: wait until it serves
            if process.poll() is not None:
                raise AssertionError(f"scripts/start ended: {process.stderr.read().decode()}")
            try:
                if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        status, body = _get(f"http://127.0.0.1:{port}/no-such-page/")
        assert status == 404
        assert "URLconf" not in body and "DEBUG = True" not in body, body[:300]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
