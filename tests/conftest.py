"""Shared fixtures. Services that are absent outside CI skip with a reason; in CI (CI=true)
the same absence fails the test, so nothing is silently skipped there."""

import os
import re
import shutil
from pathlib import Path

import pytest
from django.conf import settings

from tests.fakeprovider.fixtures import fake_provider  # noqa: F401 - the fake LLM provider, for every test

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
CHROMIUM = "/usr/bin/chromium"


# .ci/run tests twice: on the embedded defaults (CI_SERVICES="") and on PostgreSQL + Redis
# (CI_SERVICES="postgres redis"). A test needing a service that its pass does not provide skips
# there and runs in the other; unset CI_SERVICES under CI means every service is required.
CI_SERVICES = os.environ.get("CI_SERVICES")


def need(condition: bool, reason: str, service: str | None = None) -> None:
    """Skip (outside CI) or fail (in CI) when a service this test needs is missing."""
    if condition:
        return
    if IN_CI and (service is None or CI_SERVICES is None or service in CI_SERVICES.split()):
        pytest.fail(f"CI must not skip: {reason}")
    pytest.skip(reason)


@pytest.fixture
def needs_postgres():
    need(settings.IS_POSTGRES, "needs PostgreSQL: run with DATABASE_URL=postgres://… (.ci/run does)", "postgres")


@pytest.fixture
def needs_redis():
    need(bool(settings.REDIS_URL), "needs Redis: run with REDIS_URL=redis://… (.ci/run does)", "redis")


@pytest.fixture
def needs_chromium():
    need(os.path.exists(CHROMIUM) or bool(shutil.which("chromium")), f"needs Debian's chromium at {CHROMIUM}")


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, whose PostgreSQL connections still held by other threads
    (turn threads, Channels' and asgiref's executors) are ended when the session ends: Django can
    drop a database only when no one else is connected to it."""
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture(autouse=True)
def _isolated_cache(settings):
    """Each test starts with an empty cache (rate limits, stream buffers live there)."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _site_language():
    """Each test starts in the site's language. A request through the test client leaves its
    language active in the test's thread (Django's LocaleMiddleware, and ours for a person's
    profile), where every request sets its own: a Korean page would make the next test's messages
    Korean, in whatever order pytest-django runs them."""
    from django.utils import translation

    translation.deactivate()
    yield
    translation.deactivate()


@pytest.fixture(autouse=True)
def _media_root(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EXPORT_ROOT = settings.MEDIA_ROOT / "exports"


@pytest.fixture
def make_user(db, django_user_model):
    counter = {"n": 0}

    def make(username: str | None = None, password: str = "correct horse battery 9", **extra):
        counter["n"] += 1
        username = username or f"user{counter['n']}"
        extra.setdefault("email", f"{username}@example.test")
        return django_user_model.objects.create_user(username=username, password=password, **extra)

    return make


@pytest.fixture
def make_staff(make_user):
    """A staff member (not a superuser) holding exactly the given 'app.codename' permissions."""
    import uuid

    from django.contrib.auth.models import Permission

    def make(*perms: str, username: str | None = None):
        staff = make_user(username or f"staff{uuid.uuid4().hex[:6]}", is_staff=True)
        for perm in perms:
            app_label, codename = perm.split(".")
            staff.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        return staff

    return make


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def other_user(make_user):
    return make_user("mallory")


# --- every log line the suite writes is scanned for the canaries ---------------------------------
# Tests plant canary secrets, passwords and message texts (all spelled with "canary"); none may
# reach a log line. A handler with the production filters records everything the suite logs, and
# the session fails at its end if any line holds a canary.
CANARY_IN_LOG = re.compile(r"(?i)sk-canary|canary[-_ ]password|canary[- ]message[- ]text|victim-canary")


@pytest.fixture(scope="session", autouse=True)
def _suite_log_scan(django_test_environment):
    import logging

    from chatsite.logging import RedactFilter, RequestIdFilter

    worker = os.environ.get("PYTEST_XDIST_WORKER")  # each of pytest-xdist's workers writes its own
    path = Path(settings.BASE_DIR) / "test-artifacts" / (f"suite-{worker}.log" if worker else "suite.log")
    path.parent.mkdir(exist_ok=True)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s [%(request_id)s] %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    yield
    root.removeHandler(handler)
    handler.close()
    leaks = [line for line in path.read_text(encoding="utf-8").splitlines() if CANARY_IN_LOG.search(line)]
    assert not leaks, f"{len(leaks)} log line(s) of this run hold a canary, e.g. {leaks[0][:300]!r}"


def pytest_collection_modifyitems(config, items):
    """In a CI pass that does not provide a service (CI_SERVICES names those it does), the tests
    needing that service are deselected, not skipped: they run in the pass that provides it, and
    no CI pass reports a skip."""
    if not IN_CI or CI_SERVICES is None:
        return
    provided = set(CI_SERVICES.split())
    needs = {"needs_postgres": "postgres", "needs_redis": "redis"}
    kept, deselected = [], []
    for item in items:
        wanted = {needs[name] for name in getattr(item, "fixturenames", ()) if name in needs}
        (deselected if wanted - provided else kept).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
