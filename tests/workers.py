"""What each pytest-xdist worker needs apart from the others, set before Django reads its settings
(loaded with `-p tests.workers`, so it runs before pytest-django configures Django).

- Its own Redis database: the suite empties the cache around every test (`FLUSHDB` on Redis) and
  some tests read every key of the database, so two workers on one database would wipe and read
  each other's stream buffers, rate-limit counters and sessions. Worker gwN uses the database of
  REDIS_URL less N (15, 14, 13... for .ci/run's /15). Every process a test starts inherits it.
- PostgreSQL and SQLite need nothing here: pytest-django names each worker's test database apart
  (test_parley_gw0, test_db.sqlite3_gw0...).
"""

import os
from urllib.parse import urlsplit, urlunsplit

REDIS_DATABASES = 16  # Redis's default `databases`


def worker_index() -> int | None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1"... set by xdist in each worker
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def redis_url_for_worker(url: str, index: int) -> str:
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    if index >= REDIS_DATABASES:
        raise RuntimeError(f"{index + 1} test workers, but Redis has {REDIS_DATABASES} databases: run fewer (-n)")
    return urlunsplit(parts._replace(path=f"/{(base - index) % REDIS_DATABASES}"))


_index = worker_index()
if _index is not None and os.environ.get("REDIS_URL"):
    os.environ["REDIS_URL"] = redis_url_for_worker(os.environ["REDIS_URL"], _index)
