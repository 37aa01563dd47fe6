"""scripts/start, the README's first command, as an operator runs it: from its folder, with a
`.env` beside it."""

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
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


def _site_copy(tmp_path, env_file: str) -> Path:
    """The site's files in a folder of their own, with this `.env` beside them."""
    site = tmp_path / "site"
    site.mkdir()
    for name in SITE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, site / name)
    (site / ".env").write_text(env_file)
    return site


@contextmanager
def _started(site: Path):
    """scripts/start running in `site` on the embedded defaults, until it serves; yields its port
    and a function returning what it has written to stderr so far."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DATABASE_", "REDIS_", "PYTEST"))}
    # The venv running these tests, whose requirement stamp scripts/test has just checked: nothing is installed.
    env.update({"VENV": sys.prefix, "PORT": str(port), "HOST": "127.0.0.1", "PYTHONWARNINGS": "ignore"})
    process = subprocess.Popen(
        ["scripts/start"], cwd=site, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in process.stderr), daemon=True)
    reader.start()
    try:
        for _ in range(240):  # migrate and collectstatic first: wait until it serves
            if process.poll() is not None:
                reader.join(timeout=5)
                raise AssertionError(f"scripts/start ended: {''.join(lines)}")
            try:
                if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        yield port, lambda: "".join(lines)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_start_keeps_django_debug_false_from_the_env_file(tmp_path):
    """README: scripts/start honours every variable, also from a .env file. It set DJANGO_DEBUG=true
    whenever the environment did not, so a .env saying false still served Django's debug pages
    (the URL list on a 404, settings such as REDIS_URL with its password on a 500)."""
    site = _site_copy(
        tmp_path, "DJANGO_DEBUG=false\nDJANGO_SECRET_KEY=start-script-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz\n"
    )
    with _started(site) as (port, _stderr):
        status, body = _get(f"http://127.0.0.1:{port}/no-such-page/")
        assert status == 404
        assert "URLconf" not in body and "DEBUG = True" not in body, body[:300]


def test_start_on_the_embedded_defaults_logs_no_warning_when_a_task_runs(tmp_path):
    """Without Redis, Celery runs tasks in the process, through its in-memory broker. Queuing the
    first one (here a password-reset mail) logged kombu's "No hostname was supplied. Reverting to
    default 'localhost'": a warning about nothing an operator set or could act on."""
    site = _site_copy(tmp_path, "DJANGO_SECRET_KEY=start-script-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz\n")
    with _started(site) as (port, stderr):
        cookies = urllib.request.HTTPCookieProcessor()
        browser = urllib.request.build_opener(cookies)
        page = browser.open(f"http://127.0.0.1:{port}/accounts/password/reset/", timeout=10).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        form = urllib.parse.urlencode({"csrfmiddlewaretoken": token, "email": "someone@example.com"}).encode()
        # The mail task runs eagerly at the request's commit: by the answer, it has run.
        answer = browser.open(f"http://127.0.0.1:{port}/accounts/password/reset/", data=form, timeout=30)
        assert answer.url.endswith("/accounts/password/reset/sent/")
        time.sleep(0.5)  # what the process wrote reaches the reader thread
        logged = stderr()
    assert "POST /accounts/password/reset/ 302" in logged, logged
    warnings = [line for line in logged.splitlines() if " WARNING " in line or " ERROR " in line]
    assert not warnings, logged


def test_kombu_still_says_its_warnings():
    """The start is quiet because nothing is wrong, not because kombu's logger was turned down."""
    import logging

    assert logging.getLogger("kombu.connection").isEnabledFor(logging.WARNING)


def test_start_with_redis_says_that_celery_must_run_beside_it(tmp_path, needs_redis):
    """With REDIS_URL, tasks go to Celery workers and the periodic jobs to Celery beat, and
    scripts/start runs neither: password-reset emails were never sent, exports stayed "pending"
    and dead replies were never reaped, with nothing said. It says so now, at start."""
    from django.conf import settings

    site = _site_copy(
        tmp_path,
        "DJANGO_SECRET_KEY=start-script-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz\n"
        f"REDIS_URL={settings.REDIS_URL}\nCACHE_KEY_PREFIX=start-script-test\n",
    )
    with _started(site) as (_port, stderr):
        logged = stderr()
    assert "celery -A chatsite worker" in logged and "celery -A chatsite beat" in logged, logged


def test_start_on_the_embedded_defaults_says_nothing_of_celery(tmp_path):
    site = _site_copy(tmp_path, "DJANGO_SECRET_KEY=start-script-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz\n")
    with _started(site) as (_port, stderr):
        logged = stderr()
    assert "celery" not in logged.lower(), logged
