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

from .logging import RepeatThrottle

logger = logging.getLogger(__name__)
_clock = time.monotonic  # what ReadinessLog reads the time from: a test moves it on


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


# How long the probe waits for a PostgreSQL connection: requests keep the pool's 10 s through a
# load spike, but docker-compose's healthcheck gives up at 6 s, so "database down" must come sooner.
READY_DATABASE_TIMEOUT = 2.0
# Redis's connect and answer timeouts: the channel layer's own are longer.
READY_REDIS_TIMEOUT = 1.0
# The whole probe's answer, whatever each check's own timeouts: the checks run side by side, and
# one still running then counts as failed. They ran one after another, so with both hosts dropping
# packets the answer took the sum (database 2 s, then Redis 1 s and more).
READY_TIMEOUT = 2.0


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
    finally:
        if getattr(connection, "pool", None) is None:
            connection.close()  # this check's own thread's connection (SQLite): nobody reuses it


def _redis_ok() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_connect_timeout=READY_REDIS_TIMEOUT, socket_timeout=READY_REDIS_TIMEOUT
        )
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


class _Check:
    """One dependency's check, in a thread of its own, so the probe can stop waiting for it."""

    def __init__(self, check) -> None:
        self.done = threading.Event()
        self.ok = False
        threading.Thread(target=self._run, args=(check,), name="readyz-check", daemon=True).start()

    def _run(self, check) -> None:
        try:
            self.ok = check()
        finally:
            self.done.set()


_checks_running: dict[str, _Check] = {}
_checks_lock = threading.Lock()


def _check_start(name: str, check) -> _Check:
    """The check of `name` in flight, or a new one. A check still hanging from an earlier probe
    (a host that drops packets can hold a connection attempt well past its timeout) is waited on
    again rather than joined by another: probes every few seconds never pile threads up."""
    with _checks_lock:
        running = _checks_running.get(name)
        if running is None or running.done.is_set():
            running = _checks_running[name] = _Check(check)
        return running


def _checks_run(checks: dict) -> dict[str, bool]:
    """Run `checks` (name -> function) side by side; what has not answered within READY_TIMEOUT
    has failed."""
    deadline = time.monotonic() + READY_TIMEOUT
    running = {name: _check_start(name, check) for name, check in checks.items()}
    return {name: check.done.wait(max(0.0, deadline - time.monotonic())) and check.ok for name, check in running.items()}


class ReadinessLog:
    """What /readyz tells the log: one WARNING line when this process stops being ready (naming
    what failed) or what failed changes, then at most one a minute while it lasts (with how many
    probes it left out), and one when it is ready again. A load balancer polls every few seconds:
    a line per 503 would bury everything else in the log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failed: tuple[str, ...] = ()  # as last told; a process starts out ready
        self._repeats = RepeatThrottle(clock=lambda: _clock())

    def note(self, failed: tuple[str, ...]) -> None:
        with self._lock:
            if failed == self._failed:
                if not failed:
                    return
                left_out = self._repeats.tell()
                if left_out is None:
                    return
            else:
                self._failed = failed
                self._repeats.reset()
                left_out = self._repeats.tell() if failed else 0  # told now, at once
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
    checks = _checks_run({"database": _database_ok, **({"redis": _redis_ok} if settings.REDIS_URL else {})})
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
