"""How a model is named: `provider:model` (CONTRACT section 2), the one definition.

Imports nothing from Django, so chatsite.settings can check DEFAULT_MODEL with it before any app
loads; accounts (a default model), billing (a price) and the adapter registry use the same.
"""

from __future__ import annotations

import re

PROVIDERS = ("openai", "anthropic", "demo")
# Model names of OpenAI-compatible servers carry colons, slashes and dots ("llama3.1:8b",
# "meta-llama/Llama-3-8B"); whitespace and control characters never. Matched with fullmatch:
# `$` would also match before a trailing newline and let "gpt-4o\n" in as a separate model.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,119}")


def model_id_parse(model_id: object) -> tuple[str, str] | None:
    """("openai", "gpt-4o") from "openai:gpt-4o"; None when malformed or of an unknown provider.
    The provider ends at the first colon; the model name may hold more."""
    if not isinstance(model_id, str):
        return None
    provider, sep, model = model_id.partition(":")
    if not sep or provider not in PROVIDERS or not _MODEL_NAME.fullmatch(model):
        return None
    return provider, model
