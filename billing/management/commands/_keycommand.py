"""What the key commands share: a one-line error on bad input (argparse's usage block included),
and validation errors turned into that line. Entry points only: the rules live in billing.keys."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import CommandError

from chatsite.commands import OneLineCommand


def one_line(exc: ValidationError) -> str:
    if hasattr(exc, "message_dict"):
        return " ".join(f"{field}: {message}" for field, messages in exc.message_dict.items() for message in messages)
    return " ".join(exc.messages)


class KeyCommand(OneLineCommand):
    def execute(self, *args, **options):
        try:
            return super().execute(*args, **options)
        except ValidationError as exc:
            raise CommandError(one_line(exc)) from None
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
