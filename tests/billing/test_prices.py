import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts.models import AuditEvent
from billing.models import ModelPrice
from billing.prices import PriceError, cost_of, price_for, price_set, prices_available, worst_case_cost

D = Decimal


@pytest.mark.django_db
def test_common_models_are_seeded_and_the_demo_costs_nothing():
    mini = price_for(model_id="openai:gpt-4o-mini")
    assert (mini.input_per_million, mini.output_per_million, mini.context_window) == (D("0.15"), D("0.60"), 128_000)
    sonnet = price_for(model_id="anthropic:claude-sonnet-4-5")
    assert (sonnet.input_per_million, sonnet.output_per_million) == (D("3"), D("15"))
    demo = price_for(model_id="demo:echo")
    assert demo.label == "Demo (offline echo)"
    assert cost_of(price=demo, input_tokens=10_000, output_tokens=10_000) == 0
    for model_id in ("openai:gpt-4o", "openai:gpt-4.1", "openai:gpt-4.1-mini", "openai:o4-mini",
                     "anthropic:claude-haiku-4-5", "anthropic:claude-opus-4-1"):
        assert price_for(model_id=model_id) is not None, model_id


@pytest.mark.django_db
@pytest.mark.parametrize("model_id", ["openai:gpt-9-imaginary", "mistral:large", "gpt-4o", "", "openai:", "openai:a b"])
def test_an_unpriced_or_malformed_model_has_no_price(model_id):
    assert price_for(model_id=model_id) is None


@pytest.mark.django_db
def test_a_disabled_model_has_no_price():
    price_set(model_id="openai:gpt-4o", input_per_million="2.5", output_per_million="10", enabled=False)
    assert price_for(model_id="openai:gpt-4o") is None
    assert "openai:gpt-4o" not in {q.model_id for q in prices_available()}


def test_cost_is_exact_decimal_with_cached_input_at_its_own_price():
    from billing.prices import PriceQuote

    price = PriceQuote("openai", "m", "M", D("2.50"), D("10.00"), D("1.25"), 128_000, 4096)
    # 1000 input of which 400 cached, 333 output: (600*2.5 + 400*1.25 + 333*10) / 1e6
    assert cost_of(price=price, input_tokens=1000, output_tokens=333, cached_tokens=400) == D("0.0053300000")
    no_cache_price = PriceQuote("openai", "m", "M", D("0.15"), D("0.60"), None, 128_000, 4096)
    assert cost_of(price=no_cache_price, input_tokens=7, output_tokens=3, cached_tokens=7) == D("0.0000028500")
    assert worst_case_cost(price=price, input_tokens=1000, max_output_tokens=1000) == D("0.0125")
    with pytest.raises(ValueError):
        cost_of(price=price, input_tokens=-1, output_tokens=0)


@pytest.mark.django_db
def test_a_price_change_applies_to_later_calls_only():
    before = timezone.now()
    old = price_for(model_id="openai:gpt-4o-mini")
    row = price_set(model_id="openai:gpt-4o-mini", input_per_million="0.30", output_per_million="1.20")

    assert price_for(model_id="openai:gpt-4o-mini", at=before) == old
    new = price_for(model_id="openai:gpt-4o-mini")
    assert (new.input_per_million, new.output_per_million) == (D("0.30"), D("1.20"))
    # What was not given carries over; the old row is untouched history.
    assert (new.context_window, new.label, new.cached_input_per_million) == (128_000, "GPT-4o mini", D("0.075"))
    assert ModelPrice.objects.filter(provider="openai", model="gpt-4o-mini").count() == 2
    event = AuditEvent.objects.get(action="price.set")
    assert (event.target_id, event.data["input_per_million"]) == (str(row.pk), "0.300000")


@pytest.mark.django_db
def test_a_price_set_for_the_future_starts_then():
    later = timezone.now() + dt.timedelta(days=2)
    price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", effective_from=later)
    assert price_for(model_id="openai:gpt-4o").input_per_million == D("2.5")
    assert price_for(model_id="openai:gpt-4o", at=later).input_per_million == D("1")


@pytest.mark.django_db
def test_a_new_model_can_be_priced_including_compatible_server_names():
    price_set(model_id="openai:llama3.1:8b", input_per_million="0", output_per_million="0", context_window="8192")
    quote = price_for(model_id="openai:llama3.1:8b")
    assert (quote.model, quote.context_window) == ("llama3.1:8b", 8192)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"model_id": "gpt-4o"}, "PROVIDER:MODEL"),
        ({"model_id": "openai:gpt 4o"}, "PROVIDER:MODEL"),
        ({"model_id": "acme:gpt-4o"}, "PROVIDER:MODEL"),
        ({"model_id": "openai:gpt-4o\n"}, "PROVIDER:MODEL"),  # a pasted line end is not part of the name
        ({"input_per_million": "-1"}, "negative"),
        ({"output_per_million": "-0.01"}, "negative"),
        ({"input_per_million": "cheap"}, "number"),
        ({"input_per_million": "Infinity"}, "number"),
        ({"output_per_million": "1e9"}, "above"),
        ({"context_window": "0"}, "between"),
        ({"context_window": "lots"}, "whole number"),
        # More places than a price holds: rounding would store 0.0000004 as 0, a paid model free.
        ({"input_per_million": "0.0000004", "output_per_million": "0.0000004"}, "The input price cannot have more than 6 decimal places."),
        ({"output_per_million": "0.123456789012345"}, "The output price cannot have more than 6 decimal places."),
        ({"cached_input_per_million": "0.0000001"}, "The cached input price cannot have more than 6 decimal places."),
        ({"input_per_million": "4E-7"}, "more than 6 decimal places"),
    ],
)
def test_price_set_refuses_bad_input_and_changes_nothing(kwargs, error):
    args = {"model_id": "openai:gpt-4o", "input_per_million": "1", "output_per_million": "2", **kwargs}
    count = ModelPrice.objects.count()
    with pytest.raises(PriceError, match=error):
        price_set(**args)
    assert ModelPrice.objects.count() == count
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_zeros_past_the_sixth_decimal_place_are_accepted_as_the_same_price():
    row = price_set(model_id="openai:gpt-4o", input_per_million="1.50000000", output_per_million="0.000001000")
    assert (row.input_per_million, row.output_per_million) == (Decimal("1.5"), Decimal("0.000001"))
    quote = price_for(model_id="openai:gpt-4o")
    assert (quote.input_per_million, quote.output_per_million) == (Decimal("1.5"), Decimal("0.000001"))


@pytest.mark.django_db
def test_prices_available_lists_the_demo_first_and_every_priced_model():
    quotes = prices_available()
    assert quotes[0].model_id == "demo:echo"
    assert {"openai:gpt-4o-mini", "anthropic:claude-sonnet-4-5"} <= {q.model_id for q in quotes}
    assert len({q.model_id for q in quotes}) == len(quotes)


@pytest.mark.django_db
def test_a_cached_input_price_above_the_input_price_is_refused():
    """A reservation counts every input token at the input price; a dearer cached price would let
    the real cost exceed the hold and overspend the budget."""
    count = ModelPrice.objects.count()
    with pytest.raises(PriceError, match="The cached input price cannot be above the input price."):
        price_set(
            model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", cached_input_per_million="1.5"
        )
    assert ModelPrice.objects.count() == count
    assert not AuditEvent.objects.exists()

    price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", cached_input_per_million="1")
    assert price_for(model_id="openai:gpt-4o").cached_input_per_million == D("1")


@pytest.mark.django_db
@pytest.mark.parametrize("model_id", ["openai:llama3.1:8b", "openai:gpt-4o-mini"])  # new model; carried 16384
def test_a_context_window_set_alone_leaves_room_for_the_question(model_id):
    """An operator giving only the window of a small local model must get a usable model: the
    default (or carried-over) reply size is cut to fit, or every message would be refused."""
    import uuid

    from conversations.context import HistoryItem, context_build

    price_set(model_id=model_id, input_per_million="0", output_per_million="0", context_window="2048")
    quote = price_for(model_id=model_id)
    assert quote.context_window == 2048
    assert 0 < quote.max_output_tokens < 2048
    built = context_build(
        system_prompt="",
        summary="",
        history=[HistoryItem(id=uuid.uuid4(), role="user", content="hello there")],
        model_id=model_id,
        context_window=quote.context_window,
        max_tokens=quote.max_output_tokens,
    )
    assert len(built.messages) == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "kwargs",
    [
        {"context_window": "2048", "max_output_tokens": "4096"},
        {"context_window": "2048", "max_output_tokens": "2048"},
        {"max_output_tokens": "128000"},  # the window of 128000 carried over from gpt-4o
    ],
)
def test_a_max_output_that_fills_the_context_window_is_refused(kwargs):
    count = ModelPrice.objects.count()
    with pytest.raises(PriceError, match="The max output tokens must be below the context window"):
        price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", **kwargs)
    assert ModelPrice.objects.count() == count
    assert not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_a_scheduled_price_set_again_at_its_moment_is_corrected_in_place():
    later = timezone.now() + dt.timedelta(days=2)
    first = price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", effective_from=later)
    again = price_set(model_id="openai:gpt-4o", input_per_million="1.2", output_per_million="2", effective_from=later)
    assert again.pk == first.pk
    assert price_for(model_id="openai:gpt-4o", at=later).input_per_million == D("1.2")
    assert ModelPrice.objects.filter(provider="openai", model="gpt-4o", effective_from=later).count() == 1
    assert [e.data["replaced_scheduled"] for e in AuditEvent.objects.order_by("created_at", "pk")] == [False, True]
