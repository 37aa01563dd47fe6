"""One async streaming interface, one adapter per provider (openai, anthropic, demo)."""
