"""Budgets and reservations: a budget is never overspent by concurrent or streamed calls.

Before a provider call the turn reserves the call's worst case (counted input plus max output at
the model's price) on EVERY budget covering the user — their own and each of their teams' — in
one transaction with the budget rows locked (SELECT ... FOR UPDATE in pk order on Postgres; on
SQLite the IMMEDIATE transaction holds the database write lock from BEGIN, which serializes the
same read-check-write). After the call it settles to the real cost: the hold is released and the
actual cost added to each budget's spend. Spend lives on the budget rows, fed only by settle, so
deleting conversations (or erasing a user's ledger link) never lowers it.

Who may set or remove a budget: anyone the entry point lets in (the admin's permissions), except
that a budget covering the operator themselves (their own, or one of a team they belong to) is a
superuser's to change (budget_locked_for); the system (no actor: commands, tasks) may always.
"""

from __future__ import annotations

import datetime as dt
import uuid
import zoneinfo
from dataclasses import dataclass, field, fields
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.translation import gettext as _

from .money import MONEY_PLACES, ZERO, money_str, parse_decimal, quantize_money

# Operators type limits by hand: a per-person budget above this is a typo, not a policy.
MAX_BUDGET_LIMIT = Decimal("1000000")
# A reservation outlives the longest provider call by this much before the expiry task frees it.
RESERVATION_MARGIN_SECONDS = 300
WARN_RATIO_PLACES = Decimal("0.001")  # billing.models.Budget.warn_ratio
_PERIOD_ORDER = {"day": 0, "week": 1, "month": 2, "total": 3}


@dataclass
class BudgetExceeded(Exception):
    scope: str  # "user" | "team"
    name: str  # username or team name
    period: str  # day | week | month | total
    limit: Decimal
    spent: Decimal
    reserved: Decimal = field(default=ZERO)  # held right now by calls in flight
    amount: Decimal = field(default=ZERO)  # what the refused call asked to hold (its worst case)

    @property
    def message(self) -> str:
        """One line for the user, naming the budget that blocked and why: used up, held by
        replies being written, or too small for this reply's worst case (then "used up" would
        be false, and would not tell them to ask for shorter replies)."""
        left = max(ZERO, self.limit - self.spent - self.reserved)
        values = {
            "name": self.name,
            "period": _period_label(self.period),
            "limit": money_str(self.limit),
            "amount": money_str(self.amount),
            "left": money_str(left),
        }
        team = self.scope == "team"
        if self.spent >= self.limit or self.amount <= 0:
            if team:
                return _("The %(period)s budget of team %(name)s (%(limit)s USD) is used up.") % values
            return _("Your %(period)s budget (%(limit)s USD) is used up.") % values
        if left <= 0:
            if team:
                return _(
                    "The rest of the %(period)s budget of team %(name)s (%(limit)s USD) is held by replies being "
                    "written: try again when they finish."
                ) % values
            return _(
                "The rest of your %(period)s budget (%(limit)s USD) is held by replies being written: "
                "try again when they finish."
            ) % values
        if team:
            return _(
                "This reply could cost up to %(amount)s USD, more than the %(left)s USD left of the %(period)s "
                "budget of team %(name)s (%(limit)s USD). Ask for shorter replies (maximum tokens)."
            ) % values
        return _(
            "This reply could cost up to %(amount)s USD, more than the %(left)s USD left of your %(period)s "
            "budget (%(limit)s USD). Ask for shorter replies (maximum tokens)."
        ) % values

    def __reduce__(self):
        # Exception's default pickling passes no arguments; a dataclass needs its fields.
        return (self.__class__, tuple(getattr(self, f.name) for f in fields(self)))

    def __str__(self) -> str:
        return f"budget_exceeded: {self.scope} {self.name} {self.period} limit={self.limit} spent={self.spent}"


class BudgetError(ValueError):
    """Bad input to budget_set: one sentence, in the language active when raised (the
    operator's, in the admin), safe to show."""


class BudgetCoversOperator(PermissionDenied):
    """The budget covers the operator (it is their own, or their team's), who may not change the
    constraints on their own spending. A PermissionDenied, so a refusal that reaches the admin
    answers 403 and undoes its transaction. One line, safe to show."""

    def __init__(self) -> None:
        super().__init__(_("This budget applies to you (it is yours, or your team's): only a superuser can set, change or remove it."))

    @property
    def message(self) -> str:
        return self.args[0]


def budget_locked_for(*, actor, user=None, team=None) -> bool:
    """Whether the budgets of `user` or `team` (exactly one) cover `actor`, who may not change
    them: only a superuser sets, raises, lowers or removes a budget on their own spending, or
    their team's; anyone may be given a new one by someone else. The rule of whose constraints
    bind whom is accounts' (admin_services.constraints_locked_for, also used for rate limits and
    team memberships)."""
    from accounts.admin_services import constraints_locked_for  # accounts' admin imports billing

    return constraints_locked_for(actor=actor, user=user, team=team)


def budget_owner_outranks(*, actor, user) -> bool:
    """Whether `user` (a user budget's owner) can do more than `actor`, who then may not set,
    change or remove their budget: a $0 budget would lock an administrator out of the chat. The
    rule is accounts' (admin_services.users_outranking, also behind Disable and Erase). A team's
    budgets bind every member, superusers included, and are not refused for that."""
    from accounts.admin_services import users_outranking  # accounts' admin imports billing

    return user is not None and bool(users_outranking(actor=actor, users=[user]))


def budget_change_check(*, actor, user=None, team=None) -> None:
    """Raise BudgetCoversOperator when `actor` may not change the budgets of `user` or `team`
    because they cover `actor`; accounts' OutranksOperator when `user` can do more than `actor`."""
    from accounts.admin_services import OutranksOperator

    if budget_locked_for(actor=actor, user=user, team=team):
        raise BudgetCoversOperator
    if budget_owner_outranks(actor=actor, user=user):
        raise OutranksOperator([user])


def _period_label(period: str) -> str:
    return {"day": _("daily"), "week": _("weekly"), "month": _("monthly"), "total": _("total")}.get(period, period)


def time_zone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


def period_bounds(*, period: str, tz_name: str, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """[start, end) of the calendar period holding `now`, at midnight in the budget's time zone;
    (None, None) for "total", which never rolls over."""
    if period == "total":
        return None, None
    tz = time_zone(tz_name)
    today = now.astimezone(tz).date()
    if period == "day":
        first, following = today, today + timedelta(days=1)
    elif period == "week":  # ISO weeks: Monday to Sunday
        first = today - timedelta(days=today.weekday())
        following = first + timedelta(days=7)
    elif period == "month":
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return (
        dt.datetime.combine(first, dt.time(0), tzinfo=tz),
        dt.datetime.combine(following, dt.time(0), tzinfo=tz),
    )


def _new_period_start(budget, now: dt.datetime) -> dt.datetime | None:
    """The start of `budget`'s current period when its stored spend belongs to one that has ended
    (it rolls over at its next reservation or settlement; until then it reads as fresh); None
    while the stored period is the current one, or for a total budget."""
    start, _end = period_bounds(period=budget.period, tz_name=budget.time_zone, now=now)
    if start is None or (budget.period_start is not None and budget.period_start >= start):
        return None
    return start


def _roll_over(budget, now: dt.datetime) -> bool:
    """Start a new period on `budget` (in memory) when `now` is past its current one. Holds
    carry over: those calls settle into the period they finish in."""
    start = _new_period_start(budget, now)
    if start is None:
        return False
    budget.period_start = start
    budget.spent = ZERO
    return True


def _period_ended(budget, now: dt.datetime) -> bool:
    """Whether `budget`'s stored spend belongs to a period that has ended."""
    return _new_period_start(budget, now) is not None


def budget_spent_now(budget, *, now: dt.datetime | None = None) -> Decimal:
    """What `budget` has spent in its current period, without writing: zero when the stored
    spend is a period that has ended. Every page showing a budget's spend reads it through this
    (or budgets_with_spent_now), as the budget check does."""
    return ZERO if _period_ended(budget, now or timezone.now()) else budget.spent


def budget_remaining_now(budget, *, now: dt.datetime | None = None) -> Decimal:
    """What a new reply may still hold on `budget`, as budget_reserve decides it: the limit less
    what was spent in the current period and what replies being written hold now (released,
    less their real cost, when they end). Never negative. The usage API's `remaining` and the
    admin's "left" both read it here."""
    return max(ZERO, budget.limit - budget_spent_now(budget, now=now) - budget.reserved)


def budgets_with_spent_now(queryset, *, now: dt.datetime | None = None):
    """`queryset` of budgets annotated with `spent_now` (budget_spent_now, in SQL), for lists
    that filter or sort on it. The periods end at each budget's own midnight: one condition per
    (period, time zone) in use, a handful."""
    from django.db.models import Case, DecimalField, F, Value, When

    from .models import MONEY, Budget

    now = now or timezone.now()
    ended = Q(pk__in=[])
    pairs = Budget.objects.exclude(period="total").values_list("period", "time_zone").distinct().order_by()
    for period, tz_name in pairs:
        start, _end = period_bounds(period=period, tz_name=tz_name, now=now)
        ended |= Q(period=period, time_zone=tz_name) & (Q(period_start__isnull=True) | Q(period_start__lt=start))
    money = DecimalField(**MONEY)
    return queryset.annotate(
        spent_now=Case(When(ended, then=Value(ZERO, output_field=money)), default=F("spent"), output_field=money)
    )


def _covering(user):
    from .models import Budget

    # The user's teams as a subquery: one statement, not a read of the team ids first. Under
    # select_for_update only the budget rows are locked (the subquery's rows are not).
    return Budget.objects.filter(Q(user=user) | Q(team__in=user.teams.all()))


def _owner_name(budget) -> str:
    return budget.user.get_username() if budget.user_id else budget.team.name


def budget_reserve(*, user, amount: Decimal, ttl_seconds: float | None = None) -> uuid.UUID:
    """Atomically hold `amount` on every budget covering `user`; raises BudgetExceeded naming the
    first budget that cannot take it (and holds nothing then). Returns the reservation id.

    A free call (amount 0, e.g. the demo model) is never refused. A reservation not settled
    within `ttl_seconds` (default LLM_TOTAL_TIMEOUT + 5 minutes) is released by
    billing.tasks.reservations_expire."""
    from .models import Reservation

    amount = quantize_money(amount)
    if amount < 0:
        raise ValueError("a reservation cannot be negative")
    now = timezone.now()
    ttl = _hold_seconds(ttl_seconds)
    with transaction.atomic():
        # Locked in pk order so two reservations over overlapping budgets cannot deadlock.
        budgets = list(_covering(user).select_for_update().order_by("pk"))
        for budget in budgets:
            _roll_over(budget, now)
        blocked = [b for b in budgets if amount > 0 and b.spent + b.reserved + amount > b.limit]
        if blocked:
            # Name the budget with the least room: the one the user must hear about.
            worst = min(blocked, key=lambda b: (b.limit - b.spent - b.reserved, b.pk))
            raise BudgetExceeded(
                scope=worst.scope,
                name=_owner_name(worst),
                period=worst.period,
                limit=worst.limit,
                spent=worst.spent,
                reserved=worst.reserved,
                amount=amount,
            )
        for budget in budgets:
            budget.reserved += amount
            budget.save(update_fields=["reserved", "spent", "period_start"])
        reservation = Reservation.objects.create(
            user=user, amount=amount, created_at=now, expires_at=now + timedelta(seconds=ttl)
        )
        if budgets:
            reservation.budgets.add(*budgets)
    return reservation.id


def _hold_seconds(ttl_seconds: float | None) -> float:
    return ttl_seconds if ttl_seconds is not None else settings.LLM_TOTAL_TIMEOUT + RESERVATION_MARGIN_SECONDS


def reservation_keep(*, reservation_id: uuid.UUID, ttl_seconds: float | None = None) -> bool:
    """Keep a hold for one more provider call: its expiry is moved to `ttl_seconds` (default: as
    budget_reserve sets it) from now, never nearer. A hold lasts one call; a reply failing over
    from key to key makes several, and without this its hold would be released by
    reservations_expire while its last call still ran, the room given to other replies, and its
    settle then pass the limit. False when it is no longer held (settled, or released already):
    then no call may be made on it."""
    from .models import Reservation

    until = timezone.now() + timedelta(seconds=_hold_seconds(ttl_seconds))
    return bool(
        Reservation.objects.filter(pk=reservation_id, state=Reservation.State.HELD).update(
            expires_at=Greatest("expires_at", Value(until))
        )
    )


def budget_settle(*, reservation_id: uuid.UUID, actual: Decimal) -> None:
    """Release the hold and add `actual` to each budget's spend. Idempotent: a second settle
    does nothing. A reservation already expired (its hold released) still gets its real cost
    charged, so a late settle is never free. Call it after billing.ledger.usage_record when
    both run in one transaction (see the ledger's lock-order note)."""
    from .models import Budget, Reservation

    actual = quantize_money(actual)
    if actual < 0:
        raise ValueError("a settled cost cannot be negative")
    now = timezone.now()
    with transaction.atomic():
        reservation = Reservation.objects.select_for_update().get(pk=reservation_id)
        if reservation.state == Reservation.State.SETTLED:
            return
        budgets = list(Budget.objects.select_for_update(of=("self",)).filter(reservations=reservation).order_by("pk"))
        for budget in budgets:
            _roll_over(budget, now)
            if reservation.state == Reservation.State.HELD:
                budget.reserved = max(ZERO, budget.reserved - reservation.amount)
            budget.spent += actual
            budget.save(update_fields=["reserved", "spent", "period_start"])
        reservation.state = Reservation.State.SETTLED
        reservation.settled_amount = actual
        reservation.settled_at = now
        reservation.save(update_fields=["state", "settled_amount", "settled_at"])


def reservations_expire(*, now: dt.datetime | None = None, batch: int = 500) -> int:
    """Release the holds of reservations past their expiry (their process died before settling).
    Nothing is charged: a dead process left no usage we could price. Returns how many."""
    from .models import Budget, Reservation

    now = now or timezone.now()
    released = 0
    candidates = list(
        Reservation.objects.filter(state=Reservation.State.HELD, expires_at__lt=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:batch]
    )
    for pk in candidates:
        # One short transaction each, same lock order as settle (reservation, then budgets).
        with transaction.atomic():
            reservation = Reservation.objects.select_for_update().filter(pk=pk).first()
            if reservation is None or reservation.state != Reservation.State.HELD or reservation.expires_at >= now:
                continue  # settled meanwhile
            for budget in Budget.objects.select_for_update(of=("self",)).filter(reservations=reservation).order_by("pk"):
                budget.reserved = max(ZERO, budget.reserved - reservation.amount)
                budget.save(update_fields=["reserved"])
            reservation.state = Reservation.State.EXPIRED
            reservation.save(update_fields=["state"])
            released += 1
    return released


@dataclass(frozen=True)
class BudgetStatus:
    scope: str
    name: str
    period: str
    limit: Decimal
    spent: Decimal
    reserved: Decimal
    remaining: Decimal  # what a new reply may still hold (budget_remaining_now)
    warn_ratio: Decimal
    warn: bool  # spent reached the warning threshold
    exceeded: bool  # spent reached the limit: used up until the period resets
    period_start: dt.datetime | None
    period_end: dt.datetime | None

    @property
    def held_up(self) -> bool:
        """Nothing remains, though the budget is not used up: replies being written hold the
        rest, and it frees up as they end."""
        return self.remaining <= 0 and not self.exceeded


def budget_status(*, user) -> list[BudgetStatus]:
    """Each budget covering `user` in its current period (a period that has ended reads as
    fresh, without writing): the user's own first, then their teams', shortest period first."""
    now = timezone.now()
    statuses = []
    for budget in _covering(user).select_related("user", "team"):
        start, end = period_bounds(period=budget.period, tz_name=budget.time_zone, now=now)
        spent = budget_spent_now(budget, now=now)
        statuses.append(
            BudgetStatus(
                scope=budget.scope,
                name=_owner_name(budget),
                period=budget.period,
                limit=budget.limit,
                spent=spent,
                reserved=budget.reserved,
                remaining=budget_remaining_now(budget, now=now),
                warn_ratio=budget.warn_ratio,
                warn=budget.limit > 0 and spent >= budget.limit * budget.warn_ratio,
                exceeded=spent >= budget.limit,
                period_start=start,
                period_end=end,
            )
        )
    statuses.sort(key=lambda s: (s.scope != "user", s.name.lower(), _PERIOD_ORDER[s.period]))
    return statuses


def _spent_so_far(*, user=None, team=None, since: dt.datetime | None) -> Decimal:
    """What the owner already spent in the running period, from the ledger: a budget set in the
    middle of a month starts from the month's real spend, not from zero."""
    from .models import UsageRecord

    records = UsageRecord.objects.all()
    if since is not None:
        records = records.filter(created_at__gte=since)
    if user is not None:
        records = records.filter(user=user)
    else:
        # Erased members' records keep their team but lose their user: counted through the team
        # they were filed under (their first team; for another team of theirs that link is gone).
        records = records.filter(Q(user__in=team.members.all()) | Q(user__isnull=True, team=team))
    return quantize_money(records.aggregate(total=Sum("cost"))["total"] or ZERO)


def budget_limit_validate(limit: object) -> Decimal:
    """The checked limit of a budget, whoever it is for; raises BudgetError. Forms that take a
    limit for several owners at once (the admin's "set a budget" action) check it here first."""
    value = parse_decimal(limit)
    if value is None:
        raise BudgetError(_("The limit must be a number of USD, such as 25 or 12.50."))
    if value < 0:
        raise BudgetError(_("The limit cannot be negative."))
    if value > MAX_BUDGET_LIMIT:
        raise BudgetError(_("The limit cannot be above %(max)s USD.") % {"max": MAX_BUDGET_LIMIT})
    exact = quantize_money(value)
    if exact != value:
        # Never rounded: a limit is what a person may spend, and a stored figure other than the
        # one typed would be a surprise (as with prices, trailing zeros change nothing).
        raise BudgetError(
            _("The limit cannot have more than %(places)s decimal places.") % {"places": -MONEY_PLACES.as_tuple().exponent}
        )
    return exact


def budget_validate(*, user=None, team=None, period: str, limit: object, warn_ratio: object = None):
    """The checked (limit, warn_ratio or None) for budget_set; raises BudgetError."""
    from .models import Budget

    if (user is None) == (team is None):
        raise BudgetError(_("A budget belongs to exactly one user or one team: choose one of them."))
    if period not in Budget.Period.values:
        raise BudgetError(_("The period must be one of %(periods)s.") % {"periods": ", ".join(Budget.Period.values)})
    value = budget_limit_validate(limit)
    ratio = None
    if warn_ratio is not None and warn_ratio != "":
        ratio = parse_decimal(warn_ratio)
        # Checked again after rounding to the column's 3 places: 0.0004 would be stored as 0,
        # a threshold that warns before anything is spent.
        if ratio is not None and Decimal("0") < ratio <= Decimal("1"):
            ratio = ratio.quantize(WARN_RATIO_PLACES, rounding=ROUND_HALF_UP)
        if ratio is None or not Decimal("0") < ratio <= Decimal("1"):
            raise BudgetError(_("The warning threshold must be a fraction above 0 and at most 1, such as 0.8."))
    return value, ratio


def budget_set(
    *, user=None, team=None, period: str, limit: object, warn_ratio: object = None, actor=None, ip_address: str | None = None
):
    """Create or change the `period` budget of a user or a team (exactly one). The running
    spend of an existing budget is kept; a new one starts from the ledger's spend of the
    running period and holds what the calls in flight reserved. Raises BudgetError (changing
    nothing) on bad input, BudgetCoversOperator when the budget covers `actor` and they may not
    change it (budget_locked_for), and accounts' OutranksOperator when its user can do more than
    `actor` (budget_owner_outranks). Audited."""
    from accounts.audit import audit_record

    from .models import Budget, Reservation

    budget_change_check(actor=actor, user=user, team=team)
    value, ratio = budget_validate(user=user, team=team, period=period, limit=limit, warn_ratio=warn_ratio)
    now = timezone.now()
    with transaction.atomic():
        owner = {"user": user} if user is not None else {"team": team}
        budget = Budget.objects.select_for_update().filter(**owner, period=period).first()
        created = budget is None
        before = None if created else str(budget.limit)
        in_flight = []
        if created:
            # Calls already in flight have no ledger row until they settle, so the starting
            # spend below cannot count them: the new budget takes over their holds, and their
            # settlement charges it. Locked before the ledger is read: a call that settles
            # meanwhile is either in that read (committed first) or waits and settles here.
            in_flight = list(
                Reservation.objects.select_for_update()
                .filter(Q(user=user) if user is not None else Q(user__in=team.members.all()), state=Reservation.State.HELD)
                .order_by("pk")
            )
            tz_name = getattr(user, "timezone", "UTC") if user is not None else "UTC"
            start, _end = period_bounds(period=period, tz_name=tz_name, now=now)
            budget = Budget(
                **owner,
                period=period,
                limit=value,
                time_zone=tz_name,
                period_start=start,
                spent=_spent_so_far(user=user, team=team, since=start),
                reserved=sum((r.amount for r in in_flight), ZERO),
                created_at=now,
            )
            if ratio is not None:
                budget.warn_ratio = ratio
            # The unique owner-and-period rule is left to the database: the values were checked
            # above, and it can only clash with a concurrent budget_set, handled below.
            budget.full_clean(validate_constraints=False)
            try:
                with transaction.atomic():  # a savepoint: only the insert is undone if it loses
                    budget.save(force_insert=True)
                    if in_flight:
                        budget.reservations.add(*in_flight)
            except IntegrityError:
                # Another operator created this budget at the same moment (neither saw one; the
                # unique constraint made this insert wait for theirs): change theirs instead,
                # as if this call had come second, which it did. Theirs took over the holds.
                budget = Budget.objects.select_for_update().filter(**owner, period=period).first()
                if budget is None:
                    raise
                created, before = False, str(budget.limit)
        if not created:
            budget.limit = value
            if ratio is not None:
                budget.warn_ratio = ratio
            budget.full_clean()
            budget.save()
        audit_record(
            action="budget.set",
            actor=actor,
            target=budget,
            ip_address=ip_address,
            data={
                "scope": budget.scope,
                "owner_id": budget.user_id or budget.team_id,
                "period": period,
                "limit": str(value),
                "previous_limit": before,
                "warn_ratio": str(budget.warn_ratio),
            },
        )
    return budget


def budget_delete(*, budget, actor=None) -> None:
    """Remove a budget (calls in flight settle without it). Audited. Raises BudgetCoversOperator,
    removing nothing, when the budget covers `actor` and they may not change it, and accounts'
    OutranksOperator when its user can do more than `actor`."""
    from accounts.audit import audit_record

    budget_change_check(actor=actor, **({"user": budget.user} if budget.user_id else {"team": budget.team}))
    with transaction.atomic():
        audit_record(
            action="budget.delete",
            actor=actor,
            target=budget,
            data={"scope": budget.scope, "owner_id": budget.user_id or budget.team_id, "period": budget.period},
        )
        budget.delete()


def budgets_delete_for_team(*, team, actor=None) -> int:
    """Before a team is deleted: remove its budgets one by one through budget_delete, so each
    deletion is audited (the team's CASCADE alone would remove them silently). Returns how many."""
    from .models import Budget

    with transaction.atomic():
        budgets = list(Budget.objects.filter(team=team).order_by("pk"))
        for budget in budgets:
            budget_delete(budget=budget, actor=actor)
    return len(budgets)
