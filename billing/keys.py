"""Provider keys: the vault (add, change, drain, disable, re-encrypt, import from the environment)
and the key-state machine the turn drives (choose a key, hear how the call went).

State lives in the database (health, cooldown, failure count: every process reads the same row)
and in the cache (the round-robin counter that spreads calls over keys of equal priority; on
Redis every process shares it). Nothing is kept in a process's memory that another one needs.

The state machine, driven by `key_report_failure(kind=...)`:
  rate_limited      -> cooling_down until now + Retry-After (else KEY_RATE_LIMIT_COOLDOWN); skipped
                       by key_choose until then; try the next key now.
  unavailable/timeout -> consecutive_failures + 1; from KEY_FAILURE_THRESHOLD on, the circuit opens:
                       failing until now + a cooldown that doubles with each further failure. After
                       it the key is tried again ("half-open"); one success closes the circuit, one
                       more failure reopens it. Try the next key after a short jittered backoff.
  auth              -> invalid: never chosen again until an administrator replaces its secret or a
                       "test key" succeeds; audited, and listed by keys_needing_attention().
  bad_request/context_too_long -> the user's request: the key is fine, nothing is retried.
  model_not_found   -> this key's server does not serve the model: the key is fine (another
                       model may be served by it), try the next key now.

Secrets: decrypted only into a KeyLease handed to the provider call; never logged, printed,
returned by a service other than key_choose, or written to the audit log.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import random
import socket
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts.audit import audit_record
from conversations.llm.base import ErrorKind

from .crypto import SecretUndecryptable, secret_decrypt, secret_encrypt, secret_reencrypt
from .models import ProviderKey

logger = logging.getLogger(__name__)

State = ProviderKey.State
Health = ProviderKey.Health
KEY_PROVIDERS = ("openai", "anthropic")
# Only for deciding whether showing the last four characters gives too much away.
_LAST4_MIN_LENGTH = 12
_SECRET_MAX_LENGTH = 4096
_NAME_MAX_LENGTH = ProviderKey._meta.get_field("name").max_length
_URL_MAX_LENGTH = ProviderKey._meta.get_field("base_url").max_length
PRIORITY_RANGE = (-1_000_000, 1_000_000)

# How a call with a key failed (ErrorKind, and the key Test's own two), in words an operator
# reads on the key list, the dashboard and the Test's message; the code stays in the database,
# the ledger and the logs.
_ERROR_KIND_WORDS = {
    ErrorKind.AUTH: gettext_lazy("key refused, HTTP 401/403"),
    ErrorKind.RATE_LIMITED: gettext_lazy("rate limited, HTTP 429"),
    ErrorKind.UNAVAILABLE: gettext_lazy("provider unavailable, HTTP 5xx or no connection"),
    ErrorKind.TIMEOUT: gettext_lazy("no answer in time"),
    ErrorKind.BAD_REQUEST: gettext_lazy("request refused, HTTP 400"),
    ErrorKind.MODEL_NOT_FOUND: gettext_lazy("model not served there, HTTP 404"),
    ErrorKind.CONTEXT_TOO_LONG: gettext_lazy("conversation too long for the model"),
    "base_url": gettext_lazy("base URL not allowed"),
    "undecryptable": gettext_lazy("secret cannot be decrypted"),
}


def error_kind_label(kind: str) -> str:
    """`kind` in words, in the active language; a kind without words as it is."""
    return str(_ERROR_KIND_WORDS.get(kind, kind))

# Cloud metadata and credential endpoints by name and by address. Refused whatever
# ALLOW_PRIVATE_BASE_URLS says: that setting is for a model server on the private network, and
# these hand out the machine's cloud credentials to whoever can make it call them.
_METADATA_HOSTS = {
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
}
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata and credentials
    ipaddress.ip_address("169.254.170.23"),  # AWS EKS Pod Identity credentials
    ipaddress.ip_address("fd00:ec2::23"),  # the same over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud (classic)
}
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def clock() -> datetime:
    """Now. Tests replace it (monkeypatch billing.keys.clock) to move time without sleeping."""
    return timezone.now()


def _setting(name: str, default: Any) -> Any:
    # Only for values that may be unset (the env key variables, KEY_TEST_MODELS); the KEY_*
    # tunables are read from the environment, with their defaults, in chatsite/settings.py.
    return getattr(settings, name, default)


# --------------------------------------------------------------------------------------------
# What the turn gets and gives back
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyLease:
    """A key handed out for one provider call. The secret is decrypted into this object only
    for the call's duration; repr never shows it."""

    id: uuid.UUID
    name: str
    provider: str
    base_url: str
    secret: str = field(repr=False)
    # Which secret this is (ProviderKey.secret_version); give it back to key_report_failure.
    version: int = 0


@dataclass(frozen=True)
class KeyFailureOutcome:
    """What the failover loop does next: try another key (after `backoff` seconds), or stop
    because the failure is the request's own (a 400)."""

    retry: bool
    backoff: float = 0.0


@dataclass(frozen=True)
class KeyTestResult:
    ok: bool
    error_kind: str = ""
    detail: str = ""  # safe to show: never the secret
    # The test left the key refused (invalid) and in use: what keys_needing_attention warns of.
    needs_new_secret: bool = False


# --------------------------------------------------------------------------------------------
# Validation (every service calls these; admin forms call them for field-level errors)
# --------------------------------------------------------------------------------------------


def _invalid(field_name: str, message: str) -> ValidationError:
    return ValidationError({field_name: [message]})


def provider_validate(provider: Any) -> str:
    if provider not in KEY_PROVIDERS:
        raise _invalid(
            "provider", _("Unknown provider: choose one of %(choices)s.") % {"choices": ", ".join(KEY_PROVIDERS)}
        )
    return provider


def name_validate(name: Any, *, exclude_id: uuid.UUID | None = None) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not name:
        raise _invalid("name", _("A key needs a name."))
    if len(name) > _NAME_MAX_LENGTH or not name.isprintable():
        raise _invalid("name", _("A key name is at most %(n)d printable characters.") % {"n": _NAME_MAX_LENGTH})
    taken = ProviderKey.objects.filter(name__iexact=name)
    if exclude_id is not None:
        taken = taken.exclude(pk=exclude_id)
    if taken.exists():
        raise _invalid("name", _("A provider key with this name already exists."))
    return name


def secret_validate(secret: Any) -> str:
    """The secret, stripped. Messages never repeat any of it."""
    secret = secret.strip() if isinstance(secret, str) else ""
    if not secret:
        raise _invalid("secret", _("The secret is empty."))
    if len(secret) > _SECRET_MAX_LENGTH:
        raise _invalid("secret", _("The secret is too long."))
    # It travels in an HTTP header: printable ASCII with no spaces, or the call would fail later.
    if not all("!" <= ch <= "~" for ch in secret):
        raise _invalid("secret", _("The secret may hold only printable ASCII characters without spaces."))
    return secret


def priority_validate(priority: Any) -> int:
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]
    ):
        raise _invalid(
            "priority",
            _("Priority is a whole number between %(lo)d and %(hi)d.")
            % {"lo": PRIORITY_RANGE[0], "hi": PRIORITY_RANGE[1]},
        )
    return priority


def _always_refused() -> str:
    # Ends a metadata refusal, so the administrator does not look for a setting that would lift it.
    return " " + _("Cloud metadata addresses are always refused.")


def _address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[str, bool] | None:
    """Why a base URL may not point at `address` and whether ALLOW_PRIVATE_BASE_URLS lifts
    that; None when it may."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address wrapped in IPv6 (mapped, NAT64, 6to4, Teredo) is judged as itself.
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        elif address in _NAT64:
            address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        elif address.sixtofour is not None:
            address = address.sixtofour
        elif address.teredo is not None:
            address = address.teredo[1]
    if address.is_loopback:
        return None  # a model server on this machine (Ollama, llama.cpp, vLLM)
    if address.is_unspecified or address.is_multicast or (address.is_reserved and not address.is_private):
        return _("%(addr)s is not an address a model server can have.") % {"addr": address}, False
    if address in _METADATA_ADDRESSES:
        return _("%(addr)s is a cloud metadata address.") % {"addr": address} + _always_refused(), False
    if address.is_link_local:
        return _("%(addr)s is a link-local address.") % {"addr": address}, True
    if address.is_private or address in _CGNAT:
        return _("%(addr)s is a private network address.") % {"addr": address}, True
    return None


def base_url_validate(url: Any, *, allow_private: bool | None = None) -> str:
    """The base URL, normalised ("" for none). http/https only, no credentials, and a host that
    is (or resolves only to) a public address or loopback; link-local and private addresses only
    with ALLOW_PRIVATE_BASE_URLS=true; cloud metadata names and addresses never. A name that does
    not resolve is refused."""
    if url is None:
        return ""
    if not isinstance(url, str):
        raise _invalid("base_url", _("The base URL must be text."))
    url = url.strip()
    if not url:
        return ""
    if allow_private is None:
        allow_private = settings.ALLOW_PRIVATE_BASE_URLS
    hint = " " + _("Set ALLOW_PRIVATE_BASE_URLS=true to allow it.")
    if len(url) > _URL_MAX_LENGTH or not url.isprintable() or any(ch.isspace() for ch in url):
        raise _invalid("base_url", _("The base URL is too long or holds spaces or control characters."))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid("base_url", _("The base URL cannot be parsed.")) from None
    if parts.scheme.lower() not in {"http", "https"}:
        raise _invalid("base_url", _("The base URL must start with http:// or https://."))
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise _invalid("base_url", _("The base URL must not hold credentials; the key is the credential."))
    if parts.fragment or parts.query:
        raise _invalid("base_url", _("The base URL must not have a query or a fragment."))
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise _invalid("base_url", _("The base URL has no host."))
    if host in _METADATA_HOSTS:
        raise _invalid("base_url", _("%(host)s is a cloud metadata service.") % {"host": host} + _always_refused())
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = {literal}
    else:
        try:
            infos = socket.getaddrinfo(
                host, port or (443 if parts.scheme.lower() == "https" else 80), proto=socket.IPPROTO_TCP
            )
            # getaddrinfo also decodes odd spellings (2852039166, 0xa9fea9fe, 169.254.43518): every
            # address it yields is checked, so none of them slips past as a "name".
            addresses = {ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos}
        except (OSError, UnicodeError):
            if host != "localhost" and not host.endswith(".localhost"):
                raise _invalid("base_url", _("The host %(host)s cannot be resolved.") % {"host": host}) from None
            addresses = {ipaddress.ip_address("127.0.0.1")}  # RFC 6761: localhost is loopback
    for address in sorted(addresses, key=str):
        found = _address_problem(address)
        if found is None or (found[1] and allow_private):
            continue
        problem, liftable = found
        if literal is None:
            problem = _("%(host)s resolves to a refused address: %(problem)s") % {"host": host, "problem": problem}
        raise _invalid("base_url", problem + (hint if liftable else ""))
    return parts.geturl().rstrip("/")


def _authorize(actor, permission: str) -> None:
    """None is the system or the operator at the shell (management commands, startup import).
    A user must hold the permission; entry points check first, this is the second lock."""
    if actor is None:
        return
    if not (getattr(actor, "is_active", False) and getattr(actor, "is_staff", False) and actor.has_perm(permission)):
        raise PermissionDenied(_("You may not manage provider keys."))


def _last4(secret: str) -> str:
    return secret[-4:] if len(secret) >= _LAST4_MIN_LENGTH else ""


def _audit(action: str, key: ProviderKey, actor=None, **data: Any) -> None:
    audit_record(
        action=f"provider_key.{action}",
        actor=actor,
        target=key,
        data={"name": key.name, "provider": key.provider, **data},
    )


# --------------------------------------------------------------------------------------------
# The vault: services that change keys
# --------------------------------------------------------------------------------------------


def key_add(
    *,
    provider: str,
    name: str,
    secret: str,
    base_url: str = "",
    priority: int = 100,
    actor=None,
    origin: str = ProviderKey.Origin.MANUAL,
) -> ProviderKey:
    """Store a new enabled key. Raises ValidationError (field -> messages) or PermissionDenied;
    nothing is written then."""
    _authorize(actor, "billing.add_providerkey")
    if isinstance(base_url, str) and base_url.strip():
        # Before validating it: checking a URL resolves its host, which is already a reach into
        # the network that only base-URL holders may make.
        _authorize(actor, "billing.set_providerkey_base_url")
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    for field_name, check, value in (
        ("provider", provider_validate, provider),
        ("name", name_validate, name),
        ("secret", secret_validate, secret),
        ("priority", priority_validate, priority),
        ("base_url", base_url_validate, base_url),
    ):
        try:
            cleaned[field_name] = check(value)
        except ValidationError as exc:
            errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    secret = cleaned.pop("secret")
    key = ProviderKey(**cleaned, secret_encrypted=secret_encrypt(secret), secret_last4=_last4(secret), origin=origin)
    key.full_clean()
    try:
        with transaction.atomic():
            key.save(force_insert=True)
            _audit("add", key, actor, priority=key.priority, base_url=bool(key.base_url), origin=origin)
    except IntegrityError:
        # Two adds racing for one name: the loser gets the same answer as a sequential duplicate.
        raise _invalid("name", _("A provider key with this name already exists.")) from None
    logger.info("provider key %s added (%s)", key.name, key.provider)
    return key


def secret_needed_for_new_base_url() -> str:
    return _(
        "Give the secret again to change the base URL: the key's secret is sent to that address, and it "
        "is never sent where it was not given for."
    )


def key_update(
    *,
    key_id: uuid.UUID,
    actor=None,
    name: str | None = None,
    base_url: str | None = None,
    priority: int | None = None,
    secret: str | None = None,
) -> ProviderKey:
    """Change what was given (None = keep). A new secret makes the key healthy again: whatever
    made it invalid or cool down belonged to the old one.

    A person (an `actor`) changes the base URL only with the secret given again: every call sends
    the secret to the base URL, so moving it elsewhere would read the write-only secret back (at
    the key's Test, or anyone's next chat). The operator at the shell (no actor) holds the
    encryption keys and the database, from whom the secret is no secret."""
    _authorize(actor, "billing.change_providerkey")
    with transaction.atomic():
        key = ProviderKey.objects.select_for_update().get(pk=key_id)
        if base_url is not None and (not isinstance(base_url, str) or base_url.strip().rstrip("/") != key.base_url):
            _authorize(actor, "billing.set_providerkey_base_url")  # before resolving the host
        errors: dict[str, list[str]] = {}
        changed: list[str] = []
        for field_name, check, value in (
            ("name", lambda v: name_validate(v, exclude_id=key.pk), name),
            ("priority", priority_validate, priority),
            ("base_url", base_url_validate, base_url),
            ("secret", secret_validate, secret),
        ):
            if value is None:
                continue
            try:
                value = check(value)
            except ValidationError as exc:
                errors.update(exc.message_dict)
                continue
            if field_name == "secret":
                key.secret_encrypted, key.secret_last4 = secret_encrypt(value), _last4(value)
                key.secret_version += 1
                key.health, key.cooldown_until, key.consecutive_failures = Health.HEALTHY, None, 0
                changed += [
                    "secret_encrypted",
                    "secret_last4",
                    "secret_version",
                    "health",
                    "cooldown_until",
                    "consecutive_failures",
                ]
            elif getattr(key, field_name) != value:
                setattr(key, field_name, value)
                changed.append(field_name)
        if "base_url" in changed and secret is None and actor is not None:
            errors["secret"] = [secret_needed_for_new_base_url()]
        if errors:
            raise ValidationError(errors)
        if changed:
            key.full_clean()
            key.save(update_fields=changed)
            shown = sorted(
                {"secret" if f.startswith("secret") else f for f in changed}
                - {"health", "cooldown_until", "consecutive_failures"}
            )
            _audit("update", key, actor, fields=shown)
    return key


def key_set_state(*, key_id: uuid.UUID, state: str, actor=None) -> ProviderKey:
    """enabled, draining (no new calls; replies in flight keep their lease and finish) or
    disabled. Idempotent: setting the state a key already has writes nothing."""
    _authorize(actor, "billing.change_providerkey")
    if state not in State.values:
        raise _invalid("state", _("Unknown key state."))
    with transaction.atomic():
        key = ProviderKey.objects.select_for_update().get(pk=key_id)
        if key.state == state:
            return key
        previous, key.state, key.state_changed_at = key.state, state, clock()
        key.save(update_fields=["state", "state_changed_at"])
        _audit("state", key, actor, previous=previous, state=state)
    logger.info("provider key %s is now %s", key.name, state)
    return key


def key_set_draining(*, key_id: uuid.UUID, actor=None) -> ProviderKey:
    return key_set_state(key_id=key_id, state=State.DRAINING, actor=actor)


def key_enable(*, key_id: uuid.UUID, actor=None) -> ProviderKey:
    return key_set_state(key_id=key_id, state=State.ENABLED, actor=actor)


def key_disable(*, key_id: uuid.UUID | None = None, name: str | None = None, actor=None) -> ProviderKey:
    """Disable by id or by exact name (the command's way). ValidationError for an unknown name."""
    if key_id is None:
        key_id = keys_by_name(name=name or "").pk
    return key_set_state(key_id=key_id, state=State.DISABLED, actor=actor)


def key_delete(*, key_id: uuid.UUID, actor=None) -> None:
    """Usage records keep their numbers; their key link becomes empty (SET_NULL)."""
    _authorize(actor, "billing.delete_providerkey")
    with transaction.atomic():
        key = ProviderKey.objects.select_for_update().get(pk=key_id)
        _audit("delete", key, actor)
        key.delete()


def keys_finish_draining(*, now: datetime | None = None) -> int:
    """Disable keys that have drained long enough for every reply that could hold their lease
    to have ended (the longest a reply may run, plus a margin). Returns how many."""
    now = now or clock()
    grace = timedelta(seconds=_setting("KEY_DRAIN_SECONDS", settings.LLM_TOTAL_TIMEOUT + 60))
    done = 0
    for key_id in ProviderKey.objects.filter(state=State.DRAINING, state_changed_at__lte=now - grace).values_list(
        "pk", flat=True
    ):
        key_set_state(key_id=key_id, state=State.DISABLED)
        done += 1
    return done


def key_rotate_encryption(*, actor=None) -> int:
    """Re-encrypt every stored secret with the first FIELD_ENCRYPTION_KEYS entry, all or none
    (one transaction), so the other entries can be retired. Raises SecretUndecryptable naming
    the key no configured entry can open. Returns how many secrets were re-encrypted."""
    _authorize(actor, "billing.change_providerkey")
    count = 0
    with transaction.atomic():
        for key in ProviderKey.objects.select_for_update().order_by("pk").only("pk", "name", "secret_encrypted"):
            try:
                token = secret_reencrypt(key.secret_encrypted)
            except SecretUndecryptable:
                raise SecretUndecryptable(
                    f"provider key {key.name!r} cannot be decrypted with any configured key"
                ) from None
            ProviderKey.objects.filter(pk=key.pk).update(secret_encrypted=token)
            count += 1
        audit_record(
            action="provider_key.reencrypt", actor=actor, target_type="billing.providerkey", data={"count": count}
        )
    logger.info("re-encrypted %d provider key secrets with the first encryption key", count)
    return count


# --------------------------------------------------------------------------------------------
# Keys from the environment
# --------------------------------------------------------------------------------------------

_ENV_KEYS = (("openai", "OPENAI_API_KEY", "OPENAI_BASE_URL"), ("anthropic", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"))
_env_import_done = False


def _env_import_one(provider: str, secret: str, base_url: str) -> str:
    with transaction.atomic():
        existing = list(
            ProviderKey.objects.select_for_update()
            .filter(provider=provider, origin=ProviderKey.Origin.ENV)
            .order_by("created_at")
        )
        # Only the newest env key stands for the variable's current value. An older one holding
        # the same secret was rotated away from: the variable going back to it is a new rotation
        # (a fresh key, the newer one drained), or the site would keep using the secret the
        # variable no longer names.
        current = existing[-1] if existing else None
        if current is not None and current.base_url == base_url:
            try:
                same = hmac.compare_digest(secret_decrypt(current.secret_encrypted).encode(), secret.encode())
            except SecretUndecryptable:
                same = False
            if same:
                # Already imported. Whatever state an administrator put it in since, stands.
                return "unchanged"
        base = f"env-{provider}"
        taken = set(ProviderKey.objects.filter(name__istartswith=base).values_list("name", flat=True))
        name = next(n for n in [base, *(f"{base}-{i}" for i in range(2, 10_000))] if n not in taken)
        key_add(provider=provider, name=name, secret=secret, base_url=base_url, origin=ProviderKey.Origin.ENV)
        # The variable changed: the previous env keys drain (replies in flight finish) and are
        # disabled by keys_finish_draining later.
        for old in existing:
            if old.state == State.ENABLED:
                key_set_draining(key_id=old.pk)
        return "rotated" if existing else "added"


def keys_import_from_env() -> dict[str, str]:
    """Import OPENAI_API_KEY / ANTHROPIC_API_KEY (with their *_BASE_URL). Idempotent: the same
    secret and base URL add nothing; a changed one (going back to an earlier one included) adds
    a new key and drains the old. Returns
    {provider: "added" | "rotated" | "unchanged" | "refused: <why>"} for each variable set."""
    results: dict[str, str] = {}
    for provider, secret_name, url_name in _ENV_KEYS:
        raw = _setting(secret_name, "") or ""
        if not raw.strip():
            continue
        try:
            secret = secret_validate(raw)
            base_url = base_url_validate(_setting(url_name, "") or "")
            try:
                results[provider] = _env_import_one(provider, secret, base_url)
            except ValidationError as exc:
                if "name" not in exc.message_dict:
                    raise
                # Another process imported it at the same moment: now it is there.
                results[provider] = _env_import_one(provider, secret, base_url)
        except ValidationError as exc:
            why = "; ".join(m for ms in exc.message_dict.values() for m in ms)
            logger.error("%s not imported: %s", secret_name, why)
            results[provider] = f"refused: {why}"
    return results


def keys_ensure_imported() -> None:
    """Once per process, on first use (never at import time, which may precede migrate)."""
    global _env_import_done
    if _env_import_done:
        return
    if any((_setting(secret_name, "") or "").strip() for _, secret_name, _ in _ENV_KEYS):
        keys_import_from_env()
    _env_import_done = True


# --------------------------------------------------------------------------------------------
# The state machine the turn drives
# --------------------------------------------------------------------------------------------


def _usable(now: datetime):
    return (
        ProviderKey.objects.filter(state=State.ENABLED)
        .exclude(health=Health.INVALID)
        .filter(Q(cooldown_until__isnull=True) | Q(cooldown_until__lte=now))
    )


def _spread_index(provider: str, priority: int, n: int) -> int:
    """Round-robin over n equal keys with a counter in the shared cache, so several processes
    together still spread calls evenly."""
    if n == 1:
        return 0
    counter = f"billing:keys:rr:{provider}:{priority}"
    try:
        cache.add(counter, 0, timeout=None)
        value = cache.incr(counter)
    except Exception:  # noqa: BLE001 - a cache hiccup must not stop a turn; fall back to chance
        logger.warning("key spread counter unavailable; choosing at random")
        return random.randrange(n)  # noqa: S311 - load spreading, not security
    return value % n


def key_choose(*, provider: str, exclude: Collection[uuid.UUID] = ()) -> KeyLease | None:
    """The healthy enabled key of highest priority for `provider` not in `exclude` (spread across
    equal priorities); None when no key can serve. Cooling-down, failing (until their cooldown
    ends), invalid, draining and disabled keys are skipped."""
    keys_ensure_imported()
    rows = list(
        _usable(clock())
        .filter(provider=provider)
        .exclude(pk__in=list(exclude))
        .order_by("-priority", "created_at", "pk")
        .values("id", "name", "provider", "base_url", "secret_encrypted", "secret_version", "priority", "health")
    )
    while rows:
        top = [r for r in rows if r["priority"] == rows[0]["priority"]]
        # A key whose cooldown has ended (rate limit over, or circuit half-open) takes its turn
        # in the spread like a healthy one: only a success with it clears its state, so keeping
        # it behind its healthy peers would leave it out until the periodic health check. A
        # failed trial reopens it at once, and the turn moves on to the next key.
        row = top[_spread_index(provider, top[0]["priority"], len(top))]
        try:
            secret = secret_decrypt(row["secret_encrypted"])
        except SecretUndecryptable:
            logger.error("provider key %s cannot be decrypted with FIELD_ENCRYPTION_KEYS; skipped", row["name"])
            rows.remove(row)
            continue
        return KeyLease(
            id=row["id"],
            name=row["name"],
            provider=row["provider"],
            base_url=row["base_url"],
            secret=secret,
            version=row["secret_version"],
        )
    return None


def key_report_success(*, key_id: uuid.UUID) -> None:
    """One conditional UPDATE (this runs once per turn): failures reset, an open circuit closes,
    an expired rate-limit cooldown clears. A cooldown another call set that has not ended yet
    stays; an invalid key stays invalid."""
    now = clock()
    ProviderKey.objects.filter(pk=key_id).exclude(health=Health.INVALID).update(
        last_used_at=now,
        consecutive_failures=0,
        # Every right-hand side sees the row as it was before this UPDATE.
        health=Case(
            When(health=Health.FAILING, then=Value(Health.HEALTHY)),
            When(cooldown_until__isnull=True, then=Value(Health.HEALTHY)),
            When(cooldown_until__lte=now, then=Value(Health.HEALTHY)),
            default=F("health"),
        ),
        cooldown_until=Case(
            When(health=Health.FAILING, then=Value(None)),
            When(cooldown_until__lte=now, then=Value(None)),
            default=F("cooldown_until"),
        ),
    )


def _cooldown(seconds: float) -> timedelta:
    cap = settings.KEY_MAX_COOLDOWN
    return timedelta(seconds=min(max(seconds, 1.0), cap))


def key_report_failure(
    *, key_id: uuid.UUID, kind: str, retry_after: float | None = None, attempt: int = 1, version: int | None = None
) -> KeyFailureOutcome:
    """Record how a call with this key failed and say what the turn does next. `kind` is a
    conversations.llm.base.ErrorKind value; `attempt` (1, 2, …) is the turn's attempt number and
    only lengthens the backoff; `version` is the lease's, so a refusal of a secret that has since
    been replaced does not mark the new one invalid."""
    kind = ErrorKind(kind)  # ValueError for a kind nobody defined
    now = clock()
    if kind in (ErrorKind.BAD_REQUEST, ErrorKind.CONTEXT_TOO_LONG, ErrorKind.MODEL_NOT_FOUND):
        # The provider understood the key, and the key is fine. It refused the request, which no
        # other key would take either; or (MODEL_NOT_FOUND) its server does not have the model:
        # one "openai" provider covers the official API and local servers, each serving its own
        # models, and another key may have it.
        ProviderKey.objects.filter(pk=key_id).update(last_used_at=now)
        return KeyFailureOutcome(retry=kind == ErrorKind.MODEL_NOT_FOUND)
    with transaction.atomic():
        key = ProviderKey.objects.select_for_update().filter(pk=key_id).first()
        if key is None:  # deleted while the call ran
            return KeyFailureOutcome(retry=True)
        was = key.health
        key.last_error_kind, key.last_used_at = kind.value, now
        fields = ["last_error_kind", "last_used_at"]
        backoff = 0.0
        if kind == ErrorKind.AUTH and version is not None and version != key.secret_version:
            logger.info("provider key %s: refusal of its previous secret ignored", key.name)
        elif kind == ErrorKind.AUTH:
            key.consecutive_failures += 1
            key.health, key.cooldown_until = Health.INVALID, None
            fields += ["consecutive_failures", "health", "cooldown_until"]
        elif kind == ErrorKind.RATE_LIMITED:
            seconds = retry_after if retry_after and retry_after > 0 else settings.KEY_RATE_LIMIT_COOLDOWN
            until = now + _cooldown(seconds)
            if was != Health.INVALID:
                key.cooldown_until = max(until, key.cooldown_until) if key.cooldown_until else until
                if was != Health.FAILING:  # an open circuit stays open, only longer
                    key.health = Health.COOLING_DOWN
                fields += ["health", "cooldown_until"]
        else:  # unavailable, timeout: the circuit breaker counts these
            key.consecutive_failures += 1
            fields.append("consecutive_failures")
            threshold = settings.KEY_FAILURE_THRESHOLD
            if was != Health.INVALID and key.consecutive_failures >= threshold:
                # Each failure past the threshold doubles the time out (capped).
                base = settings.KEY_CIRCUIT_COOLDOWN
                key.health = Health.FAILING
                key.cooldown_until = now + _cooldown(base * 2 ** min(key.consecutive_failures - threshold, 16))
                fields += ["health", "cooldown_until"]
            base_backoff = settings.KEY_RETRY_BACKOFF
            # Jitter keeps several turns that failed together from retrying in lockstep.
            backoff = min(base_backoff * 2 ** max(attempt - 1, 0), 4 * base_backoff) * random.uniform(0.5, 1.0)  # noqa: S311
        key.save(update_fields=fields)
        if key.health == Health.INVALID and was != Health.INVALID:
            _audit("invalid", key, error_kind=kind.value)
            logger.warning("provider key %s was refused by %s (%s): marked invalid", key.name, key.provider, kind.value)
        elif key.health == Health.FAILING and was != Health.FAILING:
            _audit(
                "circuit_open",
                key,
                error_kind=kind.value,
                consecutive_failures=key.consecutive_failures,
                until=key.cooldown_until.isoformat(),
            )
            logger.warning(
                "provider key %s failed %d times in a row: out until %s",
                key.name,
                key.consecutive_failures,
                key.cooldown_until.isoformat(),
            )
        else:
            logger.info("provider key %s: %s", key.name, kind.value)
    return KeyFailureOutcome(retry=True, backoff=backoff)


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------


def providers_with_usable_keys() -> set[str]:
    """Providers a model may be offered for: an enabled key that is not invalid (one cooling
    down counts: it is back in seconds, and the picker should not flicker). "demo" needs no key."""
    keys_ensure_imported()
    found = ProviderKey.objects.filter(state=State.ENABLED).exclude(health=Health.INVALID)
    return {"demo", *found.values_list("provider", flat=True).distinct()}


def keys_by_name(*, name: str) -> ProviderKey:
    """The key with exactly this name; ValidationError naming it when there is none."""
    found = ProviderKey.objects.defer("secret_encrypted").filter(name=name.strip()).first()
    if found is None:
        raise _invalid("name", _("No provider key is named %(name)s.") % {"name": name.strip()})
    return found


def keys_needing_attention() -> list[ProviderKey]:
    """Enabled or draining keys an administrator should look at: invalid ones, and ones taken
    out for a cooldown (rate limited or failing) that has not ended."""
    now = clock()
    return list(
        ProviderKey.objects.exclude(state=State.DISABLED)
        .filter(Q(health=Health.INVALID) | Q(cooldown_until__gt=now))
        .defer("secret_encrypted")
        .order_by("provider", "name")
    )


# --------------------------------------------------------------------------------------------
# Testing a key for real
# --------------------------------------------------------------------------------------------

_TEST_MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest"}


def _test_models(provider: str) -> list[str]:
    """The provider's priced models, cheapest first (what this deployment actually uses), else a
    small default. Which of them a key serves is for the key to say (_served_model): one
    provider name covers the official API and any OpenAI-compatible server."""
    from billing.prices import prices_available

    priced = sorted(
        (p for p in prices_available() if p.provider == provider),
        key=lambda p: (p.input_per_million + p.output_per_million, p.model),
    )
    return [p.model for p in priced] or [_setting("KEY_TEST_MODELS", _TEST_MODELS)[provider]]


async def _served_model(adapter, lease: KeyLease, candidates: list[str]) -> str | None:
    """The first candidate the key lists (GET /v1/models: no tokens), or None when it lists none
    of them; its failure is the test's verdict (a 429, an outage, a timeout). Where the list
    itself is refused or missing (a restricted OpenAI key without the Models permission answers
    403; some compatible servers have no /v1/models) the cheapest candidate is tried instead,
    so a key that can chat is never marked invalid for being unable to list."""
    from conversations.llm.base import ProviderError

    try:
        served = set(await adapter.ping(key=lease))
    except ProviderError as exc:
        if exc.kind not in (ErrorKind.AUTH, ErrorKind.BAD_REQUEST, ErrorKind.MODEL_NOT_FOUND):
            raise
        return candidates[0]
    return next((model for model in candidates if model in served), None)


def _scrub(text: str, secret: str) -> str:
    # Adapters promise messages without secrets; this is the net under that promise.
    text = text.replace(secret, "***") if secret else text
    return text[:300]


@dataclass
class _ProbeCall:
    """What a key test sent, filled in as it goes, so a failure still knows what to record."""

    model: str = ""  # the model of the one-token call; "" until it is sent (or when none is served)
    usage: Any = None  # the provider's Usage, if it reported one
    started: float = 0.0  # time.monotonic() when the one-token call was sent: its latency


async def _probe(lease: KeyLease, candidates: list[str], timeout: float, call: _ProbeCall) -> None:
    """Ask the key which candidate model it serves, then stream a one-token reply from it to
    completion. When the key answers but serves none of the candidates, that answer is the test:
    the key works, and there is nothing priced to chat with."""
    from conversations import llm
    from conversations.llm.base import ChatMessage, ChatRequest, Usage

    adapter = llm.get_adapter(lease.provider)
    async with asyncio.timeout(timeout):
        model = await _served_model(adapter, lease, candidates)
        if model is None:
            return
        call.model, call.started = model, time.monotonic()
        request = ChatRequest(model=model, messages=[ChatMessage(role="user", content="ping")], max_tokens=1)
        async for event in adapter.stream(request, key=lease):
            if isinstance(event, Usage):
                call.usage = event


def _test_usage_record(*, key: ProviderKey, model: str, usage, ok: bool, error_kind: str, latency_ms: int) -> None:
    """A key test is a provider call like any other: it goes in the ledger (no user), priced."""
    from billing import ledger, prices

    model_id = f"{key.provider}:{model}"
    try:
        price = prices.price_for(model_id=model_id)
        tokens = {
            "input_tokens": usage.input_tokens if usage else 0,
            "output_tokens": usage.output_tokens if usage else 0,
            "cached_tokens": usage.cached_tokens if usage else 0,
        }
        cost = prices.cost_of(price=price, **tokens) if price else Decimal(0)
        ledger.usage_record(
            user=None,
            conversation_id=None,
            message_id=None,
            attempt=1,
            provider=key.provider,
            model=model,  # the ledger keeps the provider apart: the model's own name
            key_id=key.pk,
            cost=cost,
            estimated=usage is None or not usage.final,
            ttft_ms=None,
            latency_ms=latency_ms,
            outcome="ok" if ok else "error",
            error_kind=error_kind,
            **tokens,
        )
    except Exception as exc:  # noqa: BLE001 - the test's verdict stands even if its bookkeeping fails
        logger.error("usage of the test of provider key %s not recorded: %s", key.name, type(exc).__name__)


def key_test(*, key_id: uuid.UUID, actor=None) -> KeyTestResult:
    """A cheap real call with this key: list its models, then one output token from the cheapest
    priced model it serves (_probe). Success makes it healthy again, even from invalid (an administrator asked, and the provider said yes); a failure is reported to the
    state machine like any call's. Audited."""
    from conversations.llm.base import ProviderError

    _authorize(actor, "billing.change_providerkey")
    key = ProviderKey.objects.get(pk=key_id)
    result: KeyTestResult
    secret, call = "", _ProbeCall()
    retry_after: float | None = None  # the provider's Retry-After, for the cooldown like a turn's
    try:
        if key.base_url:
            base_url_validate(key.base_url)  # names can be re-pointed since the key was saved
        secret = secret_decrypt(key.secret_encrypted)
        lease = KeyLease(
            id=key.pk,
            name=key.name,
            provider=key.provider,
            base_url=key.base_url,
            secret=secret,
            version=key.secret_version,
        )
        candidates = _test_models(key.provider)
        async_to_sync(_probe)(lease, candidates, settings.KEY_TEST_TIMEOUT, call)
    except ValidationError as exc:
        result = KeyTestResult(ok=False, error_kind="base_url", detail=" ".join(exc.messages))
    except SecretUndecryptable as exc:
        result = KeyTestResult(ok=False, error_kind="undecryptable", detail=str(exc))
    except ProviderError as exc:
        result = KeyTestResult(ok=False, error_kind=str(exc.kind), detail=_scrub(exc.message or "", secret))
        retry_after = exc.retry_after
    except TimeoutError:
        result = KeyTestResult(ok=False, error_kind=ErrorKind.TIMEOUT.value, detail=_("No answer in time."))
    except Exception as exc:  # noqa: BLE001 - any adapter failure is a failed test, shown by type only
        logger.warning("testing provider key %s failed: %s", key.name, type(exc).__name__)
        result = KeyTestResult(ok=False, error_kind=ErrorKind.UNAVAILABLE.value, detail=type(exc).__name__)
    else:
        result = KeyTestResult(ok=True)
    if call.model:
        # Only the chat call is a priced call for the ledger; listing models costs nothing.
        latency_ms = int((time.monotonic() - call.started) * 1000)
        _test_usage_record(
            key=key, model=call.model, usage=call.usage, ok=result.ok, error_kind=result.error_kind, latency_ms=latency_ms
        )
    if result.ok:
        ProviderKey.objects.filter(pk=key.pk).update(
            health=Health.HEALTHY, cooldown_until=None, consecutive_failures=0, last_used_at=clock()
        )
    elif result.error_kind in ErrorKind._value2member_map_:
        key_report_failure(
            key_id=key.pk, kind=result.error_kind, retry_after=retry_after, version=key.secret_version
        )
        refused = ProviderKey.objects.filter(pk=key.pk, health=Health.INVALID).exclude(state=State.DISABLED)
        result = replace(result, needs_new_secret=refused.exists())
    _audit("test", key, actor, ok=result.ok, error_kind=result.error_kind)
    return result


def keys_check_health() -> dict[str, int]:
    """The periodic check: test every enabled key that may be called (invalid keys are never
    retried on their own; rate-limited ones are left to cool down), then disable keys that have
    finished draining. Returns counts."""
    now = clock()
    candidates = (
        ProviderKey.objects.filter(state=State.ENABLED)
        .exclude(health=Health.INVALID)
        .exclude(health=Health.COOLING_DOWN, cooldown_until__gt=now)
        .values_list("pk", flat=True)
    )
    counts = {"ok": 0, "failed": 0}
    for key_id in list(candidates):
        counts["ok" if key_test(key_id=key_id).ok else "failed"] += 1
    counts["disabled_after_draining"] = keys_finish_draining()
    return counts
