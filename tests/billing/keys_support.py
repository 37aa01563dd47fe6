"""Shared by the key tests (imported, not a conftest, so it sits beside the billing work's own)."""

import pytest

from billing import keys


@pytest.fixture(autouse=True)
def no_env_keys(settings, monkeypatch):
    """The developer's own OPENAI_API_KEY must not leak into these tests, and each test starts
    as a fresh process would: env keys not yet imported."""
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = ""
    settings.OPENAI_BASE_URL = settings.ANTHROPIC_BASE_URL = ""
    monkeypatch.setattr(keys, "_env_import_done", False)
