"""manage.py erase_user USERNAME --yes: erase an account and everything in it, now."""

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from accounts import data_rights
from accounts.models import ErasureRequest
from chatsite.commands import OneLineCommand


class Command(OneLineCommand):
    help = "Erase USERNAME: conversations, messages, exports, sessions, cache, login records, profile."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")

    def handle(self, *args, username: str, yes: bool, **options):
        if not yes:
            raise CommandError("erasing cannot be undone: add --yes to confirm")
        user = get_user_model().objects.filter(username__iexact=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        try:
            erasure = data_rights.erasure_request(user=user, queue=False)
        except data_rights.DataRightsError as exc:
            raise CommandError(exc.message) from None
        # Run here rather than on a worker: the command ends when the account is gone.
        erasure_id = erasure.pk
        try:
            erasure = data_rights.erasure_run(erasure_id=erasure_id)
        except data_rights.LeaseHeld:
            erasure = None
        if erasure is None or erasure.status != ErasureRequest.Status.DONE:
            # Another process holds the erasure's lease: nothing was erased here, and saying
            # "erased" would be false.
            raise CommandError(f"erasure {erasure_id} is already running in another process; nothing was erased here")
        counts = ", ".join(f"{key} {value}" for key, value in data_rights.iter_receipt(erasure.receipt))
        self.stdout.write(f"erased user #{erasure.user_id} ({erasure.id}): {counts}")
