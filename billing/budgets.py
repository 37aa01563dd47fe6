"""Budgets and reservations. (Issue 4 owns this.) INTERFACE STUB: signatures agreed with the turn."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal


@dataclass
class BudgetExceeded(Exception):
    scope: str  # "user" | "team"
    name: str  # username or team name
    period: str  # day | week | month | total
    limit: Decimal
    spent: Decimal


def budget_reserve(*, user, amount: Decimal) -> uuid.UUID:
    """Atomically hold `amount` on every budget covering `user`; raises BudgetExceeded naming the
    first budget that cannot take it (and holds nothing then). Returns the reservation id."""
    raise NotImplementedError


def budget_settle(*, reservation_id: uuid.UUID, actual: Decimal) -> None:
    """Release the hold and add `actual` to each budget's spend. Idempotent."""
    raise NotImplementedError
