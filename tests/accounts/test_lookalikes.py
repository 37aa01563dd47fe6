"""Names that would look the same on the screen are found whichever way the accounts were made."""

import importlib

import pytest
from django.apps import apps

from accounts import services
from accounts.models import USERNAME_LOOKS_TAKEN, User

CYRILLIC_PAYPAL = "\u0440\u0430\u0443\u0440\u04301"  # "раура1"


@pytest.mark.django_db
def test_accounts_made_before_the_look_alike_check_are_found_after_migrating(make_user):
    make_user("paypal")
    User.objects.update(username_lookalike="")  # as the column is added: empty on every existing row
    assert services.username_taken_reason(username=CYRILLIC_PAYPAL) is None
    importlib.import_module("accounts.migrations.0010_username_lookalike").fill_username_lookalike(apps, None)
    assert services.username_taken_reason(username=CYRILLIC_PAYPAL) == USERNAME_LOOKS_TAKEN


@pytest.mark.django_db
def test_a_renamed_account_is_found_by_its_new_name_only(make_user):
    person = make_user("bob")
    person.username = "paypal"
    person.save(update_fields=["username"])
    assert services.username_taken_reason(username=CYRILLIC_PAYPAL) == USERNAME_LOOKS_TAKEN
    assert services.username_taken_reason(username="b\u043eb") is None  # "bоb", Cyrillic о: bob is gone


@pytest.mark.django_db
def test_a_person_may_keep_their_own_name(make_user):
    person = make_user("paypal")
    assert services.username_taken_reason(username="PayPal", exclude_pk=person.pk) is None
    assert services.username_taken_reason(username=CYRILLIC_PAYPAL, exclude_pk=person.pk) is None
