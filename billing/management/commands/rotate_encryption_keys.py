from django.core.management.base import CommandError

from billing.crypto import SecretUndecryptable
from billing.keys import key_rotate_encryption

from ._keycommand import KeyCommand


class Command(KeyCommand):
    help = (
        "Re-encrypt every stored secret with the first FIELD_ENCRYPTION_KEYS entry (all or nothing), "
        "after which the other entries can be removed."
    )

    def handle(self, *args, **options):
        try:
            count = key_rotate_encryption()
        except SecretUndecryptable as exc:
            raise CommandError(f"{exc}; nothing was changed") from None
        self.stdout.write(f"Re-encrypted {count} secret(s) with the first encryption key.")
