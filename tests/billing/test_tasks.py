import datetime as dt
from decimal import Decimal

from django.utils import timezone

from billing.budgets import budget_reserve, budget_set
from billing.models import Reservation
from billing.tasks import reservations_expire


def test_the_periodic_task_releases_holds_of_dead_processes(user):
    budget = budget_set(user=user, period="month", limit="5")
    stale = budget_reserve(user=user, amount=Decimal("2"), ttl_seconds=0)
    live = budget_reserve(user=user, amount=Decimal("1"))
    Reservation.objects.filter(pk=stale).update(expires_at=timezone.now() - dt.timedelta(seconds=1))

    # Not refused as a "result.get() within a task": Celery's flag for that is one for the
    # process, and eager tasks run at once on other threads (a turn's titles) can leave it set.
    assert reservations_expire.delay().get(disable_sync_subtasks=False) == 1

    budget.refresh_from_db()
    assert budget.reserved == Decimal("1")
    assert Reservation.objects.get(pk=stale).state == "expired"
    assert Reservation.objects.get(pk=live).state == "held"
