"""The usage ledger and its daily rollup.

One append-only UsageRecord per provider call (retries and failovers included), and in the SAME
transaction an upsert of the DailyUsage row for (UTC day, user, team, provider, model) and of the
dashboard's per-key and latency rollups (billing.stats), so the rollups are exact by construction
and dashboards never scan the ledger. `rollup_differences`
proves it (manage.py check_rollups).

Lock order, to stay deadlock-free beside billing.budgets: a turn's closing transaction calls
usage_record (rollup row) BEFORE budget_settle (reservation, then budgets in pk order).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from .money import ZERO, quantize_money
from .stats import stats_record_call

_PRIMARY_TEAM = object()  # sentinel: attribute the call to the user's first team


def primary_team_id(*, user) -> int | None:
    """The team a user's usage is filed under in the ledger: the team they joined first.
    (Budgets are different: every team of the user covers every call.)"""
    if user is None:
        return None
    membership = user.teammembership_set.order_by("joined_at", "pk").values_list("team_id", flat=True).first()
    return membership


def attempts_recorded(*, message_id: uuid.UUID) -> int:
    """The highest attempt the ledger has a row of for this message (0: none)."""
    from .models import UsageRecord

    return UsageRecord.objects.filter(message_id=message_id).aggregate(last=Max("attempt"))["last"] or 0


def ledger_owner(*, user, team_id, conversation_id, message_id) -> dict:
    """Who a ledger row is filed under, as usage_record's owner arguments; call it first in the
    writing transaction. The user row is locked: an erasure (accounts.data_rights, which locks
    the same row first too) either deleted the account before this (then the row is written
    without the person, the conversation or the message, as erasure leaves every row, and the
    money stays with the team) or waits until this row is committed and then anonymises it with
    the rest. Without the lock, a row could be written for a user deleted a moment before, and
    fail the foreign key at commit.

    FOR NO KEY UPDATE, not FOR UPDATE: it still excludes the erasure's DELETE, but not the
    FOR KEY SHARE that Postgres takes on the user row to check every foreign key to it. A plain
    FOR UPDATE here deadlocked against a concurrent budget_reserve of the same user (it holds
    the budget row and checks its reservation's user key at commit; this holds the user row
    and waits for the budget row in budget_settle).

    The team (taken as the call started) is locked the same way, after the user: a team deleted
    while the call ran (accounts.services.team_delete, which locks its row first too) would fail
    the row's foreign key at commit, and with it the reply's closing save and its settlement. The
    row is then filed under no team, as the deletion filed the team's older rows."""
    from django.contrib.auth import get_user_model

    from accounts.models import Team  # accounts' models point at billing's: imported when needed

    present = user is not None and get_user_model().objects.select_for_update(no_key=True).filter(pk=user.pk).exists()
    if team_id is not None and not Team.objects.select_for_update(no_key=True).filter(pk=team_id).exists():
        team_id = None
    if not present:
        return {"user": None, "team_id": team_id, "conversation_id": None, "message_id": None}
    return {"user": user, "team_id": team_id, "conversation_id": conversation_id, "message_id": message_id}


def _day_of(moment: dt.datetime) -> dt.date:
    # Rollup days are UTC days: one calendar for every user, so team and site totals add up.
    return moment.astimezone(dt.UTC).date()


def usage_record(
    *,
    user,
    conversation_id: uuid.UUID | None,
    message_id: uuid.UUID | None,
    attempt: int,
    provider: str,
    model: str,
    key_id: uuid.UUID | None,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    cost: Decimal,
    estimated: bool,
    ttft_ms: int | None,
    latency_ms: int | None,
    outcome: str,
    error_kind: str = "",
    team_id: int | None | object = _PRIMARY_TEAM,
    at: dt.datetime | None = None,
):
    """Append one ledger row (idempotent on message_id+attempt) and upsert the daily rollup in the
    same transaction. `provider` and `model` are kept apart: "openai" and "gpt-4o-mini", never
    "openai:gpt-4o-mini" in `model`. Returns the UsageRecord (the existing one on a repeat)."""
    from .models import ProviderKey, UsageRecord

    if outcome not in UsageRecord.Outcome.values:
        raise ValueError(f"unknown outcome {outcome!r}")
    if not isinstance(attempt, int) or attempt < 1:
        raise ValueError("attempt counts from 1")
    for n in (input_tokens, output_tokens, cached_tokens):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("token counts must be non-negative integers")
    cost = quantize_money(cost)
    if cost < 0:
        raise ValueError("cost cannot be negative")
    if team_id is _PRIMARY_TEAM:
        team_id = primary_team_id(user=user)

    with transaction.atomic():
        # A key deleted while its call ran (key_delete, from the admin) would fail the row's
        # foreign key, and with it the reply's closing save: the row keeps its numbers without the
        # link, as key_delete leaves the older ones; the per-key statistics keep the bare id.
        linked_key_id = key_id if key_id is not None and ProviderKey.objects.filter(pk=key_id).exists() else None
        record = UsageRecord(
            created_at=at or timezone.now(),
            user=user,
            team_id=team_id,
            conversation_id=conversation_id,
            message_id=message_id,
            attempt=attempt,
            provider=provider,
            model=model,
            key_id=linked_key_id,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_tokens=cached_tokens,
            cost=cost,
            estimated=estimated,
            ttft_ms=ttft_ms,
            latency_ms=latency_ms,
            outcome=outcome,
            error_kind=error_kind or "",
        )
        try:
            # A savepoint: a concurrent writer of the same (message, attempt) wins the unique
            # constraint, and this call returns its row without touching the rollup.
            with transaction.atomic():
                record.save(force_insert=True)
        except IntegrityError:
            if message_id is None:
                raise
            return UsageRecord.objects.get(message_id=message_id, attempt=attempt)
        _rollup_add(record)
        # The dashboard's per-key and latency rollups, on the same UTC day as the DailyUsage row:
        # a call and all its statistics commit together or not at all.
        stats_record_call(
            day=_day_of(record.created_at),
            provider=record.provider,
            key_id=key_id,
            ttft_ms=record.ttft_ms,
            latency_ms=record.latency_ms,
            outcome=record.outcome,
        )
    return record


def _rollup_add(record) -> None:
    from .models import DailyUsage, UsageRecord

    key = {
        "day": _day_of(record.created_at),
        "user_id": record.user_id,
        "team_id": record.team_id,
        "provider": record.provider,
        "model": record.model,
    }
    increments = {
        "requests": F("requests") + 1,
        "errors": F("errors") + (1 if record.outcome == UsageRecord.Outcome.ERROR else 0),
        "input_tokens": F("input_tokens") + record.input_tokens,
        "output_tokens": F("output_tokens") + record.output_tokens,
        "cached_tokens": F("cached_tokens") + record.cached_tokens,
        "cost": F("cost") + record.cost,
    }
    # `filter(team_id=None)` means IS NULL in the ORM, which is what we want here.
    matching = DailyUsage.objects.filter(**key)
    for _ in range(3):
        # UPDATE ... SET x = x + n is atomic on its own; it only misses when the row is new.
        if record.user_id is not None:
            # Unique (dailyusage_unique): this updates at most one row.
            updated = matching.update(**increments)
        else:
            # Erased users' rows (user NULL) are not unique: add to the oldest one.
            target = list(matching.order_by("pk").values_list("pk", flat=True)[:1])
            updated = DailyUsage.objects.filter(pk__in=target).update(**increments) if target else 0
        if updated:
            return
        try:
            with transaction.atomic():
                DailyUsage.objects.create(
                    **key,
                    requests=1,
                    errors=1 if record.outcome == UsageRecord.Outcome.ERROR else 0,
                    input_tokens=record.input_tokens,
                    output_tokens=record.output_tokens,
                    cached_tokens=record.cached_tokens,
                    cost=record.cost,
                )
            return
        except IntegrityError:
            # Another transaction inserted this key first and has committed: update it instead.
            continue
    raise RuntimeError("could not upsert the daily usage rollup")


@dataclass(frozen=True)
class RollupDifference:
    day: dt.date
    user_id: int | None
    team_id: int | None
    provider: str
    model: str
    field: str
    ledger: object
    rollup: object


_SUMMED = ("requests", "errors", "input_tokens", "output_tokens", "cached_tokens", "cost")


def rollup_differences(*, since: dt.date | None = None) -> list[RollupDifference]:
    """Every (day, user, team, model, quantity) where the rollup and the ledger disagree; empty
    when they agree to the last decimal. Scans the ledger: for the check command, not pages."""
    from .models import DailyUsage, UsageRecord

    ledger_qs = UsageRecord.objects.annotate(day=TruncDate("created_at", tzinfo=dt.UTC))
    rollup_qs = DailyUsage.objects.all()
    if since is not None:
        ledger_qs = ledger_qs.filter(day__gte=since)
        rollup_qs = rollup_qs.filter(day__gte=since)
    group = ("day", "user_id", "team_id", "provider", "model")
    ledger = {
        tuple(row[g] for g in group): row
        for row in ledger_qs.values(*group).annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(outcome=UsageRecord.Outcome.ERROR)),
            input_tokens=Coalesce(Sum("input_tokens"), 0),
            output_tokens=Coalesce(Sum("output_tokens"), 0),
            cached_tokens=Coalesce(Sum("cached_tokens"), 0),
            cost=Sum("cost"),
        )
    }
    rollup = {
        tuple(row[g] for g in group): row
        for row in rollup_qs.values(*group).annotate(
            s_requests=Sum("requests"),
            s_errors=Sum("errors"),
            s_input_tokens=Sum("input_tokens"),
            s_output_tokens=Sum("output_tokens"),
            s_cached_tokens=Sum("cached_tokens"),
            s_cost=Sum("cost"),
        )
    }
    differences = []
    for key in sorted(set(ledger) | set(rollup), key=lambda k: tuple("" if v is None else str(v) for v in k)):
        a, b = ledger.get(key), rollup.get(key)
        for name in _SUMMED:
            left = a[name] if a else 0
            right = b[f"s_{name}"] if b else 0
            if name == "cost":
                left, right = quantize_money(left or ZERO), quantize_money(right or ZERO)
            else:
                left, right = int(left or 0), int(right or 0)
            if left != right:
                differences.append(RollupDifference(*key, field=name, ledger=left, rollup=right))
    return differences
