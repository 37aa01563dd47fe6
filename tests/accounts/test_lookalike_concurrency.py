"""Two names that look the same, written at the same moment (by sign-up, the admin or
createsuperuser), never both become accounts."""

import io
import threading

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client

from accounts import services
from accounts.lookalikes import username_lookalike_key
from accounts.models import USERNAME_LOOKS_TAKEN

User = get_user_model()
STRONG = "plum orchard 7 lantern"
# All-Latin or all-Cyrillic (no mixed alphabets, which the field's validator refuses on its own),
# each different in any letter case (else the case-insensitive unique constraint decides), and
# all with the look-alike key of "paypal".
CYRILLIC_PAYPAL = "\u0440\u0430\u0443\u0440\u04301"  # "раура1"
LOOKALIKES = ["paypal", "paypa1", "paypaI", CYRILLIC_PAYPAL]


def _email(name: str) -> str:
    return f"racer-{name.encode().hex()}@example.test"


def _sign_up(name: str) -> None:
    services.user_signup(username=name, email=_email(name), password=STRONG)


def _race(names: list[str], ways=None) -> tuple[list[str], list[BaseException]]:
    """Make every name at once, one thread each (by sign-up, or by the matching one of `ways`);
    the names made and the errors raised."""
    ways = ways or [_sign_up] * len(names)
    barrier = threading.Barrier(len(names))
    made: list[str] = []
    errors: list[BaseException] = []

    def make(way, name: str) -> None:
        try:
            barrier.wait(timeout=30)
            way(name)
            made.append(name)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=make, args=(way, name)) for way, name in zip(ways, names, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return made, errors


@pytest.mark.django_db(transaction=True)
def test_concurrent_lookalike_signups_make_exactly_one_account():
    """Runs on whichever database is configured. On PostgreSQL (the .ci/run second pass) every
    sign-up checked and inserted in its own READ COMMITTED transaction, with nothing unique behind
    the look-alike key: several could each see none of the others and all be made; now the check
    runs under a lock on the key. On SQLite it never could race: the sign-up's IMMEDIATE
    transaction takes the database's one write lock at BEGIN, before the check, so the next
    sign-up's check runs only after this one's insert is committed. Several rounds, as one round
    may happen not to overlap."""
    for round_ in range(6):
        names = [f"{name}{round_}" for name in LOOKALIKES]
        assert len({username_lookalike_key(name) for name in names}) == 1
        made, errors = _race(names)
        assert len(made) == 1, f"round {round_}: {made} were all made"
        assert len(errors) == len(names) - 1
        for error in errors:
            assert isinstance(error, ValidationError), repr(error)
            assert error.message_dict == {"username": [USERNAME_LOOKS_TAKEN]}
    assert User.objects.count() == 6



class AdminRefused(Exception):
    pass


def _admin_client(operator) -> Client:
    client = Client()
    client.force_login(operator)
    return client


def _admin_add(operator, name: str) -> None:
    response = _admin_client(operator).post(
        "/admin/accounts/user/add/", {"username": name, "usable_password": "true", "password1": STRONG, "password2": STRONG}
    )
    if response.status_code != 302:
        raise AdminRefused(str(response.context["adminform"].form.errors.get("username", response.status_code)))


def _admin_rename(operator, name: str) -> None:
    person = User.objects.get(username="tobe")
    data = {
        "username": name, "email": person.email, "is_active": "on", "timezone": "UTC",
        "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
        "teammembership_set-TOTAL_FORMS": "0", "teammembership_set-INITIAL_FORMS": "0",
    }  # fmt: skip
    response = _admin_client(operator).post(f"/admin/accounts/user/{person.pk}/change/", data)
    if response.status_code != 302:
        raise AdminRefused(str(response.context["adminform"].form.errors.get("username", response.status_code)))


def _createsuperuser(operator, name: str) -> None:
    call_command("createsuperuser", interactive=False, username=name, email=_email(name), stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "way",
    [
        lambda operator, name: _sign_up(name),
        _admin_add,
        _admin_rename,
        _createsuperuser,
    ],
    ids=["signup", "admin-add", "admin-rename", "createsuperuser"],
)
def test_every_way_a_name_is_written_waits_for_a_lookalike_being_written_and_is_then_refused(make_user, way):
    """Deterministic, where racing threads depend on timing: a sign-up of "paypal" is held between
    its check and its commit; a look-alike written meanwhile by sign-up, the admin (a new account,
    or a rename) or createsuperuser must wait for it, then be refused. Unlocked, it did not see
    the uncommitted "paypal", found no look-alike and was made. On PostgreSQL the look-alike lock
    makes it wait; on SQLite the held IMMEDIATE transaction's write lock does."""
    operator = make_user("operator", is_staff=True, is_superuser=True)
    make_user("tobe", email="tobe@example.test")
    checked, release = threading.Event(), threading.Event()

    def hold_a_signup_of_paypal() -> None:
        try:
            with transaction.atomic():
                assert services.username_taken_reason(username="paypal", lock=True) is None
                User.objects.create_user("paypal", _email("paypal"), STRONG)
                checked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    outcome: list[BaseException | None] = []

    def write_a_lookalike() -> None:
        try:
            way(operator, CYRILLIC_PAYPAL)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcome.append(exc)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_a_signup_of_paypal)
    holder.start()
    assert checked.wait(timeout=30)
    writer = threading.Thread(target=write_a_lookalike)
    writer.start()
    writer.join(timeout=1.5)
    waited = writer.is_alive()
    release.set()
    holder.join(timeout=30)
    writer.join(timeout=30)
    assert waited, f"the look-alike was written without waiting: {outcome}"
    [error] = outcome
    assert error is not None and str(USERNAME_LOOKS_TAKEN) in str(error), repr(error)
    assert not User.objects.filter(username=CYRILLIC_PAYPAL).exists()
