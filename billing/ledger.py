"""The usage ledger and its daily rollup. (Issue 4 owns this.) INTERFACE STUB."""

from __future__ import annotations

import uuid
from decimal import Decimal


def usage_record(
    *,
    user,
    conversation_id: uuid.UUID | None,
    message_id: uuid.UUID | None,
    attempt: int,
    provider: str,
    model: str,
    key_id: uuid.UUID | None,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    cost: Decimal,
    estimated: bool,
    ttft_ms: int | None,
    latency_ms: int | None,
    outcome: str,
    error_kind: str = "",
):
    """Append one ledger row (idempotent on message_id+attempt) and upsert the daily rollup in the
    same transaction. Returns the UsageRecord."""
    raise NotImplementedError
