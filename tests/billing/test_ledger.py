import datetime as dt
import random
import threading
import uuid
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.models import Count, Sum

from billing.ledger import rollup_differences, usage_record
from billing.models import DailyUsage, UsageRecord

from .conftest import usage_kwargs

D = Decimal


def test_a_call_writes_one_ledger_row_and_its_daily_rollup(user, make_team):
    team = make_team("ops", user)
    message_id = uuid.uuid4()
    record = usage_record(**usage_kwargs(user, message_id=message_id, cached_tokens=20, cost=D("0.00001234567")))
    assert (record.user, record.team, record.cost) == (user, team, D("0.0000123457"))  # quantized half up
    row = DailyUsage.objects.get()
    assert (row.user, row.team, row.requests, row.input_tokens, row.output_tokens, row.cached_tokens, row.cost) == (
        user, team, 1, 100, 50, 20, D("0.0000123457")
    )


def test_the_same_message_and_attempt_is_recorded_once(user):
    message_id = uuid.uuid4()
    first = usage_record(**usage_kwargs(user, message_id=message_id, attempt=1))
    again = usage_record(**usage_kwargs(user, message_id=message_id, attempt=1, cost=D("9")))
    retry = usage_record(**usage_kwargs(user, message_id=message_id, attempt=2, outcome="error", error_kind="timeout"))
    assert again.pk == first.pk and retry.pk != first.pk
    row = DailyUsage.objects.get()
    assert (row.requests, row.errors, row.cost) == (2, 1, D("0.0000900000"))


def test_cost_must_be_decimal_never_float(user):
    with pytest.raises(TypeError):
        usage_record(**usage_kwargs(user, cost=0.1))
    with pytest.raises(ValueError):
        usage_record(**usage_kwargs(user, cost=D("-1")))
    with pytest.raises(ValueError):
        usage_record(**usage_kwargs(user, outcome="maybe"))
    assert UsageRecord.objects.count() == DailyUsage.objects.count() == 0


def test_rollup_days_are_utc_days(user):
    usage_record(**usage_kwargs(user, at=dt.datetime(2026, 5, 1, 23, 59, tzinfo=dt.UTC)))
    usage_record(**usage_kwargs(user, at=dt.datetime(2026, 5, 2, 0, 1, tzinfo=dt.UTC)))
    assert sorted(DailyUsage.objects.values_list("day", flat=True)) == [dt.date(2026, 5, 1), dt.date(2026, 5, 2)]


def test_user_without_team_gets_one_rollup_row_per_day_and_model(user):
    for _ in range(3):
        usage_record(**usage_kwargs(user))
    assert DailyUsage.objects.get().requests == 3


def test_records_of_erased_users_fold_into_exact_rollups(make_user, make_team):
    alice, bob = make_user("a"), make_user("b")
    team = make_team("t", alice, bob)
    usage_record(**usage_kwargs(alice, cost=D("0.1")))
    usage_record(**usage_kwargs(bob, cost=D("0.2")))
    # Erasing both cuts their links: their rollup rows become (day, NULL, team, model) twice.
    alice.delete()
    bob.delete()
    # A late record for an already-erased user (user NULL) adds to that bucket.
    usage_record(**usage_kwargs(None, team_id=team.pk, cost=D("0.3")))
    totals = DailyUsage.objects.filter(user=None).aggregate(cost=Sum("cost"), requests=Sum("requests"))
    assert totals == {"cost": D("0.6"), "requests": 3}
    assert rollup_differences() == []


def test_deleting_a_team_keeps_its_spend_merged_into_the_members_no_team_rows(make_user, make_team):
    alice = make_user("a")
    # Morning: alice has no team. Afternoon: she joined one. Same UTC day, same model.
    usage_record(**usage_kwargs(alice, cost=D("1.00")))
    team = make_team("biology", alice)
    usage_record(**usage_kwargs(alice, cost=D("2.00")))
    team.delete()
    row = DailyUsage.objects.get()
    assert (row.user, row.team, row.requests, row.cost) == (alice, None, 2, D("3.00"))
    assert not UsageRecord.objects.filter(team__isnull=False).exists()
    assert rollup_differences() == []


def test_ten_thousand_records_roll_up_to_the_last_decimal(make_user, make_team):
    rng = random.Random(4)
    users = [make_user(f"u{i}") for i in range(7)]
    alpha = make_team("alpha", *users[:3])
    beta = make_team("beta", *users[3:5])
    team_of = {u.pk: t.pk for t, members in ((alpha, users[:3]), (beta, users[3:5])) for u in members}
    models = [("openai", "gpt-4o"), ("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"), ("demo", "echo")]
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    for i in range(10_000):
        provider, model = rng.choice(models)
        who = rng.choice(users)
        usage_record(
            **usage_kwargs(
                who,
                team_id=team_of.get(who.pk),
                message_id=uuid.uuid4() if i % 3 else None,
                provider=provider,
                model=model,
                input_tokens=rng.randint(0, 50_000),
                output_tokens=rng.randint(0, 8_000),
                cached_tokens=rng.randint(0, 100),
                cost=D(rng.randint(0, 10**9)) / D(10**10),
                outcome=rng.choice(["ok", "ok", "ok", "cancelled", "error"]),
                at=start + dt.timedelta(minutes=rng.randint(0, 60 * 24 * 20)),
            )
        )
    ledger = UsageRecord.objects.aggregate(
        n=Count("id"), cost=Sum("cost"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cached_tokens")
    )
    rollup = DailyUsage.objects.aggregate(
        n=Sum("requests"), cost=Sum("cost"), i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cached_tokens")
    )
    assert ledger["n"] == 10_000
    assert ledger == rollup
    assert rollup_differences() == []


def test_check_rollups_passes_and_then_names_a_difference(user, capsys):
    usage_record(**usage_kwargs(user, cost=D("0.5")))
    call_command("check_rollups")
    assert "agree" in capsys.readouterr().out

    DailyUsage.objects.update(cost=D("0.5000000001"))
    with pytest.raises(CommandError, match="1 rollup value"):
        call_command("check_rollups")
    assert "cost: ledger=0.5000000000 rollup=0.5000000001" in capsys.readouterr().err


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_records_of_a_day_make_one_exact_rollup_row(make_user):
    user = make_user("busy")
    barrier = threading.Barrier(12)
    errors = []

    def work():
        try:
            barrier.wait()
            usage_record(**usage_kwargs(user, message_id=uuid.uuid4(), cost=D("0.0000000003")))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    row = DailyUsage.objects.get()
    assert (row.requests, row.cost) == (12, D("0.0000000036"))
