"""Data rights, the billing part: a person's usage for their export, and cutting their link to
the ledger on erasure (and a deleted team's, the same way).

Erasure never deletes money. Usage records and daily rollups stay, with the user (and the
conversation and message ids, which would point at deleted rows) removed, so every spend total,
the site's and each team's, is the same before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal

from django.db import transaction
from django.db.models import Count, F, Q, Sum

from .limits import user_key_prefix
from .models import Budget, DailyUsage, Reservation, UsageRecord

FORGET_BATCH = 1000  # ledger rows unlinked per UPDATE, the heartbeat called between two

USAGE_CSV_FIELDS = [
    "created_at",
    "provider",
    "model",
    "conversation_id",
    "message_id",
    "attempt",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "cost_usd",
    "estimated",
    "outcome",
    "error_kind",
    "latency_ms",
    "ttft_ms",
]


def usage_cache_prefixes(*, user_id: int) -> list[str]:
    """The user's rate-limit counters."""
    return [user_key_prefix(user_id)]


def usage_counts(*, user_id: int) -> dict[str, int]:
    return {
        "usage_records": UsageRecord.objects.filter(user_id=user_id).count(),
        "daily_rollups": DailyUsage.objects.filter(user_id=user_id).count(),
        "budgets": Budget.objects.filter(user_id=user_id).count(),
    }


def usage_export_rows(*, user_id: int, chunk_size: int = 1000) -> Iterator[dict]:
    """The user's ledger rows, oldest first, as the columns of usage.csv (no key names: the
    provider keys are the site's, not the person's)."""
    rows = (
        UsageRecord.objects.filter(user_id=user_id)
        .order_by("created_at", "id")
        .values(
            "created_at", "provider", "model", "conversation_id", "message_id", "attempt", "input_tokens",
            "output_tokens", "cached_tokens", "cost", "estimated", "outcome", "error_kind", "latency_ms", "ttft_ms",
        )
    )
    for row in rows.iterator(chunk_size=chunk_size):
        row["created_at"] = row["created_at"].isoformat()
        row["cost_usd"] = format(row.pop("cost"), "f")
        row["conversation_id"] = str(row["conversation_id"]) if row["conversation_id"] else ""
        row["message_id"] = str(row["message_id"]) if row["message_id"] else ""
        yield row


def _fold_daily_rows(rows, heartbeat: Callable[[], None] | None = None, **moved_to) -> int:
    """Move these rollup rows to the key `moved_to` says (user=None on erasure, team=None when a
    team is deleted). Where a row already exists for the resulting day/user/team/model (an earlier
    erasure, or the member's usage outside the team) the two are added together, because the
    rollup keeps one row per key (NULLS NOT DISTINCT, emulated: see billing.models.DailyUsage)."""
    moved = 0
    for row in list(rows.select_for_update().order_by("pk")):  # one row per day x user x model: small
        if heartbeat:
            heartbeat()
        key = {"day": row.day, "user_id": row.user_id, "team_id": row.team_id, "provider": row.provider, "model": row.model}
        key.update({f"{name}_id": value for name, value in moved_to.items()})
        # `filter(x_id=None)` means IS NULL in the ORM, which is what we want here.
        target = DailyUsage.objects.select_for_update().filter(**key).exclude(pk=row.pk).order_by("pk").first()
        if target is None:
            for name, value in moved_to.items():
                setattr(row, name, value)
            row.save(update_fields=list(moved_to))
        else:
            DailyUsage.objects.filter(pk=target.pk).update(
                requests=F("requests") + row.requests,
                errors=F("errors") + row.errors,
                input_tokens=F("input_tokens") + row.input_tokens,
                output_tokens=F("output_tokens") + row.output_tokens,
                cached_tokens=F("cached_tokens") + row.cached_tokens,
                cost=F("cost") + row.cost,
            )
            row.delete()
        moved += 1
    return moved


def _scrub_budget_admin_log(*, budget_ids: list[str], username: str) -> None:
    """The admin history names changed objects by their str(), and a budget's names its owner
    ("user <username> / month: ...", billing.models.Budget.__str__): keep the entries, drop the
    words. By id for the budgets there are; by that prefix for those an admin deleted earlier."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    entries = Q(object_id__in=budget_ids)
    if username:
        entries |= Q(object_repr__istartswith=f"user {username} /")
    LogEntry.objects.filter(entries, content_type=ContentType.objects.get_for_model(Budget)).update(
        object_repr="(erased budget)", change_message=""
    )


def usage_forget_user(*, user_id: int, username: str = "", heartbeat: Callable[[], None] | None = None) -> dict[str, int]:
    """Cut `user_id` out of the ledger, the rollup and reservations, keeping every amount; delete
    the user's own budgets (a limit on a person who no longer exists) and `username` in their
    admin history. Idempotent: a second run finds nothing and returns zeros. One transaction;
    `heartbeat` is called between batches of ledger rows and for each rollup row (an erasure
    renews its lease from it: years of usage can take longer than the lease)."""
    beat = heartbeat or (lambda: None)
    with transaction.atomic():
        records = 0
        while True:
            ids = list(UsageRecord.objects.filter(user_id=user_id).order_by().values_list("pk", flat=True)[:FORGET_BATCH])
            if not ids:
                break
            records += UsageRecord.objects.filter(pk__in=ids, user_id=user_id).update(
                user=None, conversation_id=None, message_id=None
            )
            beat()
        rollups = _fold_daily_rows(DailyUsage.objects.filter(user_id=user_id), heartbeat=beat, user=None)
        Reservation.objects.filter(user_id=user_id).update(user=None)
        budgets = Budget.objects.filter(user_id=user_id)
        _scrub_budget_admin_log(budget_ids=[str(pk) for pk in budgets.values_list("pk", flat=True)], username=username)
        _total, per_model = budgets.delete()
    return {
        "usage_records": records,
        "daily_rollups": rollups,
        "budgets": per_model.get(Budget._meta.label, 0),
    }


def usage_totals() -> dict[str, Decimal | int]:
    """Site-wide sums of the ledger and of the rollup (what erasure must leave unchanged)."""
    ledger = UsageRecord.objects.aggregate(
        cost=Sum("cost"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), rows=Count("id")
    )
    rollup = DailyUsage.objects.aggregate(
        cost=Sum("cost"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), requests=Sum("requests")
    )
    zero = Decimal("0")
    return {
        "ledger_cost": ledger["cost"] or zero,
        "ledger_input_tokens": ledger["input_tokens"] or 0,
        "ledger_output_tokens": ledger["output_tokens"] or 0,
        "ledger_rows": ledger["rows"] or 0,
        "rollup_cost": rollup["cost"] or zero,
        "rollup_input_tokens": rollup["input_tokens"] or 0,
        "rollup_output_tokens": rollup["output_tokens"] or 0,
        "rollup_requests": rollup["requests"] or 0,
    }


def usage_forget_team(*, team_id: int) -> int:
    """Before a team is deleted: its spend stays, filed under no team. The ledger's team link is
    cleared, and the team's rollup rows merge into the members' no-team rows of the same day and
    model (the database's SET NULL alone would collide with dailyusage_unique). Team budgets go
    with the team (CASCADE). Returns how many rollup rows moved."""
    with transaction.atomic():
        UsageRecord.objects.filter(team_id=team_id).update(team=None)
        return _fold_daily_rows(DailyUsage.objects.filter(team_id=team_id), team=None)
