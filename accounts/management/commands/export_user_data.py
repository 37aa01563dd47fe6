"""manage.py export_user_data USERNAME --output FILE.zip: the user's export, written to a file."""

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from accounts import data_rights
from chatsite.commands import OneLineCommand


class Command(OneLineCommand):
    help = "Write the data export of USERNAME (conversations, messages, usage) to a zip file."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument(
            "--output", required=True, help="the zip file to write (must not exist; made readable by you alone)"
        )

    def handle(self, *args, username: str, output: str, **options):
        if not output.strip():
            raise CommandError("--output is empty: name the zip file to write")
        user = get_user_model().objects.filter(username__iexact=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        target = Path(output)
        if target.exists() or target.is_symlink():
            raise CommandError(f"{output} already exists: choose another file")
        if not target.parent.is_dir():
            raise CommandError(f"folder {target.parent} does not exist")
        try:
            size = data_rights.export_write_file(user=user, output=target)
        except FileExistsError:  # it appeared after the check above
            raise CommandError(f"{output} already exists: choose another file") from None
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or type(exc).__name__}") from None
        self.stdout.write(f"wrote {output} ({size} bytes)")
