"""Seed the price table with the common OpenAI and Anthropic models (public list prices, USD per
million tokens) and the offline demo model at zero. Operators change them with set_price or the
admin; a change adds a newer row, these stay as history."""

from datetime import datetime, timezone
from decimal import Decimal

from django.db import migrations

EFFECTIVE = datetime(2025, 1, 1, tzinfo=timezone.utc)

# provider, model, label, input, cached input, output, context window, max output tokens
SEED = [
    ("openai", "gpt-4o", "GPT-4o", "2.50", "1.25", "10.00", 128_000, 16_384),
    ("openai", "gpt-4o-mini", "GPT-4o mini", "0.15", "0.075", "0.60", 128_000, 16_384),
    ("openai", "gpt-4.1", "GPT-4.1", "2.00", "0.50", "8.00", 1_047_576, 32_768),
    ("openai", "gpt-4.1-mini", "GPT-4.1 mini", "0.40", "0.10", "1.60", 1_047_576, 32_768),
    ("openai", "gpt-4.1-nano", "GPT-4.1 nano", "0.10", "0.025", "0.40", 1_047_576, 32_768),
    ("openai", "o4-mini", "o4-mini", "1.10", "0.275", "4.40", 200_000, 100_000),
    ("openai", "o3", "o3", "2.00", "0.50", "8.00", 200_000, 100_000),
    ("anthropic", "claude-sonnet-4-5", "Claude Sonnet 4.5", "3.00", "0.30", "15.00", 200_000, 64_000),
    ("anthropic", "claude-haiku-4-5", "Claude Haiku 4.5", "1.00", "0.10", "5.00", 200_000, 64_000),
    ("anthropic", "claude-opus-4-1", "Claude Opus 4.1", "15.00", "1.50", "75.00", 200_000, 32_000),
    ("anthropic", "claude-sonnet-4-0", "Claude Sonnet 4", "3.00", "0.30", "15.00", 200_000, 64_000),
    ("anthropic", "claude-3-5-haiku-latest", "Claude Haiku 3.5", "0.80", "0.08", "4.00", 200_000, 8_192),
    ("demo", "echo", "Demo (offline echo)", "0", None, "0", 128_000, 4_096),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for provider, model, label, inp, cached, out, window, max_out in SEED:
        ModelPrice.objects.get_or_create(
            provider=provider,
            model=model,
            effective_from=EFFECTIVE,
            defaults={
                "label": label,
                "input_per_million": Decimal(inp),
                "cached_input_per_million": Decimal(cached) if cached is not None else None,
                "output_per_million": Decimal(out),
                "context_window": window,
                "max_output_tokens": max_out,
                "enabled": True,
                "created_at": EFFECTIVE,
            },
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for provider, model, *_ in SEED:
        ModelPrice.objects.filter(provider=provider, model=model, effective_from=EFFECTIVE).delete()


class Migration(migrations.Migration):
    dependencies = [("billing", "0002_rollup_unique_reservation_settled")]

    operations = [migrations.RunPython(seed, unseed)]
