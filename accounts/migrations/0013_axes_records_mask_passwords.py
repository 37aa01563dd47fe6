"""Mask the passwords that django-axes login records written before AXES_SENSITIVE_PARAMETERS was
set still hold in clear.

Axes keeps the GET and POST data of each refused login attempt for the admin to read, each
parameter on a line of its own (`name=value`), and appends the next attempt from the same client
to the same record after a line of dashes. It masked only "password" then: the current password
guessed on a password-change page, and the new one typed beside it, were kept as typed. Here
each line is masked as axes masks a parameter now (axes.helpers.cleanse_parameters, with this
site's settings), so old and new records read alike.

The login records are django-axes' tables, but accounts is the app that answers for them here
(data_rights: export and erasure), so the migration is accounts'. Idempotent (a masked value is
masked again to the same), going back leaves the records as they are, and batched: one read and
a few writes per thousand records, each batch its own transaction, so a site with many records
is not locked for the whole run, and a run cut short is simply run again."""

import re

from axes.helpers import cleanse_parameters
from django.db import migrations, transaction

BATCH = 1000
# What axes writes between two attempts appended to one record (axes.handlers.database).
ATTEMPT_SEPARATOR = "\n---------\n"
# The start of a parameter's line. A value of several lines (only a crafted request sends one: a
# browser's password field holds none) goes on up to the next line that starts so.
_PARAMETER = re.compile(r"^([\w.\-\[\]]+)=(.*)$")


def _masked(text: str) -> str:
    attempts = []
    for attempt in text.split(ATTEMPT_SEPARATOR):
        lines: list[str] = []
        in_sensitive_value = False
        for line in attempt.split("\n"):
            parameter = _PARAMETER.match(line)
            if parameter:
                name, value = parameter.groups()
                shown = cleanse_parameters({name: value})[name]
                in_sensitive_value = shown != value
                lines.append(f"{name}={shown}")
            elif not in_sensitive_value:
                lines.append(line)
        attempts.append("\n".join(lines))
    return ATTEMPT_SEPARATOR.join(attempts)


def axes_records_mask(apps, schema_editor):
    AccessAttempt = apps.get_model("axes", "AccessAttempt")
    last_pk = 0
    while True:
        with transaction.atomic():
            # Locked, so a refusal that axes appends to a record meanwhile waits instead of being
            # overwritten by this batch's write (SQLite's IMMEDIATE transaction does the same).
            rows = list(
                AccessAttempt.objects.select_for_update()
                .filter(pk__gt=last_pk)
                .order_by("pk")
                .values_list("pk", "get_data", "post_data")[:BATCH]
            )
            changed = []
            for pk, get_data, post_data in rows:
                masked_get, masked_post = _masked(get_data), _masked(post_data)
                if (masked_get, masked_post) != (get_data, post_data):
                    changed.append(AccessAttempt(pk=pk, get_data=masked_get, post_data=masked_post))
            if changed:
                AccessAttempt.objects.bulk_update(changed, ["get_data", "post_data"], batch_size=BATCH)
        if len(rows) < BATCH:
            return
        last_pk = rows[-1][0]


class Migration(migrations.Migration):
    # Each batch commits on its own (see above).
    atomic = False

    dependencies = [
        ("accounts", "0012_user_manager"),
        # The last of axes' migrations to change the fields read here.
        ("axes", "0003_auto_20160322_0929"),
    ]

    operations = [
        migrations.RunPython(axes_records_mask, migrations.RunPython.noop, elidable=True),
    ]
