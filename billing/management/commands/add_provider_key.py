import sys

from django.core.management.base import CommandError

from billing.keys import KEY_PROVIDERS, key_add

from ._keycommand import KeyCommand

# Far more than any secret (billing.keys refuses one past 4,096 characters): what is past this is
# not read, and what is read is then refused as too long or as more than one line.
_STDIN_MAX_CHARS = 64 * 1024


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
            secret = self._secret_from(options.get("stdin") or sys.stdin)
        key = key_add(
            provider=options["provider"],
            name=options["name"],
            secret=secret,
            base_url=options["base_url"],
            priority=options["priority"],
        )
        self.stdout.write(f"Added provider key {key.name} ({key.provider}, priority {key.priority}).")

    @staticmethod
    def _secret_from(stream) -> str:
        """The one line on standard input (its newline and blank lines around it are fine).
        Piped input is read whole: a second line would otherwise be dropped without a word, and
        the key stored would not be the one the operator pasted. A terminal gives one line."""
        text = stream.readline() if stream.isatty() else stream.read(_STDIN_MAX_CHARS)
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise CommandError("secret: The secret is empty (nothing on standard input).")
        if len(lines) > 1:
            raise CommandError("secret: Standard input holds more than one line; give the secret alone on one line.")
        return lines[0]
