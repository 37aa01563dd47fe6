import sys

from django.core.management.base import CommandError

from billing.keys import KEY_PROVIDERS, key_add

from ._keycommand import KeyCommand


class Command(KeyCommand):
    help = (
        "Add a provider key. Prefer --key - (the secret read from standard input): a secret on the "
        "command line can end up in shell history and process lists. The secret is never printed."
    )
    # Tests hand in a stream instead of the real stdin.
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("--provider", required=True, choices=KEY_PROVIDERS)
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--key", required=True, metavar="SECRET|-", help="the secret, or - to read it from standard input"
        )
        parser.add_argument("--base-url", default="", metavar="URL")
        parser.add_argument("--priority", type=int, default=100, metavar="N")

    def handle(self, *args, **options):
        secret = options["key"]
        if secret == "-":  # noqa: S105 - the "read from stdin" marker, not a password
            stream = options.get("stdin") or sys.stdin
            # One line: the secret, with its newline (and any surrounding blanks) stripped.
            secret = stream.readline()
            if not secret.strip():
                raise CommandError("secret: The secret is empty (nothing on standard input).")
        key = key_add(
            provider=options["provider"],
            name=options["name"],
            secret=secret,
            base_url=options["base_url"],
            priority=options["priority"],
        )
        self.stdout.write(f"Added provider key {key.name} ({key.provider}, priority {key.priority}).")
