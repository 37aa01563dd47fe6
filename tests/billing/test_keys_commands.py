"""The key management commands, run as an operator runs them (a real manage.py process) and
through call_command where a process adds nothing."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError

from billing.crypto import secret_decrypt
from billing.models import ProviderKey
from tests.billing.keys_support import no_env_keys  # noqa: F401 - autouse

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
SECRET = "sk-command-canary-0123456789abcdef"


def run(*args, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **({"stdin": stdin} if stdin is not None else {}))
    return out.getvalue() + err.getvalue()


def test_add_provider_key_stores_an_encrypted_key_and_never_prints_it():
    output = run("add_provider_key", "--provider", "openai", "--name", "main", "--key", SECRET, "--priority", "7")
    key = ProviderKey.objects.get(name="main")
    assert (key.provider, key.priority, key.state) == ("openai", 7, "enabled")
    assert secret_decrypt(key.secret_encrypted) == SECRET
    assert SECRET not in output and SECRET[-4:] not in output
    assert "main" in output


def test_add_provider_key_reads_the_secret_from_stdin():
    output = run(
        "add_provider_key", "--provider", "anthropic", "--name", "a", "--key", "-", stdin=io.StringIO(SECRET + "\n")
    )
    assert secret_decrypt(ProviderKey.objects.get(name="a").secret_encrypted) == SECRET
    assert SECRET not in output


@pytest.mark.parametrize("stdin", [SECRET, SECRET + "\n", SECRET + "\r\n", "\n" + SECRET + "\n\n", "  " + SECRET + "  \n"])
def test_add_provider_key_takes_one_line_from_stdin_with_blank_lines_around_it(stdin):
    run("add_provider_key", "--provider", "openai", "--name", "a", "--key", "-", stdin=io.StringIO(stdin))
    assert secret_decrypt(ProviderKey.objects.get(name="a").secret_encrypted) == SECRET


def test_add_provider_key_with_a_base_url():
    run(
        "add_provider_key",
        "--provider",
        "openai",
        "--name",
        "ollama",
        "--key",
        "ollama",
        "--base-url",
        "http://127.0.0.1:11434/v1",
    )
    assert ProviderKey.objects.get(name="ollama").base_url == "http://127.0.0.1:11434/v1"


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["--key", "   "], None, "secret"),
        (["--key", "-"], "\n", "secret"),
        (["--key", "-"], "", "secret"),
        # A second line would be dropped without a word: the key stored would not be the one pasted.
        (["--key", "-"], SECRET + "\nsk-second-line-0123456789\n", "more than one line"),
        (["--key", "-"], SECRET + "\n\nsk-second-line-0123456789", "more than one line"),
        (["--key", "-"], "\n" + SECRET + "\r\nx\n", "more than one line"),
        (["--key", SECRET, "--base-url", "http://169.254.169.254/"], None, "metadata"),
        (["--key", SECRET, "--base-url", "ftp://x/"], None, "http"),
        (["--key", SECRET, "--base-url", "http://u:p@127.0.0.1/"], None, "credentials"),
    ],
)
def test_add_provider_key_refuses_bad_input_and_changes_nothing(args, stdin, says):
    with pytest.raises(CommandError) as excinfo:
        run(
            "add_provider_key",
            "--provider",
            "openai",
            "--name",
            "x",
            *args,
            stdin=io.StringIO(stdin) if stdin is not None else None,
        )
    message = str(excinfo.value)
    assert says in message and "\n" not in message and SECRET not in message
    assert not ProviderKey.objects.exists()


def test_add_provider_key_refuses_a_metadata_base_url_with_private_base_urls_allowed(settings):
    settings.ALLOW_PRIVATE_BASE_URLS = True
    with pytest.raises(CommandError) as excinfo:
        run("add_provider_key", "--provider", "openai", "--name", "meta", "--key", SECRET, "--base-url", "http://169.254.169.254/v1")
    message = str(excinfo.value)
    assert "metadata" in message and "ALLOW_PRIVATE_BASE_URLS" not in message and "\n" not in message
    assert not ProviderKey.objects.exists()
    # The setting still does what it is for: a model server on the private network.
    run("add_provider_key", "--provider", "openai", "--name", "ollama", "--key", "unused", "--base-url", "http://10.1.2.3:11434/v1")
    assert ProviderKey.objects.get().base_url == "http://10.1.2.3:11434/v1"


def test_add_provider_key_refuses_a_duplicate_name():
    run("add_provider_key", "--provider", "openai", "--name", "main", "--key", SECRET)
    with pytest.raises(CommandError, match="already exists"):
        run("add_provider_key", "--provider", "anthropic", "--name", "main", "--key", "sk-other-0123456789")
    assert ProviderKey.objects.get().provider == "openai"


def test_disable_provider_key():
    run("add_provider_key", "--provider", "openai", "--name", "main", "--key", SECRET)
    assert "disabled" in run("disable_provider_key", "--name", "main")
    assert ProviderKey.objects.get().state == "disabled"
    with pytest.raises(CommandError, match="No provider key is named nope"):
        run("disable_provider_key", "--name", "nope")


def test_disable_provider_key_can_drain_first():
    run("add_provider_key", "--provider", "openai", "--name", "main", "--key", SECRET)
    run("disable_provider_key", "--name", "main", "--drain")
    assert ProviderKey.objects.get().state == "draining"


def test_rotate_encryption_keys_command(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    run("add_provider_key", "--provider", "openai", "--name", "main", "--key", SECRET)
    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    output = run("rotate_encryption_keys")
    assert "1" in output and SECRET not in output
    settings.FIELD_ENCRYPTION_KEYS = [new]
    assert secret_decrypt(ProviderKey.objects.get().secret_encrypted) == SECRET


def test_rotate_encryption_keys_fails_in_one_line_when_a_key_was_retired_early(settings):
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    run("add_provider_key", "--provider", "openai", "--name", "main", "--key", SECRET)
    before = ProviderKey.objects.get().secret_encrypted
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(CommandError, match="nothing was changed"):
        run("rotate_encryption_keys")
    assert ProviderKey.objects.get().secret_encrypted == before


def test_import_provider_keys_is_idempotent(settings):
    settings.OPENAI_API_KEY = SECRET
    assert "openai: added" in run("import_provider_keys")
    assert "openai: unchanged" in run("import_provider_keys")
    assert ProviderKey.objects.count() == 1


# --- as a real process: exit codes and one-line errors -------------------------------------------


def manage(*args, stdin="", env=None):
    environment = {k: v for k, v in os.environ.items() if k not in {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"}}
    # A set secret key keeps the development-key notice off stderr: the error is the one line.
    environment.setdefault("DJANGO_SECRET_KEY", "test-secret-key-for-subprocess-commands-0123456789")
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["add_provider_key", "--provider", "google", "--name", "x", "--key", SECRET],
        ["add_provider_key", "--provider", "openai", "--key", SECRET],
        ["add_provider_key", "--provider", "openai", "--name", "x", "--key", SECRET, "--priority", "high"],
        ["disable_provider_key"],
    ],
)
def test_bad_arguments_exit_non_zero_with_one_line(args):
    # argparse refuses these before any database is touched.
    result = manage(*args)
    assert result.returncode != 0
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.strip() and "Warning" not in line and "warnings.warn" not in line
    ]
    assert len(lines) == 1, result.stderr
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.django_db(transaction=True)
def test_two_lines_piped_to_key_dash_exit_non_zero_with_one_line_and_add_nothing():
    """As an operator pipes it: `printf 'sk-a\nsk-b\n' | manage.py add_provider_key ... --key -`."""
    from tests.billing.test_keys_processes import _encryption_keys
    from tests.dbenv import database_url

    env = {"DATABASE_URL": database_url(), "FIELD_ENCRYPTION_KEYS": _encryption_keys(), "PYTHONWARNINGS": "ignore"}
    args = ["add_provider_key", "--provider", "openai", "--name", "piped", "--key", "-"]
    result = manage(*args, stdin=SECRET + "\nsk-second-line-0123456789\n", env=env)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "more than one line" in lines[0], lines
    assert SECRET not in result.stdout + result.stderr
    assert not ProviderKey.objects.exists()
    result = manage(*args, stdin=SECRET + "\n", env=env)
    assert result.returncode == 0, result.stderr
    assert secret_decrypt(ProviderKey.objects.get(name="piped").secret_encrypted) == SECRET


@pytest.mark.django_db(transaction=True)
def test_commands_that_succeed_print_their_one_line_and_nothing_on_stderr():
    """README: each command prints one line. The services' INFO log lines ("provider key ...
    added") went to stderr beside it; they are for the server's log, not the operator's terminal."""
    from tests.billing.test_keys_processes import _encryption_keys
    from tests.dbenv import database_url

    env = {"DATABASE_URL": database_url(), "FIELD_ENCRYPTION_KEYS": _encryption_keys(), "PYTHONWARNINGS": "ignore"}
    for args, stdin, line in [
        (["add_provider_key", "--provider", "openai", "--name", "quiet", "--key", "-"], SECRET + "\n",
         "Added provider key quiet (openai, priority 100)."),
        (["disable_provider_key", "--name", "quiet", "--drain"], "", "Provider key quiet is draining."),
        (["disable_provider_key", "--name", "quiet"], "", "Provider key quiet is disabled."),
    ]:
        result = manage(*args, stdin=stdin, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [line]
        assert result.stderr == "", result.stderr
    # Asked for more (-v 2), the operator sees the log lines too.
    result = manage("add_provider_key", "--provider", "openai", "--name", "loud", "--key", "-", "-v", "2",
                    stdin=SECRET + "\n", env=env)
    assert result.returncode == 0 and "provider key loud added" in result.stderr
    assert SECRET not in result.stdout + result.stderr
