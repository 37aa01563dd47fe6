from django.core.management.base import CommandError

from billing.prices import PriceError, price_set
from chatsite.commands import OneLineCommand


class Command(OneLineCommand):
    help = "Put a new price (USD per million tokens) in force for PROVIDER:MODEL from now on."

    def add_arguments(self, parser):
        parser.add_argument("--model", required=True, metavar="PROVIDER:MODEL")
        parser.add_argument("--input", required=True, metavar="USD_PER_1M")
        parser.add_argument("--output", required=True, metavar="USD_PER_1M")
        parser.add_argument("--context-window", metavar="TOKENS")
        parser.add_argument("--cached-input", metavar="USD_PER_1M", help="price of cached input tokens")
        parser.add_argument("--max-output", metavar="TOKENS", help="largest reply the model allows")
        parser.add_argument("--label", help="name shown in the model picker")
        parser.add_argument("--disable", action="store_true", help="stop offering the model from now on")

    def handle(self, *args, **options):
        try:
            row = price_set(
                model_id=options["model"],
                input_per_million=options["input"],
                output_per_million=options["output"],
                cached_input_per_million=options["cached_input"],
                context_window=options["context_window"],
                max_output_tokens=options["max_output"],
                label=options["label"],
                enabled=not options["disable"],
            )
        except PriceError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"{row.model_id}: input {row.input_per_million}, output {row.output_per_million} USD per million tokens"
            f" from {row.effective_from.isoformat()}"
        )
