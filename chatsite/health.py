"""Liveness and readiness probes (CONTRACT section 4)."""

import logging
import threading
import time

from django.conf import settings
from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


# How long the probe waits for a PostgreSQL connection: requests keep the pool's 10 s through a
# load spike, but docker-compose's healthcheck gives up at 6 s, so "database down" must come sooner.
READY_DATABASE_TIMEOUT = 2.0


def _database_ok() -> bool:
    try:
        pool = getattr(connection, "pool", None)
        if pool is not None:
            pool.open()  # as Django does before its first connection; no-op once open
            with pool.connection(timeout=READY_DATABASE_TIMEOUT) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False


def _redis_ok() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001
        return False


# Named in every page's layout (templates/base.html): if this one has no hashed name, no page renders.
STATIC_PROBE_FILE = "css/app.css"


def static_files_missing() -> bool | None:
    """None where pages name static files as they are (DEBUG, tests); else whether the manifest
    collectstatic writes is missing from what this process loaded. Without it every page answers
    500 (no hashed name for its CSS), and the storage reads the manifest once, when the process
    starts: collecting afterwards needs a restart too."""
    if not isinstance(staticfiles_storage, ManifestFilesMixin):  # the lazy storage passes isinstance through
        return None
    try:
        staticfiles_storage.url(STATIC_PROBE_FILE)
    except ValueError:
        return True
    return False


logger = logging.getLogger(__name__)
_clock = time.monotonic  # a name of its own, so a test can move time on


class ReadinessLog:
    """What /readyz tells the log: one WARNING line when this process stops being ready (naming
    what failed) or what failed changes, then at most one a minute while it lasts (with how many
    probes it left out), and one when it is ready again. A load balancer polls every few seconds:
    a line per 503 would bury everything else in the log."""

    REPEAT_SECONDS = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: tuple[str, ...] = ()  # as last told; a process starts out ready
        self._told_at = 0.0
        self._left_out = 0

    def note(self, failed: tuple[str, ...]) -> None:
        now = _clock()
        with self._lock:
            same = failed == self._failed
            if same and (not failed or now - self._told_at < self.REPEAT_SECONDS):
                self._left_out += bool(failed)
                return
            left_out = self._left_out if same else 0
            self._failed, self._told_at, self._left_out = failed, now, 0
        if not failed:
            logger.warning("ready again: /readyz answers 200")
        elif left_out:
            logger.warning(
                "not ready: %s failed; /readyz answers 503 (%d more probes in the last minute)", ", ".join(failed), left_out
            )
        else:
            logger.warning("not ready: %s failed; /readyz answers 503", ", ".join(failed))


READINESS_LOG = ReadinessLog()


@never_cache
@require_GET
def readyz(request):
    checks = {"database": _database_ok()}
    if settings.REDIS_URL:
        checks["redis"] = _redis_ok()
    static_missing = static_files_missing()
    if static_missing is not None:
        checks["static"] = not static_missing
    failed = [name for name, ok in checks.items() if not ok]
    body = {"status": "ok" if not failed else "unavailable", "checks": {k: "ok" if v else "failed" for k, v in checks.items()}}
    if failed:
        body["failed"] = failed
    READINESS_LOG.note(tuple(failed))
    response = JsonResponse(body, status=503 if failed else 200)
    # Django's request logger would add an ERROR line ("Service Unavailable: /readyz") for every
    # 503; READINESS_LOG has told it already. This is the flag Django itself sets on a response
    # it has logged, so that it is not logged twice.
    response._has_been_logged = True
    return response
