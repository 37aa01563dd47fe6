"""A PostgreSQL password may hold any character, also those that mean something in a URL
(@ / : # % ?): the documented compose set-up and a hand-written DATABASE_URL both log in with it."""

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Every character a URL gives a meaning to, and a space.
PASSWORD = "p@ss/w:rd#1%41?x y"
# What the connection reports, from a process started on the given environment.
PROBE = (
    "import json; from django.db import connection as c; c.ensure_connection();"
    "cur = c.cursor(); cur.execute('SELECT current_user, current_database()'); user, name = cur.fetchone();"
    "print(json.dumps({'user': user, 'database': name, 'password': c.get_connection_params().get('password')}))"
)


def settings_probe(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DATABASE_PASSWORD", "REDIS_URL"}}
    env.update({"DJANGO_SECRET_KEY": "x" * 60, "PYTHONWARNINGS": "ignore", **env_overrides})
    return subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def scram_verifier_matches(verifier: str, password: str) -> bool:
    """Whether `password` is the one PostgreSQL stored as this SCRAM-SHA-256 verifier (RFC 5802:
    StoredKey = H(HMAC(SaltedPassword, "Client Key"))). The test server trusts connections from
    127.0.0.1 and never asks for the password; its own record of it still tells a mangled one."""
    iterations, salt, stored_key = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):.+", verifier).groups()
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return hashlib.sha256(client_key).digest() == base64.b64decode(stored_key)


@pytest.fixture
def role_with_url_characters_in_its_password(needs_postgres, django_db_blocker):
    """A PostgreSQL role whose password holds every URL character; dropped afterwards. Made in
    autocommit, so the probing process sees it."""
    from django.db import connection

    role = f"parley_pw_{uuid.uuid4().hex[:12]}"
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SET password_encryption = 'scram-sha-256'")
        cursor.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", [PASSWORD])
        cursor.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role])
        verifier = cursor.fetchone()[0]
        db = connection.settings_dict
        server = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        database = connection.settings_dict["NAME"]
    try:
        yield role, server, database, verifier
    finally:
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role])
            cursor.execute(f"DROP ROLE IF EXISTS {role}")


def _logs_in_as(role: str, database: str, verifier: str, **env: str) -> None:
    result = settings_probe(PROBE, **env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert (seen["user"], seen["database"]) == (role, database)
    assert seen["password"] == PASSWORD
    assert scram_verifier_matches(verifier, seen["password"])


@pytest.mark.django_db(transaction=True)
def test_database_password_apart_from_the_url_logs_in_with_any_character(role_with_url_characters_in_its_password):
    role, server, database, verifier = role_with_url_characters_in_its_password
    _logs_in_as(role, database, verifier, DATABASE_URL=f"postgres://{role}@{server}/{database}", DATABASE_PASSWORD=PASSWORD)


@pytest.mark.django_db(transaction=True)
def test_a_percent_encoded_password_in_database_url_logs_in(role_with_url_characters_in_its_password):
    role, server, database, verifier = role_with_url_characters_in_its_password
    _logs_in_as(role, database, verifier, DATABASE_URL=f"postgres://{role}:{quote(PASSWORD, safe='')}@{server}/{database}")


def test_a_password_in_both_places_stops_with_one_line():
    """Two passwords, one of them not used: refused rather than guessed at."""
    result = settings_probe(
        "print('started')",
        DATABASE_URL="postgres://parley:url-secret-1@db.example.com:5432/parley",
        DATABASE_PASSWORD="env-secret-2",
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_PASSWORD" in lines[0], result.stderr
    assert "secret" not in result.stderr  # neither password is echoed


def compose_app_environment(variables: dict[str, str]) -> dict[str, str]:
    """The environment docker-compose.yml gives the app's containers (the `x-app` anchor), with
    `${NAME:?message}` and `${NAME:-default}` filled in from `variables` as compose does."""
    text = (ROOT / "docker-compose.yml").read_text()
    block = re.search(r"^  environment: &app-env\n((?:    \S.*\n)+)", text, re.MULTILINE).group(1)

    def interpolate(value: str) -> str:
        def fill(match: re.Match) -> str:
            name, kind, fallback = match.group(1), match.group(2), match.group(3)
            if variables.get(name):
                return variables[name]
            assert kind == ":-", f"compose would stop: {name} is required"
            return fallback

        return re.sub(r"\$\{(\w+)(:\?|:-)([^}]*)\}", fill, value)

    return {key: interpolate(value) for key, value in re.findall(r"^    (\w+): (.*)$", block, re.MULTILINE)}


def test_the_compose_set_up_takes_any_postgres_password():
    """README: set POSTGRES_PASSWORD in .env and `docker compose up`. The postgres container takes it
    as it is; the app must read the very same password from what compose gives it."""
    environment = compose_app_environment({"POSTGRES_PASSWORD": PASSWORD, "DJANGO_SECRET_KEY": "x" * 60})
    code = (
        "import json; from django.conf import settings as s; d = s.DATABASES['default'];"
        "print(json.dumps([d['USER'], d['PASSWORD'], d['HOST'], d['PORT'], d['NAME']]))"
    )
    result = settings_probe(code, **{k: environment[k] for k in ("DATABASE_URL", "DATABASE_PASSWORD") if k in environment})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == ["parley", PASSWORD, "postgres", 5432, "parley"]


@pytest.mark.parametrize("password", ["p@ss/word", "pass/word", "pa?ss", "pass#word/x"])
def test_a_password_written_into_the_url_as_it_is_stops_with_one_line_saying_how(password):
    """Unencoded, these cut the URL elsewhere: the site took part of the password for the host or
    the database name, and tried to log in there."""
    result = settings_probe("print('started')", DATABASE_URL=f"postgres://parley:{password}@postgres:5432/parley")
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0] and "percent-encode" in lines[0], result.stderr
