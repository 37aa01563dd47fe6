import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection

from accounts import services

User = get_user_model()


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_first_signups_make_exactly_one_administrator():
    """Runs on whichever database is configured: on PostgreSQL (the .ci/run second pass) the
    conditional UPDATE under row locks decides; on SQLite, IMMEDIATE transactions queue."""
    barrier = threading.Barrier(10)
    errors: list[BaseException] = []

    def sign_up(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            services.user_signup(username=f"racer{n}", email=f"racer{n}@example.test", password="plum orchard 7 lantern")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sign_up, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert User.objects.count() == 10
    assert User.objects.filter(is_superuser=True).count() == 1
    assert User.objects.filter(is_staff=True).count() == 1


@pytest.mark.django_db
def test_migration_seeds_the_site_state_row_claimed_only_if_a_superuser_exists():
    import importlib

    from django.apps import apps

    from accounts.models import SiteState

    seed = importlib.import_module("accounts.migrations.0002_profile_model_validator_and_site_state").seed_site_state
    SiteState.objects.all().delete()
    seed(apps, None)
    assert SiteState.objects.get(pk=1).admin_claimed is False

    SiteState.objects.all().delete()
    User.objects.create_superuser("root", "root@example.test", "plum orchard 7 lantern")
    seed(apps, None)
    assert SiteState.objects.get(pk=1).admin_claimed is True
