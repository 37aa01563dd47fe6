"""Data rights: export and erasure. (Issue 6 owns this.) INTERFACE STUB: signatures agreed with
the admin and the profile pages."""

from __future__ import annotations

from .models import DataExport, ErasureRequest


def export_request(*, user) -> DataExport:
    """Start (or return the already running) export of `user`'s data; queued on commit."""
    raise NotImplementedError


def erasure_preview(*, user) -> dict[str, int]:
    """What erasing `user` would remove, as counts by kind (for the confirmation pages)."""
    raise NotImplementedError


def erasure_request(*, user, requested_by=None) -> ErasureRequest:
    """Start (idempotently) the erasure of `user`; queued on commit."""
    raise NotImplementedError
