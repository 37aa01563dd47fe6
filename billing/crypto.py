"""Field encryption for secrets at rest (provider keys), with cryptography's MultiFernet.

FIELD_ENCRYPTION_KEYS is a list of Fernet keys: the first encrypts, every one decrypts, so an
operator rotates by putting a new key first, running `manage.py rotate_encryption_keys`, and
then dropping the old key. Unset, one key is derived from SECRET_KEY (with a warning): the
embedded default then works, but changing SECRET_KEY makes stored secrets unreadable. Set, the
derived key still decrypts (last, never encrypts), so moving off the embedded default is the
same rotation: set FIELD_ENCRYPTION_KEYS, run `rotate_encryption_keys`.

Nothing here logs or returns a key or a plaintext except `secret_decrypt`'s return value.
"""

from __future__ import annotations

import base64
import functools
import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

# Domain separation: the derived key is used for nothing but field encryption.
_DERIVATION_INFO = b"parley field encryption v1"

_cache: dict[tuple[str, ...], MultiFernet] = {}
_warned = False


class SecretUndecryptable(Exception):  # noqa: N818 - reads as a state, like InvalidToken
    """No configured encryption key opens this token (a key was retired too early, or
    SECRET_KEY changed while FIELD_ENCRYPTION_KEYS was unset). Carries no key material."""


def _derived_key() -> str:
    return _derived_key_for(settings.SECRET_KEY)


@functools.lru_cache(maxsize=4)
def _derived_key_for(secret: str) -> str:
    # Cached by secret: with FIELD_ENCRYPTION_KEYS set, every decryption (each turn's key
    # choice) appends this key as the fallback, and HKDF need not run each time.
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO)
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode())).decode()


def _configured_keys() -> tuple[str, ...]:
    global _warned
    keys = tuple(k.strip() for k in (settings.FIELD_ENCRYPTION_KEYS or []) if k and k.strip())
    if keys:
        # Secrets stored under the embedded default were encrypted with the derived key; keeping
        # it as the last, decrypt-only entry lets rotate_encryption_keys move them onto the
        # configured keys instead of stranding them (MultiFernet encrypts with the first only).
        # Appended after the operator's entries, so "entry N" in fernet()'s error still counts
        # their own list.
        derived = _derived_key()
        return keys if derived in keys else (*keys, derived)
    if not _warned and getattr(settings, "WARN_DEV_DEFAULTS", False):
        logger.warning(
            "FIELD_ENCRYPTION_KEYS is not set: provider keys are encrypted with a key derived from "
            "DJANGO_SECRET_KEY; set FIELD_ENCRYPTION_KEYS so changing the secret key keeps them readable"
        )
    _warned = True
    return (_derived_key(),)


def fernet() -> MultiFernet:
    """The MultiFernet for the keys configured now (memoised per key list, so tests that
    override settings get a fresh one)."""
    keys = _configured_keys()
    found = _cache.get(keys)
    if found is None:
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # Settings already stop every process on a malformed entry; this guards a value
                # changed at run time (tests). Never echo the key: name its position only.
                raise ImproperlyConfigured(
                    f"FIELD_ENCRYPTION_KEYS entry {position} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes; make one with Fernet.generate_key())"
                ) from None
        found = _cache[keys] = MultiFernet(fernets)
    return found


def secret_encrypt(plaintext: str) -> str:
    """A Fernet token (ASCII) of `plaintext` under the first key."""
    return fernet().encrypt(plaintext.encode()).decode("ascii")


def secret_decrypt(token: str) -> str:
    try:
        return fernet().decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        raise SecretUndecryptable("no configured FIELD_ENCRYPTION_KEYS entry can decrypt this secret") from None


def secret_reencrypt(token: str) -> str:
    """The same secret encrypted under the first key (MultiFernet.rotate), never exposing it."""
    try:
        return fernet().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise SecretUndecryptable("no configured FIELD_ENCRYPTION_KEYS entry can decrypt this secret") from None

