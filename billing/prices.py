"""Model prices. (Issue 4 owns this.) INTERFACE STUB: signatures agreed with the turn."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal


@dataclass(frozen=True)
class PriceQuote:
    provider: str
    model: str
    label: str
    input_per_million: Decimal
    output_per_million: Decimal
    cached_input_per_million: Decimal | None
    context_window: int
    max_output_tokens: int

    @property
    def model_id(self) -> str:
        return f"{self.provider}:{self.model}"


def price_for(*, model_id: str, at: datetime | None = None) -> PriceQuote | None:
    """The price in force at `at` (default now) for "provider:model"; None when unpriced."""
    raise NotImplementedError


def cost_of(*, price: PriceQuote, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
    """Exact Decimal cost in USD, quantized to the ledger's precision."""
    raise NotImplementedError


def prices_available() -> list[PriceQuote]:
    """Every enabled model with a price in force now (the demo model included)."""
    raise NotImplementedError
