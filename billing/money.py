"""Money arithmetic: Decimal only, one rounding rule, one string form."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# The ledger's precision (billing.models.MONEY): 10 decimal places of a US dollar.
MONEY_PLACES = Decimal("0.0000000001")
ZERO = Decimal("0")


def quantize_money(value: Decimal) -> Decimal:
    """Round to the ledger's 10 decimal places, half up. Floats are refused: a float has already
    lost the exact value by the time it gets here."""
    if isinstance(value, float) or isinstance(value, bool):
        raise TypeError("money must be a Decimal or an int, never a float")
    value = Decimal(value)
    if not value.is_finite():
        raise ValueError("money must be a finite number")
    return value.quantize(MONEY_PLACES, rounding=ROUND_HALF_UP)


def parse_decimal(raw: object) -> Decimal | None:
    """A finite Decimal from user input (str/int/Decimal), or None when it is not a number.
    A negative zero ("-0", "-0.00") comes back as plain zero."""
    if isinstance(raw, float | bool):
        return None
    try:
        value = Decimal(str(raw).strip())
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite():
        return None
    # Decimal keeps the sign of zero through quantize and str(): "-0" passes every "not
    # negative" check and would then be shown and audited as "-0.00" / "-0E-10".
    return value.copy_abs() if value.is_zero() else value


def decimal_str(value: Decimal, *, min_places: int = 0) -> str:
    """A decimal as a person writes it: exact, no exponent, no zeros past the last digit, yet
    at least `min_places` decimals ("3.0000000000" -> "3.00" with 2, "0.800" -> "0.8" with 0,
    "1.23E-8" -> "0.0000000123")."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    frac = frac.ljust(min_places, "0")
    return f"{whole}.{frac}" if frac else whole


def money_str(value: Decimal) -> str:
    """The JSON/string form of an amount: exact, no exponent, at least two decimals
    ("0.00", "1.25", "0.0000123")."""
    return decimal_str(quantize_money(value), min_places=2)
