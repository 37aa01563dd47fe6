"""Erasure: nothing of the person is left anywhere, and no money is lost."""

import io
import signal
import sys
import types
import uuid
from datetime import timedelta

import pytest
from axes.models import AccessAttempt, AccessLog
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils import timezone

from accounts import data_rights
from accounts.audit import audit_record
from accounts.models import AuditEvent, DataExport, ErasureRequest, Team, TeamMembership
from billing import data_rights as billing_rights
from billing.models import DailyUsage, UsageRecord
from conversations import data_rights as conversation_rights
from conversations.models import Conversation, Message

from .data_rights_fixtures import (
    WorkerKilled,
    broker_down_once,
    dies_on_call,
    error_lines,
    make_history,
    manage_py,
    other_process,
    run_as_worker,
    scan_cache,
    scan_database,
    scan_media,
    travel,
)

PASSWORD = "correct horse battery 9"
User = get_user_model()


@pytest.fixture
def team(db):
    return Team.objects.create(name="Research")


@pytest.fixture
def victim(make_user, team):
    user = make_user("zed_erasable", display_name="Zed Q. Erasable-Person")
    TeamMembership.objects.create(team=team, user=user)
    return user


def _logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _populate(victim, other_user, team, *, export=True):
    """Everything a person leaves behind: history and ledger, sessions, login records, an export
    file, audit entries naming them, cached items."""
    texts = make_history(victim, conversations=3, messages_each=6, team=team)
    make_history(other_user, conversations=1, messages_each=4)
    clients = [_logged_in(victim), _logged_in(victim)]
    other_client = _logged_in(other_user)
    AccessAttempt.objects.create(
        username=victim.username, ip_address="10.1.2.3", user_agent="ua", get_data="", post_data=f"username={victim.username}",
        failures_since_start=1,
    )
    AccessLog.objects.create(username=victim.email, ip_address="10.1.2.3", user_agent="ua")
    AccessLog.objects.create(username=other_user.username, ip_address="10.9.9.9", user_agent="ua")
    audit_record(action="user.create", actor=other_user, target=victim, data={"username": victim.username, "email": victim.email})
    audit_record(action="login", actor=victim, ip_address="10.1.2.3", data={})
    if export:
        item = DataExport.objects.create(user=victim)
        data_rights.export_build(export_id=item.pk)
    cache.set(f"user:{victim.pk}:profile", {"name": victim.display_name, "email": victim.email}, 600)
    return texts, clients, other_client


def _logged_in_still(client) -> bool:
    """Whether this browser's session still authenticates (401 when it does not)."""
    return client.get("/api/v1/account/export/00000000-0000-0000-0000-000000000000/").status_code != 401


def _needles(victim, texts):
    return [victim.username, victim.email, victim.display_name, *texts]


def _assert_nothing_left(needles):
    assert scan_database(needles) == []
    assert scan_cache(needles) == []
    assert scan_media(needles) == []


@pytest.mark.django_db(transaction=True)
def test_erasure_leaves_nothing_and_keeps_the_money(victim, other_user, team, django_capture_on_commit_callbacks):
    texts, clients, other_client = _populate(victim, other_user, team)
    needles = _needles(victim, texts)
    assert scan_database(needles) and scan_media(needles) and scan_cache(needles)  # the scans do see them
    totals = billing_rights.usage_totals()
    team_cost = sum(r.cost for r in UsageRecord.objects.filter(team=team))
    victim_id = victim.pk

    erasure = data_rights.erasure_request(user=victim, requested_by=victim)

    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.DONE
    _assert_nothing_left(needles)
    assert billing_rights.usage_totals() == totals
    assert sum(r.cost for r in UsageRecord.objects.filter(team=team)) == team_cost
    assert not UsageRecord.objects.filter(user_id=victim_id).exists()
    assert not DailyUsage.objects.filter(user_id=victim_id).exists()
    assert not User.objects.filter(pk=victim_id).exists()
    # Logged out everywhere; the other person is untouched.
    assert not any(_logged_in_still(client) for client in clients)
    assert other_client.get("/accounts/data/").status_code == 200
    assert Conversation.objects.filter(owner=other_user).count() == 1
    assert AccessLog.objects.filter(username=other_user.username).exists()
    # The audit log records it by id only.
    events = AuditEvent.objects.filter(action__in=["user.erase", "user.erase_done"], target_id=str(victim_id))
    assert {e.action for e in events} == {"user.erase", "user.erase_done"}
    assert not AuditEvent.objects.filter(actor_id=victim_id, ip_address__isnull=False).exists()
    receipt = erasure.receipt
    assert receipt["conversations"] == 3 and receipt["messages"] == 18
    assert receipt["sessions"] == 2 and receipt["exports"] == 1 and receipt["account"] == 1
    # Two written here, two by the logins themselves (django-axes logs every login).
    assert receipt["login_records"] == 4 and receipt["usage_records_anonymised"] == 9


@pytest.mark.django_db
def test_erasure_leaves_no_name_in_the_admin_history_of_the_persons_budgets(victim, admin_client):
    """A budget is shown in the admin history as "user <username> / month: ..."; the budget goes
    with the person, and so must the name in its history entries."""
    from django.contrib.admin.models import LogEntry

    for period in ("day", "month"):
        response = admin_client.post(
            "/admin/billing/budget/add/", {"user": str(victim.pk), "team": "", "period": period, "limit": "5", "warn_ratio": "0.8"}
        )
        assert response.status_code == 302
    # One budget deleted before the erasure: its history entries still name the person.
    day_budget = victim.budgets.get(period="day")
    assert admin_client.post(f"/admin/billing/budget/{day_budget.pk}/delete/", {"post": "yes"}).status_code == 302
    assert LogEntry.objects.filter(object_repr__contains=victim.username).count() == 3  # what is to be erased

    erasure = data_rights.erasure_request(user=victim, queue=False)
    data_rights.erasure_run(erasure_id=erasure.pk)

    assert scan_database([victim.username, victim.email]) == []
    assert LogEntry.objects.count() == 3  # the history entries stay, without the name


@pytest.mark.django_db(transaction=True)
def test_erasure_interrupted_midway_then_run_again_completes(victim, other_user, team, monkeypatch):
    texts, clients, _other = _populate(victim, other_user, team)
    make_history(victim, conversations=22, messages_each=2, tag="many")  # more than one batch of 20
    texts += [f"secret-many-{c}-{m} 비밀" for c in range(22) for m in range(2)]
    totals = billing_rights.usage_totals()
    needles = _needles(victim, texts)
    real_delete = conversation_rights.conversations_delete
    calls = {"n": 0}

    def dies_on_second_batch(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("worker killed")
        return real_delete(**kwargs)

    monkeypatch.setattr(conversation_rights, "conversations_delete", dies_on_second_batch)
    erasure = data_rights.erasure_request(user=victim, queue=False)
    with pytest.raises(RuntimeError):
        data_rights.erasure_run(erasure_id=erasure.pk)
    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.RUNNING
    assert erasure.steps_done == ["streams", "exports"]
    assert erasure.last_error == "RuntimeError"
    assert Conversation.objects.filter(owner=victim).count() == 25 - 20
    # Locked while it waits: inactive, no usable password, its sessions no longer authenticate.
    victim.refresh_from_db()
    assert not victim.is_active and not victim.has_usable_password()
    assert not _logged_in_still(clients[0])

    # The request asked again (or the periodic resume) finds the same erasure and finishes it.
    assert data_rights.erasure_request(user=victim, queue=False).pk == erasure.pk
    data_rights.erasure_run(erasure_id=erasure.pk)
    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.DONE
    assert erasure.receipt["conversations"] == 25
    assert erasure.receipt["messages"] == 18 + 44
    _assert_nothing_left(needles)
    assert billing_rights.usage_totals() == totals
    # Running it once more changes nothing.
    data_rights.erasure_run(erasure_id=erasure.pk)
    assert ErasureRequest.objects.get(pk=erasure.pk).receipt == erasure.receipt


@pytest.mark.django_db(transaction=True)
def test_erasure_interrupted_after_the_ledger_step_resumes(victim, other_user, team, monkeypatch):
    texts, _c, _o = _populate(victim, other_user, team, export=False)
    totals = billing_rights.usage_totals()

    def broken(**kwargs):
        raise ConnectionError("database went away")

    monkeypatch.setattr(data_rights, "sessions_delete_for_user", broken)
    erasure = data_rights.erasure_request(user=victim, queue=False)
    with pytest.raises(ConnectionError):
        data_rights.erasure_run(erasure_id=erasure.pk)
    assert billing_rights.usage_totals() == totals  # half done, still not a cent lost
    monkeypatch.undo()
    data_rights.erasure_run(erasure_id=erasure.pk)
    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.DONE
    assert erasure.receipt["sessions"] == 2
    _assert_nothing_left(_needles(victim, texts))
    assert billing_rights.usage_totals() == totals


@pytest.mark.django_db(transaction=True)
def test_erasure_during_a_streaming_reply_leaves_nothing_behind(victim, other_user, team, monkeypatch):
    texts, _c, _o = _populate(victim, other_user, team, export=False)
    conversation = Conversation.objects.filter(owner=victim).first()
    partial = "partial-reply-words-7c1f 스트리밍"
    Message.objects.create(conversation=conversation, role=Message.Role.ASSISTANT, content="", status=Message.Status.STREAMING)
    # What the turn keeps while it streams (see the report): the text so far and the deltas.
    cache.set(f"stream:{conversation.id}", {"message_id": "m", "seq": 3, "text": partial}, 600)
    cache.set(f"stream:{conversation.id}:deltas", [partial[:7], partial[7:]], 600)
    cache.set(f"billing:rl:{victim.pk}:requests_per_minute:1", 2, 600)  # billing.limits' counters
    cache.set(f"billing:rl:{other_user.pk}:requests_per_minute:1", 3, 600)
    stopped = []

    def turns_stop_for_user(*, user_id):
        stopped.append(user_id)
        # A reply being stopped flushes its buffer one last time, after it was told to stop.
        cache.set(f"stream:{conversation.id}", {"message_id": "m", "seq": 4, "text": partial + " more"}, 600)

    # The chat work owns conversations.turns; this branch has none yet, so a stand-in is installed.
    monkeypatch.setitem(sys.modules, "conversations.turns", types.SimpleNamespace(turns_stop_for_user=turns_stop_for_user))

    erasure = data_rights.erasure_request(user=victim)

    erasure.refresh_from_db()
    assert stopped == [victim.pk]
    assert erasure.status == ErasureRequest.Status.DONE
    assert erasure.receipt["replies_stopped"] == 1
    assert cache.get(f"billing:rl:{victim.pk}:requests_per_minute:1") is None
    assert cache.get(f"billing:rl:{other_user.pk}:requests_per_minute:1") == 3
    assert cache.get(f"stream:{conversation.id}") is None
    assert cache.get(f"stream:{conversation.id}:deltas") is None
    _assert_nothing_left([*_needles(victim, texts), partial, "partial-reply-words-7c1f"])


@pytest.mark.django_db(transaction=True)
def test_erasure_goes_on_when_stopping_replies_fails(victim, monkeypatch):
    make_history(victim, conversations=1, messages_each=2)

    def turns_stop_for_user(*, user_id):
        raise RuntimeError("chat is down")

    monkeypatch.setitem(sys.modules, "conversations.turns", types.SimpleNamespace(turns_stop_for_user=turns_stop_for_user))
    erasure = data_rights.erasure_request(user=victim)
    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.DONE


@pytest.mark.django_db
def test_erased_rollup_rows_fold_into_the_anonymous_bucket(victim, make_user, team):
    first = make_user("first_gone")
    make_history(first, conversations=1, messages_each=2, team=team)
    make_history(victim, conversations=1, messages_each=2, team=team)
    DailyUsage.objects.filter(user=victim).update(day=DailyUsage.objects.get(user=first).day)
    totals = billing_rights.usage_totals()
    billing_rights.usage_forget_user(user_id=first.pk)
    billing_rights.usage_forget_user(user_id=victim.pk)
    assert DailyUsage.objects.filter(user__isnull=True, team=team).count() == 1
    assert billing_rights.usage_totals() == totals


@pytest.mark.django_db
def test_erasure_preview_counts_what_would_go(victim, other_user, team):
    make_history(victim, conversations=2, messages_each=3)
    _logged_in(victim)
    preview = data_rights.erasure_preview(user=victim)
    assert preview["conversations"] == 2 and preview["messages"] == 6 and preview["sessions"] == 1
    assert preview["usage_records_kept"] == 2


# --- Entry points and bad input ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_erasure_whose_task_the_broker_refused_is_recorded_and_resumed_later(victim, other_user, team, monkeypatch):
    """With the broker down when the task is sent, the request is still answered 202 (the
    erasure is recorded and the account locked) and the periodic resume finishes it."""
    from accounts import tasks

    texts, _c, _o = _populate(victim, other_user, team, export=False)
    sent = broker_down_once(monkeypatch, tasks.erasure_run_task)
    response = _logged_in(victim).post(
        "/api/v1/account/erase/", {"password": PASSWORD, "confirm": "ERASE"}, content_type="application/json"
    )
    assert response.status_code == 202
    erasure = ErasureRequest.objects.get(pk=response.json()["erasure_id"])
    assert erasure.status == "pending" and not User.objects.get(pk=victim.pk).is_active

    travel(monkeypatch, timedelta(minutes=11))
    assert data_rights.erasures_resume_stuck() == [str(erasure.pk)]
    erasure.refresh_from_db()
    assert erasure.status == "done" and len(sent) == 2
    _assert_nothing_left(_needles(victim, texts))


@pytest.mark.django_db(transaction=True)
def test_api_erase_with_password_and_erase_word(victim, other_user, team):
    texts, _c, _o = _populate(victim, other_user, team, export=False)
    client = _logged_in(victim)
    response = client.post(
        "/api/v1/account/erase/", {"password": PASSWORD, "confirm": "ERASE"}, content_type="application/json"
    )
    assert response.status_code == 202
    body = response.json()
    assert body["erasure_id"] and body["receipt_url"].startswith("/accounts/data/erased/")
    receipt = Client().get(body["receipt_url"])
    assert receipt.status_code == 200
    assert "Conversations" in receipt.content.decode()
    _assert_nothing_left(_needles(victim, texts))
    assert not _logged_in_still(client)  # this browser is logged out too


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"password": "wrong password 1", "confirm": "ERASE"}, "wrong_password"),
        ({"password": PASSWORD, "confirm": "erase"}, "confirmation_required"),
        ({"password": PASSWORD, "confirm": ""}, "confirmation_required"),
        ({"password": PASSWORD}, "invalid_input"),
        ([PASSWORD, "ERASE"], "invalid_input"),
    ],
)
def test_api_erase_bad_input_changes_nothing(victim, body, code):
    make_history(victim, conversations=1, messages_each=2)
    client = _logged_in(victim)
    response = client.post("/api/v1/account/erase/", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    victim.refresh_from_db()
    assert victim.is_active and victim.check_password(PASSWORD)
    assert Conversation.objects.filter(owner=victim).count() == 1
    assert not ErasureRequest.objects.exists()
    assert client.get("/accounts/data/").status_code == 200  # still logged in


@pytest.mark.django_db
def test_api_erase_not_json_and_anonymous(victim):
    client = _logged_in(victim)
    response = client.post("/api/v1/account/erase/", "nope", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"
    # Nested past the JSON parser's depth (RecursionError, not a ValueError): still a 400.
    response = client.post("/api/v1/account/erase/", "[" * 100_000 + "]" * 100_000, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_input"
    # A password that is not text (a lone surrogate escape): the password is wrong, no 500.
    response = client.post(
        "/api/v1/account/erase/", '{"password": "\\ud800", "confirm": "ERASE"}', content_type="application/json"
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "wrong_password"
    victim.refresh_from_db()
    assert victim.is_active
    anonymous = Client().post("/api/v1/account/erase/", {"password": PASSWORD, "confirm": "ERASE"}, content_type="application/json")
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "not_authenticated"


@pytest.mark.django_db(transaction=True)
def test_profile_erase_form_leads_to_a_receipt(victim, other_user, team):
    texts, _c, _o = _populate(victim, other_user, team, export=False)
    client = _logged_in(victim)
    page = client.get("/accounts/data/")
    assert page.status_code == 200 and 'name="confirm"' in page.content.decode()
    response = client.post("/accounts/data/erase/", {"password": PASSWORD, "confirm": "ERASE"})
    assert response.status_code == 302
    receipt = client.get(response["Location"])
    assert receipt.status_code == 200
    content = receipt.content.decode()
    assert "Messages and their summaries" in content and "<td>18</td>" in content
    _assert_nothing_left(_needles(victim, texts))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"password": "not my password", "confirm": "ERASE"}, "That password is not right."),
        ({"password": PASSWORD, "confirm": "please"}, "Type ERASE, in capital letters, to confirm."),
        ({"password": PASSWORD}, "This field is required."),
    ],
)
def test_profile_erase_bad_input_changes_nothing(victim, form, message):
    make_history(victim, conversations=1, messages_each=2)
    client = _logged_in(victim)
    response = client.post("/accounts/data/erase/", form)
    assert response.status_code == 400
    assert message in response.content.decode()
    victim.refresh_from_db()
    assert victim.is_active and Conversation.objects.filter(owner=victim).exists()
    assert not ErasureRequest.objects.exists()


@pytest.mark.django_db
def test_receipt_with_a_forged_token_is_404(client):
    assert client.get("/accounts/data/erased/not-a-token/").status_code == 404


@pytest.mark.django_db
def test_the_only_administrator_cannot_be_erased(make_user):
    admin = make_user("root_admin", is_superuser=True, is_staff=True)
    with pytest.raises(data_rights.DataRightsError) as error:
        data_rights.erasure_request(user=admin)
    assert error.value.code == "only_admin"
    admin.refresh_from_db()
    assert admin.is_active and not ErasureRequest.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_erase_user_command(victim, other_user, team, capsys):
    texts, _c, _o = _populate(victim, other_user, team)
    call_command("erase_user", victim.username, "--yes")
    out = capsys.readouterr().out
    assert out.startswith(f"erased user #{victim.pk}") and victim.username not in out
    _assert_nothing_left(_needles(victim, texts))


@pytest.mark.django_db
def test_erase_user_command_bad_input_changes_nothing(victim):
    make_history(victim, conversations=1, messages_each=2)
    with pytest.raises(CommandError, match="--yes"):
        call_command("erase_user", victim.username)
    with pytest.raises(CommandError, match="no user named"):
        call_command("erase_user", "nobody_here", "--yes")
    victim.refresh_from_db()
    assert victim.is_active and Conversation.objects.filter(owner=victim).exists()
    assert not ErasureRequest.objects.exists()


def test_erase_user_answers_a_bad_command_line_in_one_line():
    """The real command line: argparse's refusal is one line too, not its usage block."""
    proc = manage_py("erase_user", "--yes")  # no username
    errors = error_lines(proc)
    assert proc.returncode != 0
    assert errors == ["CommandError: the following arguments are required: username"], proc.stderr


@pytest.mark.django_db
def test_erase_user_fails_when_another_run_holds_the_erasure(victim):
    """A second erase_user while a worker is erasing the same account must not report success:
    nothing was erased by it, and the account is still there until the other run ends."""
    erasure = data_rights.erasure_request(user=victim, queue=False)
    # Another process's run holds the erasure's lease (and keeps renewing it).
    ErasureRequest.objects.filter(pk=erasure.pk).update(
        status=ErasureRequest.Status.RUNNING, lease_token=uuid.uuid4(), lease_until=timezone.now() + data_rights.LEASE
    )
    out = io.StringIO()
    with pytest.raises(CommandError, match="already running") as error:
        call_command("erase_user", victim.username, "--yes", stdout=out)
    assert "\n" not in str(error.value)
    assert out.getvalue() == ""
    assert User.objects.filter(pk=victim.pk).exists()


@pytest.mark.django_db
def test_erasure_request_twice_returns_the_open_one(victim):
    first = data_rights.erasure_request(user=victim, queue=False)
    second = data_rights.erasure_request(user=victim, queue=False)
    assert first.pk == second.pk
    assert AuditEvent.objects.filter(action="user.erase").count() == 1


@pytest.mark.django_db(transaction=True)
def test_erasure_logs_out_sessions_kept_only_in_the_cache(victim, other_user, settings):
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cache"
    clients = [_logged_in(victim), _logged_in(victim)]
    other = _logged_in(other_user)
    assert len(data_rights.session_keys_of(user_id=victim.pk)) == 2
    erasure = data_rights.erasure_request(user=victim)
    erasure.refresh_from_db()
    assert erasure.receipt["sessions"] == 2
    assert not any(_logged_in_still(client) for client in clients)
    assert _logged_in_still(other)
    assert len(data_rights.session_keys_of(user_id=other_user.pk)) == 1


@pytest.mark.django_db(transaction=True)
def test_a_stuck_erasure_is_resumed_by_the_periodic_task(victim):
    from datetime import timedelta

    from django.utils import timezone

    from accounts.tasks import erasures_resume_task

    texts = make_history(victim, conversations=2, messages_each=2)
    erasure = data_rights.erasure_request(user=victim, queue=False)  # its worker "died"
    erasures_resume_task.delay()
    assert ErasureRequest.objects.get(pk=erasure.pk).status == ErasureRequest.Status.PENDING  # too recent
    ErasureRequest.objects.filter(pk=erasure.pk).update(created_at=timezone.now() - timedelta(minutes=11))
    erasures_resume_task.delay()
    assert ErasureRequest.objects.get(pk=erasure.pk).status == ErasureRequest.Status.DONE
    _assert_nothing_left([victim.username, victim.email, *texts])


# --- A run whose worker died ----------------------------------------------------------------------

STEPS = [name for name, _step in data_rights.ERASURE_STEPS]


@pytest.mark.django_db(transaction=True)
def test_an_erasure_whose_worker_was_killed_resumes_once_its_lease_runs_out(victim, other_user, team, monkeypatch):
    from accounts import tasks

    texts, _clients, _other = _populate(victim, other_user, team)
    make_history(victim, conversations=22, messages_each=2, tag="many")  # more than one batch of 20
    texts += [f"secret-many-{c}-{m} 비밀" for c in range(22) for m in range(2)]
    totals = billing_rights.usage_totals()
    erasure = data_rights.erasure_request(user=victim, queue=False)
    # A real worker process, killed (SIGKILL) in the middle of the second batch of conversations.
    killed = other_process(
        "import os, signal\n"
        "from accounts import data_rights\n"
        "from conversations import data_rights as conversation_rights\n"
        "real, calls = conversation_rights.conversations_delete, []\n"
        "def conversations_delete(**kwargs):\n"
        "    calls.append(1)\n"
        "    if len(calls) == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(**kwargs)\n"
        "conversation_rights.conversations_delete = conversations_delete\n"
        f"data_rights.erasure_run(erasure_id='{erasure.pk}')\n"
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.RUNNING and erasure.lease_until > timezone.now()
    assert erasure.steps_done == ["streams", "exports"] and erasure.receipt["conversations"] == 20

    # Redelivered at once (acks late, reject on worker lost): the dead run's lease is live, so the
    # task is not acked having done nothing; it comes back when that lease has run out.
    retries = run_as_worker(tasks.erasure_run_task, str(erasure.pk))
    assert len(retries) == 1
    assert 0 < retries[0] <= data_rights.LEASE.total_seconds() + data_rights.LEASE_RETRY_MARGIN_SECONDS + 1
    assert ErasureRequest.objects.get(pk=erasure.pk).steps_done == ["streams", "exports"]

    travel(monkeypatch, timedelta(seconds=retries[0]))
    assert run_as_worker(tasks.erasure_run_task, str(erasure.pk)) == []  # the retry, due now

    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.DONE and erasure.attempts == 2
    assert erasure.steps_done == STEPS  # every step once, in order
    assert erasure.receipt["conversations"] == 25 and erasure.receipt["messages"] == 18 + 44
    assert erasure.receipt["exports"] == 1 and erasure.receipt["account"] == 1
    assert erasure.lease_until is None and erasure.last_error == ""
    _assert_nothing_left(_needles(victim, texts))
    assert billing_rights.usage_totals() == totals


@pytest.mark.django_db(transaction=True)
def test_a_redelivered_erasure_task_retries_while_the_lease_is_live(victim, monkeypatch):
    from accounts import tasks

    make_history(victim, conversations=2, messages_each=2)
    erasure = data_rights.erasure_request(user=victim, queue=False)
    with monkeypatch.context() as patch:
        patch.setattr(data_rights, "sessions_delete_for_user", dies_on_call(1, data_rights.sessions_delete_for_user))
        with pytest.raises(WorkerKilled):
            data_rights.erasure_run(erasure_id=erasure.pk)
    held = ErasureRequest.objects.get(pk=erasure.pk)
    assert held.status == ErasureRequest.Status.RUNNING and "sessions" not in held.steps_done

    retries = run_as_worker(tasks.erasure_run_task, str(erasure.pk))

    assert len(retries) == 1  # a retry is scheduled: the task does not return as if done
    left = (held.lease_until - timezone.now()).total_seconds()
    assert left < retries[0] <= left + data_rights.LEASE_RETRY_MARGIN_SECONDS + 1
    now = ErasureRequest.objects.get(pk=erasure.pk)  # and nothing was run or taken
    assert (now.attempts, now.steps_done, now.lease_token, now.receipt) == (
        held.attempts, held.steps_done, held.lease_token, held.receipt
    )


@pytest.mark.django_db(transaction=True)
def test_the_periodic_resume_takes_up_an_erasure_as_soon_as_its_lease_runs_out(victim, monkeypatch):
    texts = make_history(victim, conversations=2, messages_each=2)
    erasure = data_rights.erasure_request(user=victim, queue=False)
    with monkeypatch.context() as patch:
        patch.setattr(data_rights, "sessions_delete_for_user", dies_on_call(1, data_rights.sessions_delete_for_user))
        with pytest.raises(WorkerKilled):
            data_rights.erasure_run(erasure_id=erasure.pk)
    assert data_rights.erasures_resume_stuck() == []  # a live lease: its run may be at work

    # Minutes after the request, not the ten the resume waits for an erasure that never started.
    travel(monkeypatch, data_rights.LEASE + timedelta(seconds=1))
    assert data_rights.erasures_resume_stuck() == [str(erasure.pk)]

    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.DONE and erasure.steps_done == STEPS
    _assert_nothing_left([victim.username, victim.email, *texts])
    assert data_rights.erasures_resume_stuck() == []  # done: never queued again
