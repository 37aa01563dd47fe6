from decimal import ROUND_HALF_UP, Decimal

from django import template

from billing.money import money_str

register = template.Library()


@register.filter
def usd(value) -> str:
    """Show an amount in USD: cents, or more digits for amounts under a cent ("0.00042")."""
    if value is None:
        return ""
    value = Decimal(value)
    if value == 0 or abs(value) >= Decimal("0.01"):
        return f"${value.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    return f"${money_str(value)}"
