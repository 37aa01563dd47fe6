import datetime as dt
import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing.budgets import (
    BudgetExceeded,
    budget_reserve,
    budget_set,
    budget_settle,
    budget_status,
    period_bounds,
    reservation_keep,
    reservations_expire,
)
from billing.ledger import usage_record
from billing.models import Budget, DailyUsage, Reservation, UsageRecord
from billing.prices import cost_of, price_for, worst_case_cost

from .conftest import usage_kwargs

D = Decimal


def fresh(budget):
    budget.refresh_from_db()
    return budget


def test_reserve_holds_on_every_covering_budget_and_settle_moves_it_to_spent(user, make_team):
    team = make_team("physics", user)
    own = budget_set(user=user, period="month", limit="10")
    shared = budget_set(team=team, period="day", limit="5")

    rid = budget_reserve(user=user, amount=D("1.5"))
    assert fresh(own).reserved == D("1.5") and fresh(shared).reserved == D("1.5")

    budget_settle(reservation_id=rid, actual=D("0.25"))
    for b in (fresh(own), fresh(shared)):
        assert (b.reserved, b.spent) == (D("0"), D("0.25"))
    assert Reservation.objects.get(pk=rid).state == "settled"


def test_team_budget_used_up_refuses_even_with_personal_budget_left_and_names_the_team(user, make_team):
    team = make_team("Physics Lab", user)
    budget_set(user=user, period="month", limit="100")
    team_budget = budget_set(team=team, period="week", limit="2")
    budget_settle(reservation_id=budget_reserve(user=user, amount=D("2")), actual=D("2"))

    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(user=user, amount=D("0.01"))

    err = refused.value
    assert (err.scope, err.name, err.period, err.limit, err.spent) == ("team", "Physics Lab", "week", D("2"), D("2"))
    assert "Physics Lab" in err.message
    # Refused means nothing held anywhere.
    assert all(b.reserved == 0 for b in Budget.objects.all())
    assert fresh(team_budget).spent == D("2")


def test_user_budget_refusal_names_the_user_budget(user):
    budget_set(user=user, period="day", limit="1")
    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(user=user, amount=D("1.01"))
    assert (refused.value.scope, refused.value.name, refused.value.period) == ("user", "alice", "day")
    assert Reservation.objects.count() == 0


def test_user_without_budgets_reserves_and_settles(user):
    rid = budget_reserve(user=user, amount=D("3"))
    budget_settle(reservation_id=rid, actual=D("1"))
    assert Reservation.objects.get(pk=rid).settled_amount == D("1")


def test_free_call_is_never_refused_even_when_the_budget_is_used_up(user):
    budget = budget_set(user=user, period="total", limit="0")
    budget_settle(reservation_id=budget_reserve(user=user, amount=D("0")), actual=D("0"))
    assert fresh(budget).spent == 0
    with pytest.raises(BudgetExceeded):
        budget_reserve(user=user, amount=D("0.0000000001"))


def test_settle_is_idempotent(user):
    budget = budget_set(user=user, period="month", limit="10")
    rid = budget_reserve(user=user, amount=D("2"))
    budget_settle(reservation_id=rid, actual=D("1.2"))
    budget_settle(reservation_id=rid, actual=D("1.2"))
    budget_settle(reservation_id=rid, actual=D("9"))
    assert (fresh(budget).spent, fresh(budget).reserved) == (D("1.2"), D("0"))


def test_stopped_reply_and_cut_stream_settle_to_what_was_billed(user):
    """No leak (the hold is released) and no zero charge (the partial output is paid)."""
    budget = budget_set(user=user, period="month", limit="10")
    price = price_for(model_id="openai:gpt-4o")
    for outcome, output_tokens in (("cancelled", 37), ("error", 12)):
        rid = budget_reserve(user=user, amount=worst_case_cost(price=price, input_tokens=1000, max_output_tokens=4000))
        billed = cost_of(price=price, input_tokens=1000, output_tokens=output_tokens)
        usage_record(**usage_kwargs(user, model="gpt-4o", output_tokens=output_tokens, cost=billed, outcome=outcome))
        budget_settle(reservation_id=rid, actual=billed)
    expected = cost_of(price=price, input_tokens=1000, output_tokens=37) + cost_of(
        price=price, input_tokens=1000, output_tokens=12
    )
    assert expected > 0
    assert (fresh(budget).spent, fresh(budget).reserved) == (expected, D("0"))


def test_provider_error_before_any_output_charges_nothing(user):
    budget = budget_set(user=user, period="month", limit="10")
    rid = budget_reserve(user=user, amount=D("0.5"))
    usage_record(**usage_kwargs(user, input_tokens=0, output_tokens=0, cost=D("0"), outcome="error", error_kind="unavailable"))
    budget_settle(reservation_id=rid, actual=D("0"))
    assert (fresh(budget).spent, fresh(budget).reserved) == (D("0"), D("0"))


def test_crashed_process_reservation_expires_and_frees_the_budget(user):
    budget = budget_set(user=user, period="month", limit="1")
    rid = budget_reserve(user=user, amount=D("1"))
    with pytest.raises(BudgetExceeded):
        budget_reserve(user=user, amount=D("0.5"))

    assert reservations_expire() == 0  # not yet past its expiry
    later = timezone.now() + dt.timedelta(hours=1)
    assert reservations_expire(now=later) == 1
    assert reservations_expire(now=later) == 0
    assert Reservation.objects.get(pk=rid).state == "expired"
    assert fresh(budget).reserved == 0
    budget_reserve(user=user, amount=D("0.5"))  # room again


def test_a_kept_hold_outlives_its_first_expiry_never_shortened_and_a_settled_one_is_not_kept(user):
    budget = budget_set(user=user, period="month", limit="1")
    rid = budget_reserve(user=user, amount=D("1"), ttl_seconds=60)
    first = Reservation.objects.get(pk=rid).expires_at

    assert reservation_keep(reservation_id=rid, ttl_seconds=1) is True
    assert Reservation.objects.get(pk=rid).expires_at == first  # never nearer than it was
    assert reservation_keep(reservation_id=rid, ttl_seconds=600) is True
    assert reservations_expire(now=first + dt.timedelta(seconds=1)) == 0
    assert fresh(budget).reserved == D("1")

    budget_settle(reservation_id=rid, actual=D("0.5"))
    assert reservation_keep(reservation_id=rid) is False
    expired = budget_reserve(user=user, amount=D("0.1"), ttl_seconds=0)
    reservations_expire(now=timezone.now() + dt.timedelta(seconds=1))
    assert reservation_keep(reservation_id=expired) is False  # released: no call may be made on it
    assert Reservation.objects.get(pk=expired).state == "expired"


def test_settle_after_expiry_still_charges_the_real_cost(user):
    budget = budget_set(user=user, period="month", limit="5")
    rid = budget_reserve(user=user, amount=D("1"), ttl_seconds=0)
    reservations_expire(now=timezone.now() + dt.timedelta(seconds=1))
    budget_settle(reservation_id=rid, actual=D("0.75"))
    assert (fresh(budget).spent, fresh(budget).reserved) == (D("0.75"), D("0"))


def test_period_rolls_over_in_the_owner_time_zone(user):
    user.timezone = "Asia/Seoul"
    user.save()
    budget = budget_set(user=user, period="day", limit="1")
    assert budget.time_zone == "Asia/Seoul"
    # Yesterday (Seoul) used the whole day budget.
    start, _ = period_bounds(period="day", tz_name="Asia/Seoul", now=timezone.now())
    Budget.objects.filter(pk=budget.pk).update(spent=D("1"), period_start=start - dt.timedelta(days=1))

    budget_reserve(user=user, amount=D("0.4"))
    budget = fresh(budget)
    assert (budget.spent, budget.reserved, budget.period_start) == (D("0"), D("0.4"), start)


def test_period_bounds_follow_the_calendar_of_the_zone():
    now = dt.datetime(2026, 3, 31, 16, 30, tzinfo=dt.UTC)  # already April 1st, 01:30 in Seoul
    start, end = period_bounds(period="day", tz_name="Asia/Seoul", now=now)
    assert (start.isoformat(), end.isoformat()) == ("2026-04-01T00:00:00+09:00", "2026-04-02T00:00:00+09:00")
    start, end = period_bounds(period="month", tz_name="UTC", now=now)
    assert (start.date(), end.date()) == (dt.date(2026, 3, 1), dt.date(2026, 4, 1))
    start, _ = period_bounds(period="week", tz_name="UTC", now=now)
    assert start.date() == dt.date(2026, 3, 30)  # a Monday
    assert period_bounds(period="total", tz_name="UTC", now=now) == (None, None)


def test_deleting_conversations_never_lowers_spend(user):
    from conversations.models import Conversation, Message

    budget = budget_set(user=user, period="total", limit="10")
    conversation = Conversation.objects.create(owner=user, model="openai:gpt-4o-mini")
    message = Message.objects.create(conversation=conversation, role="assistant", content="hi")
    rid = budget_reserve(user=user, amount=D("1"))
    usage_record(**usage_kwargs(user, conversation_id=conversation.id, message_id=message.id, cost=D("0.3")))
    budget_settle(reservation_id=rid, actual=D("0.3"))

    conversation.delete()

    assert fresh(budget).spent == D("0.3")
    assert UsageRecord.objects.get().cost == D("0.3")
    assert DailyUsage.objects.get().cost == D("0.3")


def test_new_budget_starts_from_what_was_already_spent_this_period(user, make_team, make_user):
    colleague = make_user("bob")
    team = make_team("ops", user, colleague)
    usage_record(**usage_kwargs(user, cost=D("0.4")))
    usage_record(**usage_kwargs(colleague, cost=D("0.1")))
    assert budget_set(user=user, period="month", limit="1").spent == D("0.4")
    assert budget_set(team=team, period="month", limit="1").spent == D("0.5")


def test_a_team_budget_set_later_counts_what_an_erased_member_spent(user, make_team, make_user):
    """Erasure keeps the money (the record loses its user, keeps its team): a budget the team
    sets afterwards must not hand out that spend a second time."""
    from billing.data_rights import usage_forget_user

    colleague = make_user("bob")
    team = make_team("ops", user, colleague)
    usage_record(**usage_kwargs(user, cost=D("0.4")))
    usage_record(**usage_kwargs(colleague, cost=D("0.1")))
    usage_forget_user(user_id=colleague.pk)
    colleague.delete()
    assert budget_set(team=team, period="month", limit="1").spent == D("0.5")


def test_budget_status_lists_every_covering_budget_with_the_warning(user, make_team):
    team = make_team("ops", user)
    budget_set(user=user, period="month", limit="10")
    budget_set(team=team, period="day", limit="1", warn_ratio="0.5")
    budget_settle(reservation_id=budget_reserve(user=user, amount=D("0.6")), actual=D("0.6"))

    mine, teams = budget_status(user=user)
    assert (mine.scope, mine.name, mine.period, mine.spent, mine.remaining, mine.warn) == (
        "user", "alice", "month", D("0.6"), D("9.4"), False
    )
    assert (teams.scope, teams.name, teams.period, teams.spent, teams.remaining, teams.warn) == (
        "team", "ops", "day", D("0.6"), D("0.4"), True
    )


def test_budget_status_reads_an_ended_period_as_fresh(user):
    budget = budget_set(user=user, period="day", limit="2")
    Budget.objects.filter(pk=budget.pk).update(spent=D("2"), period_start=budget.period_start - dt.timedelta(days=3))
    (status,) = budget_status(user=user)
    assert (status.spent, status.remaining, status.exceeded) == (D("0"), D("2"), False)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit": "-1", "period": "day"}, "negative"),
        ({"limit": "ten", "period": "day"}, "number"),
        ({"limit": "NaN", "period": "day"}, "number"),
        ({"limit": "1e30", "period": "day"}, "above"),
        ({"limit": "5", "period": "fortnight"}, "period"),
        ({"limit": "5", "period": "day", "warn_ratio": "1.5"}, "threshold"),
        ({"limit": "5", "period": "day", "warn_ratio": "0.0004"}, "threshold"),  # rounds to 0: never off
        ({"limit": "0.00000000004", "period": "day"}, "decimal places"),  # would be stored as 0
        ({"limit": "1.23456789012", "period": "day"}, "decimal places"),
    ],
)
def test_budget_set_refuses_bad_input_and_changes_nothing(user, kwargs, error):
    from billing.budgets import BudgetError

    with pytest.raises(BudgetError, match=error):
        budget_set(user=user, **kwargs)
    assert Budget.objects.count() == 0


def test_budget_set_changes_the_limit_and_keeps_the_spend(user):
    from accounts.models import AuditEvent

    budget = budget_set(user=user, period="month", limit="10")
    budget_settle(reservation_id=budget_reserve(user=user, amount=D("1")), actual=D("1"))
    again = budget_set(user=user, period="month", limit="20")
    assert (again.pk, fresh(again).limit, fresh(again).spent) == (budget.pk, D("20"), D("1"))
    assert AuditEvent.objects.filter(action="budget.set").count() == 2


# --- Who may set or remove a budget: not the people it covers, unless a superuser ---------------


def test_a_budget_covering_the_operator_is_refused_to_them_and_changes_nothing(make_staff, make_team, user):
    from accounts.models import AuditEvent
    from billing.budgets import BudgetCoversOperator, budget_delete

    staff = make_staff("billing.add_budget", "billing.change_budget", "billing.delete_budget")
    team = make_team("Physics", staff, user)
    own = budget_set(user=staff, period="month", limit="5")  # the system (a command) may
    teams = budget_set(team=team, period="month", limit="50")
    for owner in ({"user": staff}, {"team": team}):
        with pytest.raises(BudgetCoversOperator):
            budget_set(**owner, period="month", limit="900", actor=staff)
        with pytest.raises(BudgetCoversOperator):
            budget_set(**owner, period="day", limit="900", actor=staff)  # a new one, too: one rule
    for budget in (own, teams):
        with pytest.raises(BudgetCoversOperator):
            budget_delete(budget=budget, actor=staff)
    assert sorted((b.period, b.limit) for b in Budget.objects.all()) == [("month", D("5")), ("month", D("50"))]
    assert AuditEvent.objects.filter(actor_id=staff.pk).count() == 0


def test_others_budgets_stay_the_operators_to_manage_and_a_superuser_manages_their_own(make_staff, make_team, make_user, user):
    from billing.budgets import budget_delete

    staff = make_staff("billing.add_budget", "billing.change_budget", "billing.delete_budget")
    make_team("Chemistry", staff)
    physics = make_team("Physics", user)
    budget_set(user=user, period="month", limit="7", actor=staff)
    budget_delete(budget=budget_set(team=physics, period="week", limit="70", actor=staff), actor=staff)
    root = make_user("root", is_staff=True, is_superuser=True)
    make_team("Maths", root)
    budget_delete(budget=budget_set(user=root, period="day", limit="1000", actor=root), actor=root)
    assert [(b.user_id, b.limit) for b in Budget.objects.all()] == [(user.pk, D("7"))]


def test_the_budget_of_an_account_that_outranks_the_operator_is_refused_to_them_and_changes_nothing(
    make_staff, make_team, make_user
):
    from accounts.admin_services import OutranksOperator
    from accounts.models import AuditEvent
    from billing.budgets import budget_delete

    staff = make_staff("billing.add_budget", "billing.change_budget", "billing.delete_budget")
    root = make_user("root", is_staff=True, is_superuser=True)
    existing = budget_set(user=root, period="month", limit="500")  # the system (a command) may
    for period in ("month", "day"):  # a change, and a new one
        with pytest.raises(OutranksOperator) as refused:
            budget_set(user=root, period=period, limit="0", actor=staff)
        assert refused.value.users == [root]
    with pytest.raises(OutranksOperator):
        budget_delete(budget=existing, actor=staff)
    assert [(b.period, b.limit) for b in Budget.objects.all()] == [("month", D("500"))]
    assert not AuditEvent.objects.filter(actor_id=staff.pk).exists()

    team = make_team("Ops", root)  # a team's budget binds its superuser members too: not refused
    budget_delete(budget=budget_set(team=team, period="day", limit="0", actor=staff), actor=staff)
    other_root = make_user("root2", is_staff=True, is_superuser=True)
    budget_delete(budget=budget_set(user=root, period="day", limit="0", actor=other_root), actor=other_root)


# --- Concurrency: real threads, real transactions (SQLite by default, Postgres with DATABASE_URL) ---


def _in_threads(n: int, work):
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_thirty_concurrent_reservations_admit_at_most_ten_worst_cases(make_user, make_team):
    user = make_user("racer")
    team = make_team("racers", user)
    price = price_for(model_id="openai:gpt-4o")
    worst = worst_case_cost(price=price, input_tokens=2000, max_output_tokens=1000)  # 0.015 USD
    own = budget_set(user=user, period="day", limit=worst * 10)
    shared = budget_set(team=team, period="month", limit=worst * 50)

    results = _in_threads(30, lambda i: budget_reserve(user=user, amount=worst))

    admitted = [r for r in results if isinstance(r, uuid.UUID)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(admitted) == 10 and len(refused) == 20, results
    assert all((r.scope, r.period) == ("user", "day") for r in refused)
    assert fresh(own).reserved == worst * 10

    # The turns finish, also concurrently, each billed its full worst case.
    results = _in_threads(10, lambda i: budget_settle(reservation_id=admitted[i], actual=worst))
    assert results == [None] * 10
    own, shared = fresh(own), fresh(shared)
    assert (own.spent, own.reserved) == (worst * 10, D("0"))
    assert own.spent <= own.limit
    assert (shared.spent, shared.reserved) == (worst * 10, D("0"))


@pytest.mark.django_db(transaction=True)
def test_concurrent_settles_of_one_reservation_charge_once(make_user):
    user = make_user("twice")
    budget = budget_set(user=user, period="total", limit="10")
    rid = budget_reserve(user=user, amount=D("1"))
    results = _in_threads(8, lambda i: budget_settle(reservation_id=rid, actual=D("0.7")))
    assert results == [None] * 8
    assert (fresh(budget).spent, fresh(budget).reserved) == (D("0.7"), D("0"))


def _wait_until_a_session_waits_for_a_lock() -> None:
    """Return once another session of this database waits for a row or transaction lock."""
    import time

    with connection.cursor() as cursor:
        for _ in range(200):
            # Inside a transaction PostgreSQL keeps its first look at pg_stat_activity: drop it.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the second operator's save never waited for the first")


@pytest.mark.django_db(transaction=True)
def test_two_operators_setting_the_same_new_budget_at_once_both_succeed_and_the_last_stands(needs_postgres, make_user):
    # Neither sees a budget yet, so both create one: the second insert waits for the first on
    # budget_user_period_unique, then failed with an IntegrityError (a 500 in the admin).
    from django.db import transaction

    user = make_user("contested")
    inserted = threading.Event()
    results: dict = {}

    def first():
        try:
            with transaction.atomic():
                results["first"] = budget_set(user=user, period="month", limit="10")
                inserted.set()
                _wait_until_a_session_waits_for_a_lock()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results["first"] = exc
        finally:
            inserted.set()
            connection.close()

    def second():
        try:
            inserted.wait()
            results["second"] = budget_set(user=user, period="month", limit="20")
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results["second"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, Budget) for r in results.values()), results
    [budget] = Budget.objects.filter(user=user)
    assert budget.limit == D("20") and results["second"].pk == budget.pk


def test_refusals_survive_pickling_across_processes():
    import pickle

    from billing.limits import RateLimited

    exceeded = BudgetExceeded(scope="team", name="ops", period="day", limit=D("2"), spent=D("2"), reserved=D("0.5"))
    assert pickle.loads(pickle.dumps(exceeded)) == exceeded
    limited = RateLimited(retry_after=12, limit="tokens_per_minute")
    assert pickle.loads(pickle.dumps(limited)) == limited


def test_a_budget_limit_with_zeros_past_the_stored_places_is_the_same_limit(user):
    budget = budget_set(user=user, period="day", limit="2.500000000000")
    assert budget.limit == D("2.5")


@pytest.mark.parametrize("scope", ["user", "team"])
def test_a_budget_set_while_a_call_is_in_flight_holds_and_charges_that_call(user, make_team, scope):
    """The call started before the budget existed: it has no ledger row yet (that is written
    when it settles), so the budget's starting spend cannot count it. Without taking over its
    hold, the budget would never see that call's cost, and would let new calls spend its room."""
    team = make_team("ops", user)
    rid = budget_reserve(user=user, amount=D("1"))
    owner = {"user": user} if scope == "user" else {"team": team}
    budget = budget_set(**owner, period="day", limit="1.5")
    assert fresh(budget).reserved == D("1")
    with pytest.raises(BudgetExceeded):
        budget_reserve(user=user, amount=D("1"))

    usage_record(**usage_kwargs(user, cost=D("0.8")))
    budget_settle(reservation_id=rid, actual=D("0.8"))

    assert (fresh(budget).spent, fresh(budget).reserved) == (D("0.8"), D("0"))


@pytest.mark.django_db(transaction=True)
def test_a_budget_set_while_calls_settle_counts_each_call_exactly_once(make_user):
    """Each call is counted either by the ledger read that starts the budget (settled first)
    or by its settlement (settled after): never both, never neither."""
    from django.db import transaction

    user = make_user("busy")
    rids = [budget_reserve(user=user, amount=D("1")) for _ in range(12)]

    def work(i):
        if i == len(rids):
            return budget_set(user=user, period="month", limit="100").pk
        with transaction.atomic():
            usage_record(**usage_kwargs(user, cost=D("0.1") * (i + 1)))
            budget_settle(reservation_id=rids[i], actual=D("0.1") * (i + 1))

    results = _in_threads(len(rids) + 1, work)
    budget = Budget.objects.get(pk=results[-1])
    assert (budget.spent, budget.reserved) == (sum(D("0.1") * (i + 1) for i in range(12)), D("0"))


def test_a_refusal_with_room_left_says_the_reply_could_cost_more_not_that_the_budget_is_used_up(user, make_team):
    """Nothing spent, but one reply's worst case is more than the limit (or than what holds
    leave): "used up" would be false, and would not say what to do."""
    budget_set(user=user, period="day", limit="0.01")
    with pytest.raises(BudgetExceeded) as refused:
        budget_reserve(user=user, amount=D("0.05"))
    message = refused.value.message
    assert "used up" not in message
    assert "0.05" in message and "0.01" in message

    team = make_team("ops", user)
    budget_set(team=team, period="week", limit="1")
    rid = budget_reserve(user=user, amount=D("0.009"))
    budget_settle(reservation_id=rid, actual=D("0.009"))
    with pytest.raises(BudgetExceeded) as used_up:
        budget_reserve(user=user, amount=D("0.002"))
    assert "used up" not in used_up.value.message  # 0.001 left: still not used up
    held = budget_reserve(user=user, amount=D("0.001"))
    with pytest.raises(BudgetExceeded) as busy:
        budget_reserve(user=user, amount=D("0.001"))
    assert "held by replies being written" in busy.value.message
    budget_settle(reservation_id=held, actual=D("0.001"))
    with pytest.raises(BudgetExceeded) as used_up:
        budget_reserve(user=user, amount=D("0.001"))
    assert "used up" in used_up.value.message


@pytest.mark.parametrize("limit", ["0.00003", "12.345"])
def test_a_refusal_names_the_limit_as_it_was_set_not_rounded_to_cents(user, limit):
    # A limit of 0.00003 was told as "(0.00 USD)", a budget of nothing; 12.345 as 12.35.
    budget_set(user=user, period="day", limit=limit)
    rid = budget_reserve(user=user, amount=D(limit))
    budget_settle(reservation_id=rid, actual=D(limit))
    with pytest.raises(BudgetExceeded) as used_up:
        budget_reserve(user=user, amount=D("0.00001"))
    assert f"({limit} USD)" in used_up.value.message
