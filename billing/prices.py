"""Model prices: which price is in force, what a call costs, and changing a price.

A price change never rewrites a row: `price_set` adds a new row effective from now (or a future
moment), so calls already made keep the price they were made at and later calls get the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_noop

from conversations.llm.model_ids import PROVIDERS
from conversations.llm.model_ids import model_id_parse as parse_model_id  # the one grammar, by billing's name

from .money import ZERO, parse_decimal, quantize_money

# Guards against typos ("--input 25000" meant 2.5): no public model costs near this per million.
MAX_PRICE_PER_MILLION = Decimal("10000")
MAX_CONTEXT_WINDOW = 100_000_000
# What a new model gets when set_price is not told (billing.models.ModelPrice's field defaults).
DEFAULT_CONTEXT_WINDOW = 128_000
DEFAULT_MAX_OUTPUT_TOKENS = 4096
PRICE_PLACES = Decimal("0.000001")  # billing.models.PRICE
_PRICE_DECIMALS = -PRICE_PLACES.as_tuple().exponent
_MILLION = Decimal(1_000_000)
# The label the seed migration gives demo:echo. A label is data, but this one is known, so pages
# show it in the reader's language; a label an admin sets is shown as written.
DEMO_SEED_LABEL = gettext_noop("Demo (offline echo)")


def label_display(label: str) -> str:
    """A price row's label as a page shows it."""
    return _(label) if label == DEMO_SEED_LABEL else label


class PriceError(ValueError):
    """Bad input to price_set: one sentence, in the language active when raised (the operator's,
    in the admin), safe to show. `field` names the input it is about, where it is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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


def _quote(row) -> PriceQuote:
    return PriceQuote(
        provider=row.provider,
        model=row.model,
        label=row.label or row.model,
        input_per_million=row.input_per_million,
        output_per_million=row.output_per_million,
        cached_input_per_million=row.cached_input_per_million,
        context_window=row.context_window,
        max_output_tokens=row.max_output_tokens,
    )


def _row_in_force(*, provider: str, model: str, at: datetime):
    from .models import ModelPrice

    return (
        ModelPrice.objects.filter(provider=provider, model=model, effective_from__lte=at)
        .order_by("-effective_from", "-pk")
        .first()
    )


def price_for(*, model_id: str, at: datetime | None = None) -> PriceQuote | None:
    """The price in force at `at` (default now) for "provider:model"; None when unpriced,
    malformed or disabled — the caller refuses the model then, never runs it for free."""
    parsed = parse_model_id(model_id)
    if parsed is None:
        return None
    row = _row_in_force(provider=parsed[0], model=parsed[1], at=at or timezone.now())
    if row is None or not row.enabled:
        return None
    return _quote(row)


def cost_of(*, price: PriceQuote, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> Decimal:
    """Exact Decimal cost in USD, quantized to the ledger's precision.

    `input_tokens` is ALL the input of the call, of which `cached_tokens` were served from the
    provider's prompt cache (OpenAI's convention; an Anthropic adapter adds cache reads into
    input_tokens). Cached tokens cost the cached price where the model has one, else the input
    price."""
    for n in (input_tokens, output_tokens, cached_tokens):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("token counts must be non-negative integers")
    cached = min(cached_tokens, input_tokens)
    cached_price = price.cached_input_per_million
    if cached_price is None:
        cached_price = price.input_per_million
    micro = (
        (input_tokens - cached) * price.input_per_million
        + cached * cached_price
        + output_tokens * price.output_per_million
    )
    return quantize_money(micro / _MILLION)


# How far a provider's own count of the input may exceed ours when ours is not made with the
# model's tokenizer (Anthropic's, a local model's, or OpenAI's while its encoding cannot load):
# cl100k or the character estimate stands in, and the provider bills by its own count. The hold
# covers that, or the call's settlement could take a budget past its limit; it is released at
# settlement, so a generous margin costs only room near a budget's end.
ESTIMATED_INPUT_MARGIN = Decimal("1.5")


def worst_case_cost(*, price: PriceQuote, input_tokens: int, max_output_tokens: int, input_estimated: bool = False) -> Decimal:
    """What a call can cost at most: all input uncached, every allowed output token used, and
    the input counted ESTIMATED_INPUT_MARGIN times over when `input_estimated` (counted without
    the model's own tokenizer). The amount to pass to billing.budgets.budget_reserve."""
    if input_estimated:
        input_tokens = int((input_tokens * ESTIMATED_INPUT_MARGIN).to_integral_value(rounding=ROUND_CEILING))
    return cost_of(price=price, input_tokens=input_tokens, output_tokens=max_output_tokens)


def prices_available() -> list[PriceQuote]:
    """Every enabled model with a price in force now (the demo model included), by provider
    then label."""
    from .models import ModelPrice

    now = timezone.now()
    latest: dict[tuple[str, str], object] = {}
    # Newest first: the first row seen for a model is the one in force.
    for row in ModelPrice.objects.filter(effective_from__lte=now).order_by("-effective_from", "-pk"):
        latest.setdefault((row.provider, row.model), row)
    quotes = [_quote(row) for row in latest.values() if row.enabled]
    return sorted(quotes, key=lambda q: (q.provider != "demo", q.provider, q.label.lower()))


def _price(raw: object, what: str, *, required: bool) -> Decimal | None:
    if raw is None or raw == "":
        if required:
            raise PriceError(_("The %(what)s price is required.") % {"what": what})
        return None
    value = parse_decimal(raw)
    if value is None:
        raise PriceError(_("The %(what)s price must be a number of USD per million tokens, such as 0.15.") % {"what": what})
    if value < 0:
        raise PriceError(_("The %(what)s price cannot be negative.") % {"what": what})
    if value > MAX_PRICE_PER_MILLION:
        raise PriceError(
            _("The %(what)s price cannot be above %(max)s USD per million tokens.") % {"what": what, "max": MAX_PRICE_PER_MILLION}
        )
    exact = value.quantize(PRICE_PLACES)
    if exact != value:
        # Never rounded: 0.0000004 would be stored as 0, a paid model made free. Zeros past the
        # last place ("1.50000000") change nothing and are accepted.
        raise PriceError(
            _("The %(what)s price cannot have more than %(places)s decimal places.") % {"what": what, "places": _PRICE_DECIMALS}
        )
    return exact


def _positive_int(raw: object, what: str, *, maximum: int) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise PriceError(_("The %(what)s must be a whole number.") % {"what": what}) from None
    if not 0 < value <= maximum:
        raise PriceError(_("The %(what)s must be between 1 and %(max)s.") % {"what": what, "max": maximum})
    return value


def _check_output_fits(*, window: int, max_out: int) -> None:
    # The context builder keeps max_out tokens of the window free for the reply; a reply as large
    # as the window leaves no room for the question, and every message would be refused.
    if max_out >= window:
        raise PriceError(_("The max output tokens must be below the context window (%(window)s).") % {"window": window})


def _check_keeps_default_model(*, provider: str, model: str) -> None:
    # Every new conversation starts on DEFAULT_MODEL (conversations.services) and a model whose
    # price is disabled is refused at every turn, so disabling it would fail every new chat from
    # that moment. The setting lives in the environment, out of the admin's reach: the default
    # moves first, then the price can go. Scheduled prices too: they come into force unattended.
    if parse_model_id(settings.DEFAULT_MODEL) == (provider, model):
        raise PriceError(
            _(
                "%(model)s is the site's default model (DEFAULT_MODEL): every new conversation starts on it, "
                "and with its price disabled each of their messages would be refused. Set DEFAULT_MODEL to "
                "another model that has a price and restart the site first, then disable this one."
            )
            % {"model": f"{provider}:{model}"},
            field="enabled",
        )


def price_validate(
    *,
    model_id: str,
    input_per_million: object,
    output_per_million: object,
    cached_input_per_million: object = None,
    context_window: object = None,
    max_output_tokens: object = None,
    label: str | None = None,
    enabled: bool = True,
):
    """Checked values for price_set: (provider, model, input, output, cached, context window,
    max output); raises PriceError with a one-line reason. A disabled price for DEFAULT_MODEL is
    refused: every new conversation would be refused with it."""
    parsed = parse_model_id(model_id)
    if parsed is None:
        raise PriceError(
            _("The model must look like PROVIDER:MODEL, with the provider one of %(providers)s.")
            % {"providers": ", ".join(PROVIDERS)}
        )
    provider, model = parsed
    if not enabled:
        _check_keeps_default_model(provider=provider, model=model)
    inp = _price(input_per_million, _("input"), required=True)
    out = _price(output_per_million, _("output"), required=True)
    cached = _price(cached_input_per_million, _("cached input"), required=False)
    if cached is not None and cached > inp:
        # worst_case_cost counts all input at the input price: a dearer cached price would make
        # the real cost exceed the budget hold.
        raise PriceError(_("The cached input price cannot be above the input price."))
    window = _positive_int(context_window, _("context window"), maximum=MAX_CONTEXT_WINDOW)
    max_out = _positive_int(max_output_tokens, _("max output tokens"), maximum=MAX_CONTEXT_WINDOW)
    if window is not None and max_out is not None:
        _check_output_fits(window=window, max_out=max_out)
    if label is not None and len(label) > 120:
        raise PriceError(_("The label cannot be longer than 120 characters."))
    return provider, model, inp, out, cached, window, max_out


def price_set(
    *,
    model_id: str,
    input_per_million: object,
    output_per_million: object,
    cached_input_per_million: object = None,
    context_window: object = None,
    max_output_tokens: object = None,
    label: str | None = None,
    enabled: bool = True,
    effective_from: datetime | None = None,
    moving_id: int | None = None,
    actor=None,
):
    """Put a new price in force for `model_id` from `effective_from` (now when omitted or past:
    history is never rewritten). A price already scheduled for that same future moment is
    replaced instead: no call has used it yet. `moving_id` names the price row an admin page
    edits. A scheduled one is replaced by this one (the admin editing a scheduled row to another
    moment): it is removed in the same transaction, so the change moves instead of being
    scheduled twice; a row that has come into force meanwhile is history and stays, and one that
    is gone (moved or deleted by a concurrent save) refuses the save. A row in force must still be
    the newest price in force: once another has come into force since (a colleague's save, the
    operator's other tab, a scheduled price), the page's values would put the old price back over
    it, and the save is refused. Unset context window, max output,
    label and cached price carry over from the price in force then. Raises PriceError (changing
    nothing) on bad input. Writes an audit entry. Returns the new (or replaced) ModelPrice, its
    `replaced_scheduled_price` True when it took the place of another price scheduled then."""
    from accounts.audit import audit_record

    from .models import ModelPrice

    provider, model, inp, out, cached, window, max_out = price_validate(
        model_id=model_id,
        input_per_million=input_per_million,
        output_per_million=output_per_million,
        cached_input_per_million=cached_input_per_million,
        context_window=context_window,
        max_output_tokens=max_output_tokens,
        label=label,
        enabled=enabled,
    )
    now = timezone.now()
    start = effective_from if effective_from and effective_from > now else now
    with transaction.atomic():
        # The row the page edits, locked: two saves from pages of the same price queue here.
        edited = ModelPrice.objects.select_for_update().filter(pk=moving_id).first() if moving_id is not None else None
        if moving_id is not None and edited is None:
            # A colleague moved or deleted it while this edit was open (the lock above waited
            # for them): saving would add a second scheduled price beside theirs, not move one.
            raise PriceError(
                _("This price was moved or deleted by someone else while you were editing it: nothing was saved. "
                  "Open the price list again to see the prices as they are now.")
            )
        # A scheduled row is moved (replaced by this one); one in force is history, and stays.
        moved = edited if edited is not None and edited.effective_from > now else None
        if edited is not None and moved is None:
            _check_still_newest(edited)
        if moved is not None:
            if (moved.provider, moved.model) != (provider, model):
                raise PriceError(_("A scheduled price can only be moved for its own model."))
            if moved.effective_from == start:
                moved = None  # saved again at its own moment: corrected in place below
            else:
                moved.delete()
        scheduled = None
        if start > now:
            # Not in force yet, so not history: correcting it (the admin saving a scheduled row
            # again) must not fail on modelprice_unique_from. Locked: two corrections queue.
            scheduled = (
                ModelPrice.objects.select_for_update()
                .filter(provider=provider, model=model, effective_from=start)
                .first()
            )
        previous = _row_in_force(provider=provider, model=model, at=start)
        given_max_out = max_out
        if previous is not None:
            window = window or previous.context_window
            max_out = max_out or previous.max_output_tokens
            label = label if label is not None else previous.label
            if cached is None and previous.cached_input_per_million is not None:
                # A cached price above the new input price would be a discount that costs more.
                cached = min(previous.cached_input_per_million, inp)
        window = window or DEFAULT_CONTEXT_WINDOW
        max_out = max_out or DEFAULT_MAX_OUTPUT_TOKENS
        if given_max_out is None and max_out >= window:
            # Only the window was given (a small local model): the default or carried-over reply
            # size is cut to half the window rather than making the model unusable.
            max_out = max(1, window // 2)
        _check_output_fits(window=window, max_out=max_out)
        values = {
            "label": label or "",
            "input_per_million": inp,
            "output_per_million": out,
            "cached_input_per_million": cached,
            "context_window": window,
            "max_output_tokens": max_out,
            "enabled": enabled,
            "created_at": now,
        }
        if scheduled is not None:
            row = scheduled
            for name, value in values.items():
                setattr(row, name, value)
        else:
            row = ModelPrice(provider=provider, model=model, effective_from=start, **values)
        # Constraints are left to the database: the values were checked above, and the unique
        # moment can then only clash with a concurrent price_set, which the save reports.
        row.full_clean(validate_constraints=False)
        try:
            with transaction.atomic():
                row.save()
        except IntegrityError:
            raise PriceError(_("A price for this model already starts at that moment: choose another moment, or change that price.")) from None
        audit_record(
            action="price.set",
            actor=actor,
            target=row,
            data={
                "model": row.model_id,
                "input_per_million": str(inp),
                "output_per_million": str(out),
                "cached_input_per_million": None if cached is None else str(cached),
                "context_window": row.context_window,
                "enabled": enabled,
                "effective_from": start.isoformat(),
                "replaced_scheduled": scheduled is not None,
                "moved_from": moved.effective_from.isoformat() if moved is not None else None,
            },
        )
    # For a page to say: another price scheduled for that moment gave way (not the one corrected).
    row.replaced_scheduled_price = scheduled is not None and scheduled.pk != moving_id
    return row


def _check_still_newest(edited) -> None:
    """Refuse a save from the page of price row `edited` (in force when the page was opened, and
    locked by the caller) once a newer price has come into force: the second of two saves from
    pages of the same price finds the first one's. In force as of now, read after the lock: the
    save's own `now`, taken before it waited, is earlier than the moment the first save's price
    came into force, and would not see it."""
    newest = _row_in_force(provider=edited.provider, model=edited.model, at=timezone.now())
    if newest is not None and newest.pk != edited.pk:
        raise PriceError(
            _(
                "A newer price for %(model)s has been in force since %(when)s (saved after this page was opened, "
                "by someone else or in another tab, or scheduled for then): nothing was saved, since this page "
                "would have put its older values back. Open the price in force and make your change there."
            )
            % {
                "model": edited.model_id,
                "when": timezone.localtime(newest.effective_from).strftime("%Y-%m-%d %H:%M:%S"),
            }
        )


def _scheduled_locked(*, price_id: int, now: datetime):
    """The price row `price_id`, locked, if it is still scheduled (not in force yet); else None."""
    from .models import ModelPrice

    return ModelPrice.objects.select_for_update().filter(pk=price_id, effective_from__gt=now).first()


def price_unschedule(*, price_id: int, actor=None) -> None:
    """Cancel a price scheduled for a future moment. No call has used it, so it is not history;
    a price already in force is, and raises PriceError (changing nothing)."""
    from accounts.audit import audit_record

    with transaction.atomic():
        row = _scheduled_locked(price_id=price_id, now=timezone.now())
        if row is None:
            raise PriceError(_("Only a price that is not in force yet can be deleted; a price in force is the record of what calls cost."))
        audit_record(
            action="price.unschedule",
            actor=actor,
            target=row,
            data={"model": row.model_id, "effective_from": row.effective_from.isoformat()},
        )
        row.delete()


__all__ = [
    "ZERO",
    "PriceError",
    "PriceQuote",
    "cost_of",
    "parse_model_id",
    "price_for",
    "price_set",
    "price_unschedule",
    "prices_available",
    "quantize_money",
    "worst_case_cost",
]
