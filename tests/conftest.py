"""Shared fixtures. Services that are absent outside CI skip with a reason; in CI (CI=true)
the same absence fails the test, so nothing is silently skipped there."""

import os
import shutil

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


@pytest.fixture(autouse=True)
def _isolated_cache(settings):
    """Each test starts with an empty cache (rate limits, stream buffers live there)."""
    from django.core.cache import cache

    cache.clear()
    yield
    cache.clear()


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
def user(make_user):
    return make_user("alice")


@pytest.fixture
def other_user(make_user):
    return make_user("mallory")
