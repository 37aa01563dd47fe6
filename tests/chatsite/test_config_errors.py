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
