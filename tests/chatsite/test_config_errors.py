"""A bad environment stops the process at start with one line naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_check(**env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_HTTPS", "DJANGO_SECRET_KEY"}}
    env.update({"DJANGO_SECRET_KEY": "a-test-secret-that-is-long-enough-0123456789-abcdefghijklmnopq", "PYTHONWARNINGS": "ignore"})
    env.update(env_overrides)
    env = {k: v for k, v in env.items() if v is not None}
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "variable, value",
    [
        ("DATABASE_URL", "mysql://root@localhost/parley"),
        ("DATABASE_URL", "postgres://"),
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "postgres://u@host:notaport/db"),
        ("REDIS_URL", "redis//localhost:6379"),
        ("REDIS_URL", "redis://localhost:port/0"),
        ("REDIS_URL", "http://localhost:6379/0"),
        ("SIGNUP_OPEN", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
        ("DJANGO_DEBUG", "perhaps"),
        ("AXES_FAILURE_LIMIT", "five"),
        ("FIELD_ENCRYPTION_KEYS", "not-a-fernet-key"),
    ],
)
def test_malformed_setting_stops_with_one_line_naming_it(variable, value):
    result = run_check(**{variable: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_secret_key_in_production_stops_with_one_line():
    env = {"DJANGO_HTTPS": "true", "DJANGO_ALLOWED_HOSTS": "parley.example.com"}
    result = run_check(**env, DJANGO_SECRET_KEY="")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DJANGO_SECRET_KEY" in lines[0]


def test_good_settings_pass_the_check():
    result = run_check()
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "variable, value",
    [("EMAIL_URL", "smtp://"), ("EMAIL_URL", "ftp://mail.example.com"), ("EMAIL_URL", "smtp://mail.example.com:xx"), ("LLM_TOTAL_TIMEOUT", "soon")],
)
def test_more_malformed_settings_stop_with_one_line(variable, value):
    result = run_check(**{variable: value})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr


@pytest.mark.parametrize(
    "variable, value",
    [
        ("TURN_DB_THREADS", "0"),  # every chat turn failed: a thread pool of no threads
        ("DATABASE_POOL_SIZE", "0"),  # every page failed: a pool that may hold no connection
        ("LLM_TOTAL_TIMEOUT", "nan"),
        ("LLM_CONNECT_TIMEOUT", "-1"),
        ("KEY_CIRCUIT_COOLDOWN", "inf"),
        ("MAX_MESSAGE_CHARS", "0"),
        ("EXPORT_TTL_HOURS", "-1"),  # exports expired before they were written
        ("CONVERSATION_RETENTION_DAYS", "-30"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        ("WS_MAX_SOCKETS_PER_USER", "0"),
        ("DEFAULT_MODEL", "gpt-4o"),  # models are named provider:model
        ("DEFAULT_MODEL", "ollama:llama3"),  # of a provider the site has
        ("DEFAULT_MODEL", "openai:gpt-4o,gpt-4o-mini"),  # a name no price can have
        ("DEFAULT_MODEL", "openai:-mini"),
    ],
)
def test_a_number_out_of_range_stops_with_one_line_naming_it(variable, value):
    """A value of the right type that cannot work was taken without a word, to fail later in
    every chat turn, every page or a nightly job."""
    # The pool size is read with PostgreSQL only; `check` opens no connection.
    database = {"DATABASE_URL": "postgres://parley@127.0.0.1:5432/parley"} if variable == "DATABASE_POOL_SIZE" else {}
    result = run_check(**database, **{variable: value})
    assert result.returncode != 0, f"{variable}={value} was accepted"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("model_id", ["openai:llama3.1:8b", "openai:meta-llama/Llama-3-8B", "anthropic:claude-sonnet-4-5"])
def test_a_default_model_named_as_a_price_can_name_it_is_taken(model_id):
    from billing.prices import parse_model_id

    assert parse_model_id(model_id) is not None
    result = run_check(DEFAULT_MODEL=model_id)
    assert result.returncode == 0, result.stderr


def test_zero_is_taken_where_zero_means_something():
    result = run_check(DEMO_DELAY_MS="0", TRUSTED_PROXY_COUNT="0", KEY_RETRY_BACKOFF="0", CONVERSATION_RETENTION_DAYS="0")
    assert result.returncode == 0, result.stderr


def test_email_url_switches_to_smtp():
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"DJANGO_SECRET_KEY": "x" * 60, "EMAIL_URL": "smtp+tls://mailer:pw@smtp.example.com:587"})
    code = "from django.conf import settings as s; print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_USE_TLS)"
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().splitlines()[-1].split() == ["django.core.mail.backends.smtp.EmailBackend", "smtp.example.com", "587", "True"]


def test_console_email_by_default():
    from django.conf import settings

    assert settings.EMAIL_BACKEND in {"django.core.mail.backends.console.EmailBackend", "django.core.mail.backends.locmem.EmailBackend"}


BIN = Path(sys.executable).parent
SERVING_PROCESSES = {
    "daphne": [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", "0", "chatsite.asgi:application"],
    "celery worker": [str(BIN / "celery"), "-A", "chatsite", "worker", "-P", "solo", "--loglevel", "WARNING"],
    "asgi import": [sys.executable, "-c", "import chatsite.asgi"],
    "manage.py": [sys.executable, "manage.py", "shell", "-c", "print('started')"],
}


def run_process(command: list[str], tmp_path, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_HTTPS", "FIELD_ENCRYPTION_KEYS"}}
    env.update({"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "PYTHONWARNINGS": "ignore"})
    env.update(env_overrides)
    try:
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{command[0]} kept running instead of stopping at start")


@pytest.mark.parametrize("process", SERVING_PROCESSES)
@pytest.mark.parametrize("value", ["not-a-fernet-key-CANARY", "{good},not-a-fernet-key-CANARY"])
def test_malformed_field_encryption_keys_stop_every_process_at_start_with_one_line(process, value, tmp_path):
    """README: "A malformed value stops the process at start with one line naming the variable":
    Daphne and Celery run no system checks, so settings refuse it, as they do DJANGO_HTTPS."""
    from cryptography.fernet import Fernet

    value = value.format(good=Fernet.generate_key().decode())
    result = run_process(SERVING_PROCESSES[process], tmp_path, FIELD_ENCRYPTION_KEYS=value)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1 and "FIELD_ENCRYPTION_KEYS" in lines[0], lines
    assert f"entry {value.count(',') + 1}" in lines[0]
    assert "CANARY" not in result.stdout + result.stderr  # the key itself is never echoed


def test_valid_field_encryption_keys_let_the_asgi_application_load(tmp_path):
    from cryptography.fernet import Fernet

    keys = f" {Fernet.generate_key().decode()} , {Fernet.generate_key().decode()} ,"
    code = "import chatsite.asgi; from django.conf import settings; print(len(settings.FIELD_ENCRYPTION_KEYS))"
    result = run_process([sys.executable, "-c", code], tmp_path, FIELD_ENCRYPTION_KEYS=keys, DJANGO_SETTINGS_MODULE="chatsite.settings")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "2"


@pytest.mark.parametrize(
    "variable, value",
    [
        # The password-reset page said "sent" while each email failed in the log, far from its cause.
        ("EMAIL_BACKEND", "no.such.Backend"),
        ("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackends"),
        ("EMAIL_BACKEND", "smtp"),
        # Read only with PostgreSQL, so a typo passed unseen on SQLite until the move to PostgreSQL.
        ("DATABASE_POOL_SIZE", "twenty"),
    ],
)
def test_a_setting_ignored_until_later_is_checked_at_start(variable, value):
    result = run_check(**{variable: value})
    assert result.returncode != 0, f"{variable}={value} was accepted"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_an_email_backend_that_exists_is_taken():
    result = run_check(EMAIL_BACKEND="django.core.mail.backends.locmem.EmailBackend")
    assert result.returncode == 0, result.stderr


def test_email_backend_is_not_checked_when_email_url_sets_it():
    # The README: EMAIL_BACKEND is ignored when EMAIL_URL is set.
    result = run_check(EMAIL_BACKEND="left.over.Backend", EMAIL_URL="smtp+tls://u:p@smtp.example.com:587")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "secret",
    [
        "changeme",  # guessable: anyone could sign a session cookie as the administrator
        "x" * 60,
        "django-insecure-" + "a1b2c3d4e5" * 5,
        "parley-dev-secret-key-not-for-production-0123456789-abcdefghijklmnop",  # the public development key
    ],
)
def test_a_weak_secret_key_in_production_stops_with_one_line(secret):
    """The README: "a long random secret; required when DJANGO_HTTPS=true". A short or guessable
    one was taken without a word (only `check --deploy`, which nothing runs at start, said so)."""
    result = run_check(DJANGO_HTTPS="true", DJANGO_ALLOWED_HOSTS="parley.example.com", DJANGO_SECRET_KEY=secret)
    assert result.returncode != 0, f"{secret!r} was accepted"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DJANGO_SECRET_KEY" in lines[0], result.stderr
    assert secret not in result.stderr  # never echoed


def test_a_short_secret_key_is_taken_in_development():
    assert run_check(DJANGO_SECRET_KEY="changeme").returncode == 0


@pytest.mark.parametrize("provider", ["OPENAI", "ANTHROPIC"])
def test_a_base_url_without_its_key_stops_with_one_line(provider):
    """OPENAI_BASE_URL alone (a local Ollama, which asks no key) imported nothing, and said
    "No provider key variables are set.": the site offered no model, with no word why."""
    result = run_check(**{f"{provider}_BASE_URL": "http://127.0.0.1:11434/v1", f"{provider}_API_KEY": ""})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{provider}_BASE_URL" in lines[0] and f"{provider}_API_KEY" in lines[0], result.stderr
