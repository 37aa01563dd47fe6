"""Data rights: a person takes their data with them (export) or has it truly deleted (erasure).

The accounts app runs both and asks each app for the rows it owns (conversations.data_rights,
billing.data_rights); it never touches their tables itself.

Export: `export_request` makes a DataExport row and queues `accounts.tasks.export_build_task`,
which writes the zip to settings.EXPORT_ROOT entry by entry (messages read with .iterator(), the
JSON spooled to an anonymous temporary file), so memory stays flat however long the history. The
file is served only to its owner by an authenticated view, and removed after EXPORT_TTL_HOURS.
A build holds a lease on its row (DataExport.lease_until), renewed as it writes: when its worker
is killed, the redelivered task, the next request for an export or the periodic purge starts it
again once the lease has run out, from a clean file.

Erasure: `erasure_request` locks the account at once (inactive, unusable password: every session
stops authenticating) and queues `accounts.tasks.erasure_run_task`. `erasure_run` walks a fixed
list of steps; each step is idempotent and is recorded in ErasureRequest.steps_done in the same
transaction as its counts, so a run that dies midway is simply run again and finishes the rest:
one run at a time holds the erasure's lease (ErasureRequest.lease_until); the redelivered task
retries until a dead run's lease has run out, and the periodic `erasures_resume_task` catches
the rest. Money is never deleted: usage records and daily rollups stay with the user's link
removed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import stat
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY, get_user_model
from django.contrib.auth.hashers import make_password
from django.core import signing
from django.core.cache import caches
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.utils.translation import ngettext_lazy

from billing import data_rights as billing_rights
from conversations import data_rights as conversation_rights
from conversations import sockets

from .audit import audit_record
from .models import AuditEvent, DataExport, ErasureRequest
from .services import is_administrator, user_only_admins_among

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "parley.export"
EXPORT_VERSION = 1
PROGRESS_STEP = 5  # percent between two progress writes: at most ~20 writes per export
STALE_EXPORT_HOURS = 2  # a build still pending, or running without a live lease, after this is failed for good
# A queued build not claimed by then is queued again: its task was lost (the broker was down when
# it was sent, or the message went with a broker that lost it). Long enough that a busy queue
# rarely gets a second copy, which would be harmless (one claim builds).
QUEUE_GRACE = timedelta(minutes=5)
# How long a run's claim on its export or erasure holds without being renewed. A run renews it
# before each erasure step and batch, and within a long step or build at most every
# LEASE_RENEW_SECONDS, so one silent for a whole lease died with its worker; two minutes keeps a
# person waiting on a dead run briefly, and is well above the longest pause between two renewals.
LEASE = timedelta(minutes=2)
LEASE_RENEW_SECONDS = 15  # at most one lease write this often per run, however many rows it reads
LEASE_RETRY_MARGIN_SECONDS = 5  # a task that found a lease held comes back this long after it runs out
RECEIPT_SALT = "accounts.data_rights.erasure_receipt"
ERASED = "[erased]"


@dataclass
class DataRightsError(Exception):
    """Bad input for an export or erasure; `code` is stable, `message` is for people."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


class LeaseHeld(Exception):
    """Another run holds the lease of this export or erasure (it is at work, or died less than a
    lease ago): nothing was done here. Try again in `retry_in` seconds, when a dead run's lease
    has run out; the tasks turn this into a Celery retry."""

    def __init__(self, *, lease_until: datetime | None, now: datetime) -> None:
        left = (lease_until - now).total_seconds() if lease_until else 0
        self.retry_in = max(0, int(left) + 1) + LEASE_RETRY_MARGIN_SECONDS
        super().__init__(f"held by another run; retry in {self.retry_in}s")


def _lease_over(now: datetime) -> Q:
    """Rows no live run holds: never leased, released, or leased by a run that stopped renewing."""
    return Q(lease_until__isnull=True) | Q(lease_until__lte=now)


# --- Export -------------------------------------------------------------------------------------


def _export_tasks():
    # Imported late: tasks import this module.
    from . import tasks

    return tasks


def export_request(*, user, requested_by=None, ip_address: str | None = None) -> DataExport:
    """Start (or return the already running) export of `user`'s data; queued on commit.

    Two requests at once get the same export: the database allows one pending/running export per
    user (constraint dataexport_one_active_per_user) and the loser of the race returns the winner.
    An active export whose worker died (its lease ran out) is queued again, not handed back dead."""
    if ErasureRequest.objects.filter(user_id=user.pk, status__in=_OPEN).exists():
        raise DataRightsError("account_closing", _("This account is being erased."))
    active = DataExport.objects.filter(user=user, status__in=_ACTIVE_EXPORT).first()
    if active is not None:
        if _export_requeue_if_dead(active.pk, now=timezone.now()):
            active.refresh_from_db()
        return active
    try:
        with transaction.atomic():
            export = DataExport.objects.create(user=user, lease_until=timezone.now() + QUEUE_GRACE)
            audit_record(
                action="user.export",
                actor=requested_by or user,
                target_type="accounts.user",
                target_id=str(user.pk),
                ip_address=ip_address,
                data={"export_id": str(export.id)},
            )
            # Robust: the export is recorded either way. If the broker cannot take the task now,
            # asking again or the periodic purge queues it once QUEUE_GRACE has passed.
            transaction.on_commit(lambda: _export_tasks().export_build_task.delay(str(export.id)), robust=True)
    except IntegrityError:
        active = DataExport.objects.filter(user=user, status__in=_ACTIVE_EXPORT).first()
        if active is None:  # the other one finished in between: extremely unlikely, try once more
            raise
        return active
    return export


_ACTIVE_EXPORT = [DataExport.Status.PENDING, DataExport.Status.RUNNING]


def _export_dead(now: datetime) -> Q:
    """Active exports no run is at: a build whose lease ran out (its worker died), or a queued one
    no worker claimed within QUEUE_GRACE (its task was lost)."""
    unclaimed = Q(lease_until__lte=now) | Q(lease_until__isnull=True, created_at__lt=now - QUEUE_GRACE)
    return Q(_lease_over(now), status=DataExport.Status.RUNNING) | Q(unclaimed, status=DataExport.Status.PENDING)


def _export_requeue_if_dead(export_id, *, now: datetime) -> bool:
    """An export no run is at (_export_dead) goes back to pending and is queued again. A
    conditional UPDATE: of several callers at once, one queues it."""
    revived = (
        DataExport.objects.filter(_export_dead(now), pk=export_id)
        .update(status=DataExport.Status.PENDING, progress=0, lease_until=now + QUEUE_GRACE, lease_token=None)
    )
    if revived:
        logger.warning("export %s: no build is at it (its worker died or its task was lost), queued again", export_id)
        transaction.on_commit(lambda: _export_tasks().export_build_task.delay(str(export_id)), robust=True)
    return bool(revived)


def export_file_path(export: DataExport) -> Path:
    return Path(settings.EXPORT_ROOT) / f"{export.id}.zip"


def _partial_path(export_id, run: uuid.UUID) -> Path:
    # One name per run: a run that stalled past its lease and was replaced keeps writing only to
    # its own file, never into the one its replacement is building (nor renames that one).
    return Path(settings.EXPORT_ROOT) / f"{export_id}.{run.hex}.zip.partial"


class _BuildLost(Exception):
    """This run no longer holds its export: erased, expired, or taken over after a stall."""


def export_get_for_owner(*, export_id, user) -> DataExport | None:
    """The export if `user` owns it (anyone else gets None, and the view answers 404)."""
    return DataExport.objects.filter(pk=export_id, user_id=user.pk).first()


def export_is_expired(export: DataExport, *, now: datetime | None = None) -> bool:
    return export.expires_at is not None and export.expires_at <= (now or timezone.now())


def export_build(*, export_id) -> DataExport | None:
    """Write the zip of an export. The claim is a conditional UPDATE taking a pending export, or a
    running one whose lease ran out (its worker died): one run builds at a time, and a task
    delivered twice builds once. A live lease held by another run raises LeaseHeld. Progress and
    the lease are written a bounded number of times."""
    run = uuid.uuid4()
    now = timezone.now()
    claimed = (
        DataExport.objects.filter(pk=export_id)
        .filter(Q(status=DataExport.Status.PENDING) | Q(_lease_over(now), status=DataExport.Status.RUNNING))
        .update(status=DataExport.Status.RUNNING, progress=0, lease_token=run, lease_until=now + LEASE)
    )
    if not claimed:
        export = DataExport.objects.filter(pk=export_id).first()
        if export is not None and export.status == DataExport.Status.RUNNING:
            raise LeaseHeld(lease_until=export.lease_until, now=now)
        return export
    export = DataExport.objects.select_related("user").get(pk=export_id)
    root = Path(settings.EXPORT_ROOT)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial, final = _partial_path(export.pk, run), export_file_path(export)
    mine = DataExport.objects.filter(pk=export.pk, status=DataExport.Status.RUNNING, lease_token=run)
    # A dead run's files go before anything is written: its half zip is never served or kept.
    # Only while this run still holds the export, checked under the row's lock: a run that
    # stalled after its claim and was taken over would otherwise delete its replacement's
    # partial, or the zip it has published since.
    with transaction.atomic():
        if mine.select_for_update().values_list("pk", flat=True).first() is None:
            return DataExport.objects.filter(pk=export.pk).first()
        _export_files_delete(export.pk)
    renewed = time.monotonic()

    def renew(**fields) -> None:
        nonlocal renewed
        if not mine.update(lease_until=timezone.now() + LEASE, **fields):
            raise _BuildLost
        renewed = time.monotonic()

    def on_progress(percent: int) -> None:
        renew(progress=percent)

    def heartbeat() -> None:
        if time.monotonic() - renewed >= LEASE_RENEW_SECONDS:
            renew()

    published = False
    try:
        with translation.override(export.user.language or settings.LANGUAGE_CODE):
            size = export_write_zip(user=export.user, path=partial, on_progress=on_progress, heartbeat=heartbeat)
        with transaction.atomic():
            # Under the row's lock: an erasure deleting the user's exports (which locks them
            # first), a purge or a run that took over either went before (then the row is not
            # this run's, and its file is dropped) or waits until the file and row agree.
            if mine.select_for_update().values_list("pk", flat=True).first() is None:
                raise _BuildLost
            os.replace(partial, final)
            published = True
            now = timezone.now()
            mine.update(
                status=DataExport.Status.READY,
                progress=100,
                file_name=final.name,
                size_bytes=size,
                finished_at=now,
                expires_at=now + timedelta(hours=settings.EXPORT_TTL_HOURS),
                lease_until=None,
            )
    except _BuildLost:
        partial.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001 - any failure ends as a failed export, never a half file
        partial.unlink(missing_ok=True)
        if published:  # renamed, but the row never said ready: the file must not outlive that
            final.unlink(missing_ok=True)
        # The class name only: an exception's text can quote the data being written.
        logger.error("export %s failed: %s", export.pk, type(exc).__name__)
        mine.update(
            status=DataExport.Status.FAILED, error=type(exc).__name__[:200], finished_at=timezone.now(), lease_until=None
        )
    # Anything else (BaseException: the worker being killed or shut down) is left to the lease:
    # a killed worker runs no handler at all, and both are recovered the same way.
    return DataExport.objects.filter(pk=export.pk).first()


def _account_dict(user) -> dict[str, Any]:
    return {
        "id": user.pk,
        "username": user.username,
        "email": user.email,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "display_name": user.display_name,
        "timezone": user.timezone,
        "language": user.language,
        "default_model": user.default_model,
        "date_joined": user.date_joined.isoformat(),
        "last_login": user.last_login.isoformat() if user.last_login else None,
        "teams": [team.name for team in user.teams.all()],
    }


def export_write_zip(
    *,
    user,
    path: Path,
    on_progress: Callable[[int], None] | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> int:
    """Write the export zip of `user` to `path` and return its size in bytes. The layout is the
    one documented in templates/accounts/data/export_readme.md (copied into the zip).
    `on_progress` gets each step of PROGRESS_STEP percent; `heartbeat` is called for every
    message, usage row and copied chunk (it decides itself when to write anything)."""
    counts = conversation_rights.conversations_counts(user_id=user.pk)
    total = max(counts["messages"], 1)
    done = 0
    reported = 0
    beat = heartbeat or (lambda: None)
    if on_progress:
        on_progress(0)

    def tick() -> None:
        nonlocal done, reported
        beat()
        done += 1
        percent = min(95, done * 95 // total)
        if on_progress and percent >= reported + PROGRESS_STEP:
            reported = percent
            on_progress(percent)

    exported_at = timezone.now().isoformat()
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        # conversations.json is spooled to an unnamed temporary file (gone when closed, even on a
        # crash) so the messages are read once while the Markdown files are written beside it.
        tempfile.TemporaryFile(mode="w+", encoding="utf-8", dir=path.parent) as spool,
    ):
        archive.writestr(
            "README.md",
            render_to_string("accounts/data/export_readme.md", {"format": EXPORT_FORMAT, "version": EXPORT_VERSION}),
        )
        archive.writestr("account.json", json.dumps(_account_dict(user), ensure_ascii=False, indent=2))
        head = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "exported_at": exported_at, "user_id": user.pk}
        spool.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "conversations": [')
        seen_names: set[str] = set()
        first = True
        for conversation in conversation_rights.conversations_for_export(user_id=user.pk):
            name = f"conversations/{conversation_rights.conversation_file_stem(conversation)}.md"
            if name in seen_names:
                name = f"conversations/{conversation.id}.md"
            seen_names.add(name)
            spool.write(("\n" if first else ",\n") + conversation_rights.conversation_json_head(conversation))
            first = False
            with io.TextIOWrapper(archive.open(name, "w"), encoding="utf-8", newline="\n") as markdown:
                markdown.write(conversation_rights.conversation_markdown_head(conversation, tz_name=user.timezone))
                for index, message in enumerate(conversation_rights.conversation_messages(conversation=conversation)):
                    markdown.write(conversation_rights.message_markdown(message, tz_name=user.timezone))
                    spool.write(conversation_rights.message_json(message, first=index == 0))
                    tick()
                spool.write(conversation_rights.conversation_json_tail())
        spool.write("\n]}\n")
        spool.seek(0)
        with io.TextIOWrapper(archive.open("conversations.json", "w", force_zip64=True), encoding="utf-8") as out:
            while chunk := spool.read(1024 * 1024):
                out.write(chunk)
                beat()
        with io.TextIOWrapper(archive.open("usage.csv", "w", force_zip64=True), encoding="utf-8", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=billing_rights.USAGE_CSV_FIELDS)
            writer.writeheader()
            for row in billing_rights.usage_export_rows(user_id=user.pk):
                writer.writerow(row)
                beat()
    if on_progress:
        on_progress(99)
    return path.stat().st_size


def export_write_file(*, user, output: Path, actor=None) -> int:
    """The `export_user_data` command: write the zip to `output` (not kept by the site), which
    must not exist (FileExistsError, changing nothing). The file holds a person's whole history:
    it is readable by this account only (0600) from its first byte. `output` is claimed first
    (O_EXCL: a file, or a symlink, that appears after the command looked is never overwritten),
    the zip is written to a temporary file beside it and renamed over the claim, so a failure
    never leaves half a file."""
    output = Path(output)
    os.close(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    partial: Path | None = None
    try:
        # mkstemp: a name no one else has, created 0600; the zip is written into it as it is.
        handle, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
        os.close(handle)
        partial = Path(name)
        size = export_write_zip(user=user, path=partial)
        os.replace(partial, output)
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        output.unlink(missing_ok=True)  # the claim made above: the file is this call's own
        raise
    audit_record(
        action="user.export", actor=actor, target_type="accounts.user", target_id=str(user.pk), data={"via": "command"}
    )
    return size


def _export_files_delete(export_id) -> None:
    """The export's zip and every run's partial file (`<id>.zip`, `<id>.<run>.zip.partial`).
    Callers hold the row's lock, or no run can hold the export any more (failed, expired, or its
    row is being deleted): a build publishes its zip under that lock, and only while it holds
    the row."""
    root = Path(settings.EXPORT_ROOT)
    if root.is_dir():
        for path in root.glob(f"{export_id}.*"):  # a UUID: no glob metacharacters
            path.unlink(missing_ok=True)


def exports_delete_for_user(*, user_id: int) -> int:
    """Delete every export of `user_id`, files first (a file without a row is unreachable but
    still data; a row without a file is harmless)."""
    with transaction.atomic():
        # The rows are locked before their files go: a build publishing its zip right now (it
        # locks its row to do so) either finished first, and its file is deleted here, or waits
        # and then finds its row gone and drops its file.
        ids = list(DataExport.objects.select_for_update().filter(user_id=user_id).values_list("id", flat=True))
        for export_id in ids:
            _export_files_delete(export_id)
        DataExport.objects.filter(id__in=ids).delete()
    return len(ids)


def exports_purge_expired(*, now: datetime | None = None) -> int:
    """Periodic: delete exports past their expiry (file and row), build again those whose worker
    died (lease run out), fail those still not built after STALE_EXPORT_HOURS (a build that
    kills its worker every time must end), and remove stray files in EXPORT_ROOT that belong to
    no export. Returns how many went."""
    now = now or timezone.now()
    stale = now - timedelta(hours=STALE_EXPORT_HOURS)
    # A build with a live lease is at work, however old: it is left alone.
    unbuilt = DataExport.objects.filter(_lease_over(now), status__in=_ACTIVE_EXPORT)
    for export_id in unbuilt.filter(created_at__lt=stale).values_list("id", flat=True):
        if DataExport.objects.filter(_lease_over(now), pk=export_id, status__in=_ACTIVE_EXPORT).update(
            status=DataExport.Status.FAILED, error="timeout", finished_at=now, expires_at=now, lease_until=None
        ):
            _export_files_delete(export_id)
    for export_id in DataExport.objects.filter(_export_dead(now), created_at__gte=stale).values_list("id", flat=True):
        _export_requeue_if_dead(export_id, now=now)
    expired = DataExport.objects.filter(
        Q(expires_at__lte=now) | Q(status=DataExport.Status.FAILED, created_at__lt=now - timedelta(hours=settings.EXPORT_TTL_HOURS))
    )
    removed = 0
    for export_id in expired.values_list("id", flat=True):
        _export_files_delete(export_id)
        removed += DataExport.objects.filter(pk=export_id).delete()[0]
    root = Path(settings.EXPORT_ROOT)
    if root.is_dir():
        known = {str(pk) for pk in DataExport.objects.values_list("id", flat=True)}
        for entry in root.iterdir():
            stem = entry.name.split(".", 1)[0]
            try:
                info = entry.stat()
            except FileNotFoundError:
                # Gone since the listing (a build renaming its partial into place, or removing
                # it; another purge): nothing to sweep, and the rest of the folder still is.
                continue
            old = info.st_mtime < (now - timedelta(hours=STALE_EXPORT_HOURS)).timestamp()
            if stat.S_ISREG(info.st_mode) and stem not in known and old:
                entry.unlink(missing_ok=True)
    return removed


# --- Cache ---------------------------------------------------------------------------------------


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _cache_raw_keys(cache, prefix: str) -> list:
    """The backend's own keys (prefix and version included) of every entry whose key starts with
    `prefix`: Redis by SCAN (never KEYS), local memory from its dict. Other backends cannot list
    their keys: logged, and an empty list."""
    from django.core.cache.backends.locmem import LocMemCache
    from django.core.cache.backends.redis import RedisCache

    made = cache.make_key(prefix)
    if isinstance(cache, RedisCache):
        client = cache._cache.get_client(write=True)
        return list(client.scan_iter(match=_glob_escape(made) + "*", count=1000))
    if isinstance(cache, LocMemCache):
        with cache._lock:
            return [key for key in cache._cache if key.startswith(made)]
    logger.warning("cache backend %s cannot list keys", type(cache).__name__)
    return []


def cache_keys_with_prefix(prefix: str, *, alias: str = "default") -> list[str]:
    """Keys (as the code names them, without the backend's prefix) that start with `prefix`."""
    cache = caches[alias]
    strip = len(cache.make_key(""))
    keys = []
    for raw in _cache_raw_keys(cache, prefix):
        text = raw.decode() if isinstance(raw, bytes) else raw
        keys.append(text[strip:])
    return keys


def cache_delete_prefix(prefix: str, *, alias: str = "default") -> int:
    """Delete every cache key starting with `prefix`; returns how many there were."""
    from django.core.cache.backends.redis import RedisCache

    cache = caches[alias]
    raw_keys = _cache_raw_keys(cache, prefix)
    if not raw_keys:
        return 0
    if isinstance(cache, RedisCache):
        client = cache._cache.get_client(write=True)
        for start in range(0, len(raw_keys), 500):
            client.delete(*raw_keys[start : start + 500])
        return len(raw_keys)
    with cache._lock:  # local memory (the only other backend _cache_raw_keys lists)
        for key in raw_keys:
            cache._delete(key)
    return len(raw_keys)


def user_cache_prefixes(*, user_id: int) -> list[str]:
    """Per-user cache keys follow the convention `user:<id>:...` (rate limits and the like)."""
    return [f"user:{user_id}:"]


# --- Sessions, login records, audit --------------------------------------------------------------


def _session_store():
    return import_module(settings.SESSION_ENGINE).SessionStore


def _cache_session_prefix() -> str | None:
    """Where a cache-only session engine keeps sessions (None for the database engines)."""
    if settings.SESSION_ENGINE == "django.contrib.sessions.backends.cache":
        from django.contrib.sessions.backends.cache import KEY_PREFIX

        return KEY_PREFIX
    return None


def session_keys_of(*, user_id: int, heartbeat: Callable[[], None] | None = None) -> list[str]:
    """Keys of every session logged in as `user_id`. Sessions are signed blobs, so each is
    decoded: rows of the session table (db and cached_db engines), or the cache's entries when
    sessions live only in the cache. `heartbeat` is called for each one (a whole table: an
    erasure renews its lease from it)."""
    beat = heartbeat or (lambda: None)
    store = _session_store()
    wanted = str(user_id)
    keys = []
    prefix = _cache_session_prefix()
    if prefix is not None:
        cache = caches[settings.SESSION_CACHE_ALIAS]
        for cache_key in cache_keys_with_prefix(prefix, alias=settings.SESSION_CACHE_ALIAS):
            beat()
            data = cache.get(cache_key) or {}
            if str(data.get(SESSION_KEY, "")) == wanted:
                keys.append(cache_key[len(prefix) :])
        return keys
    if not hasattr(store, "get_model_class"):  # signed cookies: nothing kept server-side
        return []
    decoder = store()
    rows = store.get_model_class().objects.values_list("session_key", "session_data")
    for key, data in rows.iterator(chunk_size=2000):
        beat()
        if str(decoder.decode(data).get(SESSION_KEY, "")) == wanted:
            keys.append(key)
    return keys


def sessions_delete_for_user(*, user_id: int, heartbeat: Callable[[], None] | None = None) -> int:
    """Log `user_id` out everywhere (the account is already inactive, so even a session this
    misses, such as a signed cookie, no longer authenticates). `heartbeat`: see session_keys_of."""
    store = _session_store()
    keys = session_keys_of(user_id=user_id, heartbeat=heartbeat)
    for key in keys:
        if heartbeat:
            heartbeat()
        store(session_key=key).delete()
    return len(keys)


def _axes_models():
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog

    return [AccessAttempt, AccessLog, AccessFailureLog]


def _login_filter(username: str, email: str) -> Q:
    query = Q(username__iexact=username)
    if email:
        query |= Q(username__iexact=email)  # people type their email into the username box
    return query


def login_records_count(*, username: str, email: str = "") -> int:
    return sum(model.objects.filter(_login_filter(username, email)).count() for model in _axes_models())


def login_records_delete(*, username: str, email: str = "") -> int:
    """django-axes keeps the username, IP and user agent of every login attempt: delete them."""
    return sum(model.objects.filter(_login_filter(username, email)).delete()[0] for model in _axes_models())


def _scrub(value: Any, needles: list[str]) -> Any:
    if isinstance(value, str):
        folded = value.casefold()
        return ERASED if any(needle in folded for needle in needles) else value
    if isinstance(value, list):
        return [_scrub(item, needles) for item in value]
    if isinstance(value, dict):
        return {key: _scrub(item, needles) for key, item in value.items()}
    return value


def audit_scrub_user(*, user_id: int, username: str, email: str, heartbeat: Callable[[], None] | None = None) -> int:
    """The audit log keeps what happened and the ids; it must not keep who the person was. Any
    value naming the user is replaced, their IP addresses dropped, and the admin history entries
    about the account lose the name they were shown under. `heartbeat` is called for each
    entry read (an erasure renews its lease from it)."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    needles = [n.casefold() for n in (username, email) if n]
    query = Q(actor_id=user_id) | Q(target_type="accounts.user", target_id=str(user_id))
    for needle in needles:
        query |= Q(data__icontains=needle)
        escaped = json.dumps(needle)[1:-1]  # SQLite keeps JSON with \\u escapes for non-ASCII
        if escaped != needle:
            query |= Q(data__icontains=escaped)
    changed = 0
    for event in AuditEvent.objects.filter(query).iterator(chunk_size=500):
        if heartbeat:
            heartbeat()
        data = _scrub(event.data, needles)
        if data != event.data or (event.actor_id == user_id and event.ip_address):
            event.data = data
            if event.actor_id == user_id:
                event.ip_address = None
            event.save(update_fields=["data", "ip_address"])
            changed += 1
    user_type = ContentType.objects.get_for_model(get_user_model())
    changed += LogEntry.objects.filter(content_type=user_type, object_id=str(user_id)).update(
        object_repr=f"(erased user {user_id})", change_message=""
    )
    return changed


# --- Erasure -------------------------------------------------------------------------------------

_OPEN = [ErasureRequest.Status.PENDING, ErasureRequest.Status.RUNNING]


def _only_admin(user) -> bool:
    # The rule shared with the admin's Disable action and user form (called in a transaction).
    # Someone who is not an administrator cannot be the last one: no lock over the admins' rows
    # for every person erasing their own account.
    if not is_administrator(is_active=user.is_active, is_superuser=user.is_superuser, is_staff=user.is_staff):
        return False
    return bool(user_only_admins_among(user_ids=[user.pk], lock=True))


# erasure_preview's kinds in words, for a confirmation page: what erasure removes, in this order,
# and what it keeps. Beside the preview so that a kind added there gets its words here.
_ERASURE_REMOVES = {
    "conversations": ngettext_lazy("%(n)s conversation", "%(n)s conversations", "n"),
    "messages": ngettext_lazy("%(n)s message", "%(n)s messages", "n"),
    "exports": ngettext_lazy("%(n)s export", "%(n)s exports", "n"),
    "sessions": ngettext_lazy("%(n)s signed-in session", "%(n)s signed-in sessions", "n"),
    "login_records": ngettext_lazy("%(n)s login record", "%(n)s login records", "n"),
    "budgets": ngettext_lazy("%(n)s budget", "%(n)s budgets", "n"),
}
_ERASURE_KEEPS = {
    "usage_records_kept": ngettext_lazy("%(n)s usage record", "%(n)s usage records", "n"),
}


def erasure_preview_words(preview: dict[str, int]) -> tuple[list[str], list[str]]:
    """An erasure_preview in words of the active language: (what erasure removes, what it keeps)."""
    unnamed = preview.keys() - _ERASURE_REMOVES.keys() - _ERASURE_KEEPS.keys()
    if unnamed:
        raise KeyError(f"erasure preview kinds without words: {sorted(unnamed)}")
    return tuple(
        [words % {"n": preview[kind]} for kind, words in kinds.items() if kind in preview]
        for kinds in (_ERASURE_REMOVES, _ERASURE_KEEPS)
    )


def erasure_preview(*, user, include_sessions: bool = True) -> dict[str, int]:
    """What erasing `user` would remove, as counts by kind (for the confirmation pages).
    Counting sessions decodes the whole session table: pages shown often pass False."""
    counts = conversation_rights.conversations_counts(user_id=user.pk)
    usage = billing_rights.usage_counts(user_id=user.pk)
    preview = {
        "conversations": counts["conversations"],
        "messages": counts["messages"],
        "exports": DataExport.objects.filter(user_id=user.pk).count(),
        "login_records": login_records_count(username=user.username, email=user.email),
        "budgets": usage["budgets"],
        # Kept, without the link to the person: the money stays accounted for.
        "usage_records_kept": usage["usage_records"],
    }
    if include_sessions:
        preview["sessions"] = len(session_keys_of(user_id=user.pk))
    return preview


def erasure_request(
    *, user, requested_by=None, queue: bool = True, ip_address: str | None = None
) -> ErasureRequest:
    """Start (idempotently) the erasure of `user`; queued on commit.

    The account is locked at once, in this transaction: inactive and with an unusable password,
    so every session stops authenticating and no new reply can start while the task waits."""
    with transaction.atomic():
        erasure = ErasureRequest.objects.filter(user_id=user.pk, status__in=_OPEN).first()
        if erasure is None:
            if _only_admin(user):
                raise DataRightsError(
                    "only_admin", _("This is the only administrator account: make another administrator first.")
                )
            try:
                with transaction.atomic():
                    erasure = ErasureRequest.objects.create(
                        user_id=user.pk, requested_by_id=getattr(requested_by, "pk", None)
                    )
            except IntegrityError:  # asked twice at the same moment: one open erasure
                erasure = ErasureRequest.objects.get(user_id=user.pk, status__in=_OPEN)
            else:
                audit_record(
                    action="user.erase",
                    actor=requested_by or user,
                    target_type="accounts.user",
                    target_id=str(user.pk),
                    ip_address=ip_address,
                    data={"erasure_id": str(erasure.id)},
                )
        get_user_model().objects.filter(pk=user.pk).update(is_active=False, password=make_password(None))
        # A queryset update sends no save signal: the open chat sockets are told here (on commit),
        # so every tab closes now, not at its next frame or heartbeat.
        sockets.user_sockets_close(user_id=user.pk)
        if queue:
            erasure_id = str(erasure.id)
            # Robust: the erasure is recorded and the account locked either way; if the broker
            # cannot take the task now, erasures_resume_stuck queues it again.
            transaction.on_commit(lambda: _export_tasks().erasure_run_task.delay(erasure_id), robust=True)
    return erasure


def _add_counts(erasure: ErasureRequest, counts: dict[str, int], *, step: str | None = None, **fields) -> bool:
    """Add `counts` to the receipt (and mark `step` done) under the row lock, renewing the run's
    lease. Returns False when the step was already done by another run (then nothing is added).

    Raises LeaseHeld when the run no longer holds the erasure (it stalled past its lease and
    another run took over): the step's transaction, and what the step did in it, rolls back, so
    two runs never both record a batch or a step."""
    row = ErasureRequest.objects.select_for_update().get(pk=erasure.pk)
    now = timezone.now()
    if row.lease_token != erasure.lease_token:
        raise LeaseHeld(lease_until=row.lease_until, now=now)
    if step is not None and step in row.steps_done:
        return False
    for key, value in counts.items():
        row.receipt[key] = row.receipt.get(key, 0) + value
    if step is not None:
        row.steps_done = [*row.steps_done, step]
    for name, value in fields.items():
        setattr(row, name, value)
    row.lease_until = now + LEASE
    row.save(update_fields=["receipt", "steps_done", "lease_until", *fields])
    return True


def _erasure_lease_renew(erasure: ErasureRequest) -> None:
    """Renew the run's lease before a step; LeaseHeld if another run has taken the erasure over."""
    now = timezone.now()
    mine = ErasureRequest.objects.filter(pk=erasure.pk, lease_token=erasure.lease_token)
    if not mine.update(lease_until=now + LEASE):
        held = ErasureRequest.objects.filter(pk=erasure.pk).values_list("lease_until", flat=True).first()
        raise LeaseHeld(lease_until=held, now=now)


def _erasure_heartbeat(erasure: ErasureRequest) -> Callable[[], None]:
    """For the loops of a step that can outlast a lease (every session decoded, every rollup row
    folded, every audit entry scrubbed): renews the run's lease at most every
    LEASE_RENEW_SECONDS, so a long step is not taken for a dead run, its work redone by another
    and its own rolled back. Raises LeaseHeld, stopping the step, once another run has taken over.

    Called inside a step's transaction, the renewal is seen by others only at the commit, but it
    locks the erasure's row from the first one: a run trying to claim the erasure waits for that
    commit and then finds the lease renewed (on SQLite the transaction holds the database's write
    lock, so no claim is written meanwhile). The step starts right after erasure_run renewed it."""
    renewed = timezone.now()

    def beat() -> None:
        nonlocal renewed
        now = timezone.now()
        if now - renewed >= timedelta(seconds=LEASE_RENEW_SECONDS):
            _erasure_lease_renew(erasure)
            renewed = now

    return beat


def _stop_turns(user_id: int) -> None:
    """Ask the chat to stop every reply streaming for the user. Guarded: erasure must go on
    even if the chat part is missing or fails (the rows go anyway)."""
    try:
        from conversations.turns import turns_stop_for_user
    except ImportError:
        return
    try:
        turns_stop_for_user(user_id=user_id)
    except Exception as exc:  # noqa: BLE001
        logger.warning("erasure: stopping replies for user %s failed: %s", user_id, type(exc).__name__)


def _step_streams(erasure: ErasureRequest, user) -> None:
    cids = conversation_rights.conversation_ids_of(user_id=erasure.user_id)
    prefixes = [
        *conversation_rights.stream_cache_prefixes(conversation_ids=cids),
        *billing_rights.usage_cache_prefixes(user_id=erasure.user_id),
        *user_cache_prefixes(user_id=erasure.user_id),
    ]
    with transaction.atomic():
        # Remember what to sweep at the very end (a dying reply may write its buffer once more).
        ErasureRequest.objects.filter(pk=erasure.pk).update(cache_prefixes=prefixes)
    _stop_turns(erasure.user_id)
    with transaction.atomic():
        stopped = conversation_rights.conversations_stop_running(user_id=erasure.user_id)
    # The live buffers hold the reply's words: gone now, and swept again by the last step.
    swept = sum(cache_delete_prefix(prefix) for prefix in prefixes)
    with transaction.atomic():
        _add_counts(erasure, {"replies_stopped": stopped, "cache_keys": swept}, step="streams")


def _step_exports(erasure: ErasureRequest, user) -> None:
    with transaction.atomic():
        removed = exports_delete_for_user(user_id=erasure.user_id)
        _add_counts(erasure, {"exports": removed}, step="exports")


def _step_conversations(erasure: ErasureRequest, user) -> None:
    while True:
        # One batch per transaction, its counts recorded with it: a crash loses nothing.
        with transaction.atomic():
            ids = conversation_rights.conversation_ids_of(user_id=erasure.user_id, limit=20)
            if not ids:
                _add_counts(erasure, {}, step="conversations")
                return
            batch = conversation_rights.conversations_delete(conversation_ids=ids)
            _add_counts(erasure, {"conversations": batch.conversations, "messages": batch.messages})


def _step_usage(erasure: ErasureRequest, user) -> None:
    with transaction.atomic():
        kept = billing_rights.usage_forget_user(
            user_id=erasure.user_id, username=user.username if user else "", heartbeat=_erasure_heartbeat(erasure)
        )
        _add_counts(
            erasure,
            {"usage_records_anonymised": kept["usage_records"], "daily_rollups_anonymised": kept["daily_rollups"], "budgets": kept["budgets"]},
            step="usage",
        )


def _step_sessions(erasure: ErasureRequest, user) -> None:
    # Outside a transaction: each renewal is committed as it is made.
    removed = sessions_delete_for_user(user_id=erasure.user_id, heartbeat=_erasure_heartbeat(erasure))
    with transaction.atomic():
        _add_counts(erasure, {"sessions": removed}, step="sessions")


def _step_login_records(erasure: ErasureRequest, user) -> None:
    with transaction.atomic():
        removed = login_records_delete(username=user.username, email=user.email) if user else 0
        _add_counts(erasure, {"login_records": removed}, step="login_records")


def _step_audit(erasure: ErasureRequest, user) -> None:
    with transaction.atomic():
        scrubbed = (
            audit_scrub_user(
                user_id=erasure.user_id, username=user.username, email=user.email, heartbeat=_erasure_heartbeat(erasure)
            )
            if user
            else 0
        )
        _add_counts(erasure, {"audit_entries_scrubbed": scrubbed}, step="audit")


def _step_account(erasure: ErasureRequest, user) -> None:
    with transaction.atomic():
        # The user row is locked first, as a finishing reply locks it first before writing its
        # ledger row (conversations.turns._ledger_owner): one of the two waits for the other, so
        # the ledger row is either written anonymous or committed in time to be forgotten below.
        get_user_model().objects.select_for_update().filter(pk=erasure.user_id).values_list("pk", flat=True).first()
        # Once more, in the same transaction as the delete: a reply that finished after the usage
        # step wrote a ledger row still linked to the person.
        late = billing_rights.usage_forget_user(
            user_id=erasure.user_id, username=user.username if user else "", heartbeat=_erasure_heartbeat(erasure)
        )
        removed = 0
        if user is not None:
            _total, per_model = get_user_model().objects.filter(pk=erasure.user_id).delete()
            removed = per_model.get(get_user_model()._meta.label, 0)
        _add_counts(
            erasure,
            {
                "usage_records_anonymised": late["usage_records"],
                "daily_rollups_anonymised": late["daily_rollups"],
                "budgets": late["budgets"],
                "account": removed,
            },
            step="account",
        )


def _step_cache(erasure: ErasureRequest, user) -> None:
    erasure.refresh_from_db(fields=["cache_prefixes"])
    removed = sum(cache_delete_prefix(prefix) for prefix in erasure.cache_prefixes)
    with transaction.atomic():
        _add_counts(erasure, {"cache_keys": removed}, step="cache", cache_prefixes=[])


ERASURE_STEPS: list[tuple[str, Callable[[ErasureRequest, Any], None]]] = [
    ("streams", _step_streams),
    ("exports", _step_exports),
    ("conversations", _step_conversations),
    ("usage", _step_usage),
    ("sessions", _step_sessions),
    ("login_records", _step_login_records),
    ("audit", _step_audit),
    ("account", _step_account),
    ("cache", _step_cache),
]


def erasure_run(*, erasure_id) -> ErasureRequest | None:
    """Carry out an erasure, skipping the steps already done. Running it again after a crash
    finishes what is left and changes nothing else.

    One run at a time: the claim is a conditional UPDATE taking the erasure's lease, which the run
    renews before each step, with each batch it records, and within a step's long loops
    (_erasure_heartbeat). While another run holds a live lease
    this raises LeaseHeld and does nothing; the task retries when that lease would have run out,
    so an erasure whose worker was killed resumes about a LEASE later.

    The lease is a database row, not a cache key: every process and the periodic resume see it,
    a cache flush or restart cannot drop it (letting a second run in), and with the cache down
    the claim still works; the steps that sweep the cache then fail and are retried, as before."""
    erasure = ErasureRequest.objects.filter(pk=erasure_id).first()
    if erasure is None or erasure.status == ErasureRequest.Status.DONE:
        return erasure
    run = uuid.uuid4()
    now = timezone.now()
    claimed = ErasureRequest.objects.filter(_lease_over(now), pk=erasure.pk, status__in=_OPEN).update(
        status=ErasureRequest.Status.RUNNING,
        attempts=F("attempts") + 1,
        last_error="",
        lease_token=run,
        lease_until=now + LEASE,
    )
    if not claimed:
        erasure.refresh_from_db()
        if erasure.status == ErasureRequest.Status.DONE:
            return erasure
        raise LeaseHeld(lease_until=erasure.lease_until, now=now)
    erasure.lease_token = run
    try:
        user = get_user_model().objects.filter(pk=erasure.user_id).first()
        for name, step in ERASURE_STEPS:
            erasure.refresh_from_db(fields=["steps_done"])
            if name in erasure.steps_done:
                continue
            _erasure_lease_renew(erasure)
            step(erasure, user)
        with transaction.atomic():
            erasure = ErasureRequest.objects.select_for_update().get(pk=erasure.pk)
            if erasure.status != ErasureRequest.Status.DONE:
                erasure.status = ErasureRequest.Status.DONE
                erasure.finished_at = timezone.now()
                erasure.lease_until = erasure.lease_token = None
                erasure.save(update_fields=["status", "finished_at", "lease_until", "lease_token"])
                audit_record(
                    action="user.erase_done",
                    actor=None,
                    target_type="accounts.user",
                    target_id=str(erasure.user_id),
                    data={"erasure_id": str(erasure.id), "removed": erasure.receipt},
                )
        return erasure
    except LeaseHeld:
        raise  # another run took over while this one stalled: the erasure is in its hands
    except Exception as exc:
        # Released, so the task's own retry (or anyone) can resume at once.
        ErasureRequest.objects.filter(pk=erasure.pk, lease_token=run).update(
            last_error=type(exc).__name__[:200], lease_until=None, lease_token=None
        )
        logger.error("erasure %s stopped: %s (it resumes on the next run)", erasure.pk, type(exc).__name__)
        raise
    # Anything else (BaseException: the worker being killed or shut down) is left to the lease:
    # a killed worker runs no handler at all, and both are recovered the same way.


def erasures_resume_stuck(*, older_than: timedelta = timedelta(minutes=10)) -> list[str]:
    """Periodic: queue again every open erasure no run holds: its lease ran out (the worker died
    mid-run), or it has waited `older_than` without a live lease (its task was lost, or failed
    past its retries). Queuing one twice is harmless: one run takes the lease."""
    now = timezone.now()
    dead = Q(lease_until__lte=now) | Q(lease_until__isnull=True, created_at__lt=now - older_than)
    ids = [str(pk) for pk in ErasureRequest.objects.filter(dead, status__in=_OPEN).values_list("id", flat=True)]
    tasks = _export_tasks()
    for erasure_id in ids:
        tasks.erasure_run_task.delay(erasure_id)
    return ids


def erasure_receipt_token(erasure: ErasureRequest) -> str:
    """A signed reference to the receipt: the person is logged out by then, and the receipt holds
    counts only."""
    return signing.dumps(str(erasure.pk), salt=RECEIPT_SALT, compress=False)


def erasure_from_receipt_token(token: str) -> ErasureRequest | None:
    try:
        erasure_id = signing.loads(token, salt=RECEIPT_SALT)
    except signing.BadSignature:
        return None
    return ErasureRequest.objects.filter(pk=erasure_id).first()


# --- Retention -----------------------------------------------------------------------------------


def retention_purge(*, days: int | None = None) -> dict[str, int] | None:
    """Daily: delete conversations inactive for CONVERSATION_RETENTION_DAYS (unset: keep all)."""
    days = days if days is not None else settings.CONVERSATION_RETENTION_DAYS
    if not days:
        return None
    removed = conversation_rights.conversations_purge_older_than(days=days)
    counts = {"conversations": removed.conversations, "messages": removed.messages}
    if removed.conversations:
        audit_record(action="conversations.retention_purge", data={"days": days, **counts})
    return counts


def iter_receipt(receipt: dict[str, int]) -> Iterator[tuple[str, int]]:
    """The receipt's lines in a stable, readable order (labels are translated by the template)."""
    order = [
        "account", "conversations", "messages", "replies_stopped", "exports", "sessions", "login_records",
        "cache_keys", "budgets", "audit_entries_scrubbed", "usage_records_anonymised", "daily_rollups_anonymised",
    ]
    for key in order:
        if key in receipt:
            yield key, receipt[key]
