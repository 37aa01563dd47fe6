"""Liveness and readiness probes (CONTRACT section 4)."""

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
    return JsonResponse(body, status=503 if failed else 200)
