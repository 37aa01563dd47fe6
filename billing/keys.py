"""Provider keys: choosing one for a call, and hearing how the call went. (Issue 5 owns this.)

INTERFACE STUB: signatures agreed between the turn and the key vault; the bodies are the keys
work's to write."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass, field


@dataclass(frozen=True)
class KeyLease:
    """A key handed out for one provider call. The secret is decrypted into this object only
    for the call's duration; repr never shows it."""

    id: uuid.UUID
    name: str
    provider: str
    base_url: str
    secret: str = field(repr=False)


def key_choose(*, provider: str, exclude: Collection[uuid.UUID] = ()) -> KeyLease | None:
    """The healthy enabled key of highest priority for `provider` not in `exclude` (spread across
    equal priorities); None when no key can serve."""
    raise NotImplementedError


def key_report_success(*, key_id: uuid.UUID) -> None:
    raise NotImplementedError


def key_report_failure(*, key_id: uuid.UUID, kind: str, retry_after: float | None = None) -> None:
    """`kind` is a conversations.llm.base.ErrorKind value."""
    raise NotImplementedError


def providers_with_usable_keys() -> set[str]:
    raise NotImplementedError
