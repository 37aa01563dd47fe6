"""Login records django-axes wrote before the site set AXES_SENSITIVE_PARAMETERS held the submitted
passwords (the current one guessed on the password-change page, the new one typed beside it) in
clear; a data migration masks them as axes masks them now."""

import importlib

import pytest
from axes.models import AccessAttempt
from django.apps import apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

PASSWORD = "correct horse battery 9"
MIGRATION = "0013_axes_records_mask_passwords"
migration = importlib.import_module(f"accounts.migrations.{MIGRATION}")
MASK = "********************"  # what axes writes in place of a sensitive value


def mask_old_records() -> None:
    migration.axes_records_mask(apps, connection.schema_editor())


def _refused_password_change(client, user, old: str, new: str) -> None:
    client.force_login(user)
    client.post("/admin/password_change/", {"old_password": old, "new_password1": new, "new_password2": new})


@pytest.mark.django_db
def test_passwords_in_records_written_before_are_masked_as_axes_masks_them_now(client, make_user, settings):
    old_user, new_user = make_user("olduser", is_staff=True), make_user("newuser", is_staff=True)
    sensitive = settings.AXES_SENSITIVE_PARAMETERS
    settings.AXES_SENSITIVE_PARAMETERS = []  # as the site was: axes masked "password" only
    for n in range(2):  # two refusals: axes appends the second to the same record
        _refused_password_change(client, old_user, f"guess canary-password {n}", f"new canary-password {n} brook")
    settings.AXES_SENSITIVE_PARAMETERS = sensitive
    for n in range(2):
        _refused_password_change(client, new_user, f"guess canary-password {n}", f"new canary-password {n} brook")
    old = AccessAttempt.objects.get(username="olduser")
    assert "canary-password 1" in old.post_data and old.failures_since_start == 2

    mask_old_records()

    old.refresh_from_db()
    assert "canary-password" not in old.post_data + old.get_data
    written_now = AccessAttempt.objects.get(username="newuser")
    assert old.post_data == written_now.post_data
    assert old.failures_since_start == 2 and old.username == "olduser"


@pytest.mark.django_db
def test_only_the_sensitive_values_go_and_each_whole(make_user):
    """Other fields stay. A value of several lines (only a crafted request sends one: a browser's
    password field has none) is masked to its end, up to the next parameter."""
    attempt = AccessAttempt.objects.create(
        username="alice", ip_address="192.0.2.1", user_agent="ua", http_accept="*/*", path_info="/accounts/login/",
        failures_since_start=2, get_data="next=/c/\npassword=in the query",
        post_data=(
            "csrfmiddlewaretoken=tok3n\nusername=alice\npassword=first canary-password\nnext=/c/"
            "\n---------\n"
            "password1=canary-password line one\ncanary-password line two\npassword2=x\nlanguage=ko\nnote=a=b"
        ),
    )  # fmt: skip
    mask_old_records()
    attempt.refresh_from_db()
    assert attempt.get_data == f"next=/c/\npassword={MASK}"
    assert attempt.post_data == (
        f"csrfmiddlewaretoken={MASK}\nusername={MASK}\npassword={MASK}\nnext=/c/"
        "\n---------\n"
        f"password1={MASK}\npassword2={MASK}\nlanguage=ko\nnote=a=b"
    )


@pytest.mark.django_db
def test_running_it_again_changes_nothing(make_user, django_assert_max_num_queries):
    AccessAttempt.objects.create(
        username="alice", user_agent="ua", http_accept="*/*", path_info="/", failures_since_start=1,
        get_data="", post_data="username=alice\npassword=canary-password",
    )  # fmt: skip
    mask_old_records()
    once = AccessAttempt.objects.values_list("get_data", "post_data").get()
    with django_assert_max_num_queries(3):  # reads the one batch in its transaction, writes nothing
        mask_old_records()
    assert AccessAttempt.objects.values_list("get_data", "post_data").get() == once


@pytest.mark.django_db
def test_many_records_are_masked_in_batches(django_assert_max_num_queries):
    AccessAttempt.objects.bulk_create(
        AccessAttempt(
            username=f"user{n}", ip_address="192.0.2.1", user_agent="ua", http_accept="*/*", path_info="/accounts/login/",
            failures_since_start=1, get_data="", post_data=f"username=user{n}\nold_password=canary-password {n}\nnext=/",
        )
        for n in range(2500)
    )  # fmt: skip
    with django_assert_max_num_queries(30):  # a write per few hundred rows (SQLite caps its parameters), not per row
        mask_old_records()
    assert not AccessAttempt.objects.filter(post_data__contains="canary-password").exists()
    assert AccessAttempt.objects.filter(post_data=f"username={MASK}\nold_password={MASK}\nnext=/").count() == 2500


@pytest.mark.django_db(transaction=True)
def test_the_migration_masks_going_forward_and_leaves_records_going_back():
    AccessAttempt.objects.create(
        username="alice", user_agent="ua", http_accept="*/*", path_info="/", failures_since_start=1,
        get_data="", post_data="username=alice\nnew_password1=canary-password",
    )  # fmt: skip
    executor = MigrationExecutor(connection)
    before = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "accounts"]
    previous = executor.loader.get_migration("accounts", MIGRATION).dependencies
    executor.migrate([key for key in previous if key[0] == "accounts"])
    assert "canary-password" in AccessAttempt.objects.get().post_data  # going back: a no-op

    executor = MigrationExecutor(connection)
    executor.migrate(before)
    assert AccessAttempt.objects.get().post_data == f"username={MASK}\nnew_password1={MASK}"
