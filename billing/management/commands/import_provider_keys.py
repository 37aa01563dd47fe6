from billing.keys import keys_import_from_env

from ._keycommand import KeyCommand


class Command(KeyCommand):
    help = (
        "Import OPENAI_API_KEY / ANTHROPIC_API_KEY (with *_BASE_URL) as provider keys. Idempotent; "
        "also done on first use in every process."
    )

    def handle(self, *args, **options):
        results = keys_import_from_env()
        if not results:
            self.stdout.write("No provider key variables are set.")
        for provider, outcome in results.items():
            self.stdout.write(f"{provider}: {outcome}")
        if any(outcome.startswith("refused") for outcome in results.values()):
            # Non-zero so a start script notices, while the good one stays imported.
            raise SystemExit(1)
