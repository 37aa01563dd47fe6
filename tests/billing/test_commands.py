import os
import subprocess
import sys
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import AuditEvent
from billing.models import Budget, ModelPrice
from billing.prices import price_for

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_set_budget_for_a_user_and_a_team(user, make_team):
    make_team("Physics", user)
    assert "user alice: month budget 12.50 USD" in run("set_budget", "--user", "ALICE", "--limit", "12.5", "--period", "month")
    run("set_budget", "--team", "physics", "--limit", "100", "--period", "total", "--warn", "0.9")
    team_budget = Budget.objects.get(team__name="Physics")
    assert (team_budget.limit, team_budget.period, team_budget.warn_ratio) == (D("100"), "total", D("0.9"))
    run("set_budget", "--user", "alice", "--limit", "20", "--period", "month")
    assert Budget.objects.get(user=user).limit == D("20")
    assert AuditEvent.objects.filter(action="budget.set").count() == 3


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--user", "alice", "--limit", "-5", "--period", "day"], "negative"),
        (["--user", "alice", "--limit", "five", "--period", "day"], "number"),
        (["--user", "alice", "--limit", "1e12", "--period", "day"], "above"),
        (["--user", "alice", "--limit", "inf", "--period", "day"], "number"),
        (["--user", "nobody", "--limit", "5", "--period", "day"], "unknown user"),
        (["--team", "nowhere", "--limit", "5", "--period", "day"], "unknown team"),
        (["--user", "alice", "--limit", "5", "--period", "fortnight"], "period"),
        (["--user", "alice", "--limit", "5", "--period", "day", "--warn", "0.0004"], "threshold"),
        (["--user", "alice", "--team", "x", "--limit", "5", "--period", "day"], "not allowed with"),
        (["--limit", "5", "--period", "day"], "one of the arguments --user --team is required"),
    ],
)
def test_set_budget_refuses_bad_input_and_changes_nothing(user, args, error):
    with pytest.raises(CommandError, match=error):
        run("set_budget", *args)
    assert not Budget.objects.exists()
    assert not AuditEvent.objects.exists()


def test_set_price_puts_a_new_price_in_force():
    out = run("set_price", "--model", "openai:gpt-4o", "--input", "3", "--output", "12", "--context-window", "64000")
    assert out.startswith("openai:gpt-4o: input 3.000000, output 12.000000")
    quote = price_for(model_id="openai:gpt-4o")
    assert (quote.input_per_million, quote.output_per_million, quote.context_window) == (D("3"), D("12"), 64000)


def test_a_negative_zero_is_stored_and_shown_as_zero(user):
    """-0 is a valid zero, but it must not surface as "-0.00" in output or the audit log."""
    out = run("set_budget", "--user", "alice", "--limit", "-0", "--period", "day")
    assert "day budget 0.00 USD" in out and "-0" not in out
    out = run("set_price", "--model", "openai:gpt-4o", "--input", "-0", "--output", "-0.000")
    assert out.startswith("openai:gpt-4o: input 0.000000, output 0.000000")
    assert Budget.objects.get().limit.is_signed() is False
    assert price_for(model_id="openai:gpt-4o").input_per_million.is_signed() is False
    for event in AuditEvent.objects.all():
        assert not any(str(value).startswith("-") for value in event.data.values()), event.data


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--model", "gpt-4o", "--input", "1", "--output", "1"], "PROVIDER:MODEL"),
        (["--model", "openai:bad model", "--input", "1", "--output", "1"], "PROVIDER:MODEL"),
        (["--model", "openai:gpt-4o\n", "--input", "1", "--output", "1"], "PROVIDER:MODEL"),
        (["--model", "openai:gpt-4o", "--input", "-1", "--output", "1"], "negative"),
        (["--model", "openai:gpt-4o", "--input", "1", "--output", "-2"], "negative"),
        (["--model", "openai:gpt-4o", "--input", "x", "--output", "1"], "number"),
        (["--model", "openai:gpt-4o", "--input", "1", "--output", "1", "--context-window", "-5"], "between"),
        (["--model", "openai:gpt-4o", "--input", "0.0000004", "--output", "0.0000004"], "more than 6 decimal places"),
        (["--model", "openai:gpt-4o", "--input", "1", "--output", "0.123456789012345"], "more than 6 decimal places"),
    ],
)
def test_set_price_refuses_bad_input_and_changes_nothing(args, error):
    count = ModelPrice.objects.count()
    with pytest.raises(CommandError, match=error) as excinfo:
        run("set_price", *args)
    assert "\n" not in str(excinfo.value)
    assert ModelPrice.objects.count() == count
    assert not AuditEvent.objects.filter(action="price.set").exists()


def test_set_price_takes_zeros_past_the_sixth_place_as_the_same_price():
    out = run("set_price", "--model", "openai:gpt-4o", "--input", "1.50000000", "--output", "2.0000000000")
    assert out.startswith("openai:gpt-4o: input 1.500000, output 2.000000")


def test_a_bad_command_line_exits_non_zero_with_one_line():
    """The real command line (no database needed for these refusals)."""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{ROOT / 'unused-cli-test.sqlite3'}"}
    env.pop("REDIS_URL", None)
    for args in (
        ["set_price", "--model", "openai:gpt-4o", "--input", "-1", "--output", "1"],
        ["set_budget", "--user", "alice", "--limit", "5"],
    ):
        proc = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        errors = [line for line in proc.stderr.splitlines() if line and "Warning" not in line and "warnings.warn" not in line]
        assert proc.returncode != 0
        assert len(errors) == 1, proc.stderr
        assert errors[0].startswith("CommandError: ")
    (ROOT / "unused-cli-test.sqlite3").unlink(missing_ok=True)
