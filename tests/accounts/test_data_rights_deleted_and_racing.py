"""Data rights at the edges: a conversation deleted before the erasure, a title or summary call
whose account is erased while the provider answers, and two runs of one erasure at once."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.test import Client

from billing.models import Reservation, UsageRecord
from conversations.models import Conversation, Message

from .data_rights_fixtures import scan_database


@pytest.mark.django_db
def test_the_title_of_a_conversation_its_owner_deleted_is_gone_after_erasure(make_user, admin_client):
    # The admin history names a conversation by its title. An erasure only sees the
    # conversations still there, so the title must leave that history when the owner deletes it.
    victim = make_user("zed_erasable")
    conversation = Conversation.objects.create(owner=victim, title="my secret plan kumquat", model="demo:echo")
    response = admin_client.post(
        f"/admin/conversations/conversation/{conversation.pk}/change/",
        {"owner": str(victim.pk), "title": "my secret plan kumquat", "model": "demo:echo", "system_prompt": "",
         "temperature": "", "max_tokens": "", "summary_upto": ""},
    )
    assert response.status_code == 302
    owner = Client()
    owner.force_login(victim)
    assert owner.delete(f"/api/v1/conversations/{conversation.pk}/").status_code == 204

    call_command("erase_user", victim.username, "--yes")

    assert scan_database(["my secret plan kumquat"]) == []


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["delete page", "bulk action"])
def test_the_title_of_a_conversation_deleted_in_the_admin_is_gone_after_erasure(how, make_user, admin_client):
    victim = make_user("zed_erasable")
    conversation = Conversation.objects.create(owner=victim, title="my divorce lawyer kumquat", model="demo:echo")
    Message.objects.create(conversation=conversation, role="user", content="hello")
    if how == "delete page":
        response = admin_client.post(f"/admin/conversations/conversation/{conversation.pk}/delete/", {"post": "yes"})
    else:
        response = admin_client.post(
            "/admin/conversations/conversation/",
            {"action": "delete_selected", "_selected_action": [str(conversation.pk)], "post": "yes"},
        )
    assert response.status_code == 302 and not Conversation.objects.filter(pk=conversation.pk).exists()

    call_command("erase_user", victim.username, "--yes")

    assert scan_database(["my divorce lawyer kumquat"]) == []


@pytest.mark.django_db(transaction=True)
def test_a_title_call_answered_after_its_account_was_erased_is_still_recorded(make_user, monkeypatch):
    from billing import prices
    from conversations import services
    from conversations.llm.base import ChatMessage

    prices.price_set(model_id="demo:echo", input_per_million="1000", output_per_million="1000", context_window=8192)
    make_user("root_admin", is_superuser=True)
    victim = make_user("zed_erasable")
    conversation = Conversation.objects.create(owner=victim, title="", model="demo:echo")
    calls = {"n": 0}
    original = prices.cost_of

    def cost_of(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the provider has answered, the ledger row is next: the erasure runs now
            call_command("erase_user", "zed_erasable", "--yes")
        return original(**kwargs)

    monkeypatch.setattr(prices, "cost_of", cost_of)
    text = services._complete(
        user=victim, conversation_id=conversation.id, model_id="demo:echo",
        messages=[ChatMessage("user", "name this conversation please")], max_tokens=24,
    )
    assert text
    row = UsageRecord.objects.get()  # the paid call is recorded, without the person
    assert (row.user_id, row.conversation_id) == (None, None) and row.cost > 0
    assert not Reservation.objects.filter(state=Reservation.State.HELD).exists()
    assert not Message.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_administrators_erased_at_once_leave_one(make_user, monkeypatch):
    # Both requests pass "is another administrator left?" at the same moment unless the check
    # locks: then the second waits for the first, sees it gone, and is refused.
    import threading

    from django.contrib.auth import get_user_model
    from django.db import connection

    from accounts import data_rights

    first = make_user("admin_a", is_superuser=True, is_staff=True)
    second = make_user("admin_b", is_superuser=True, is_staff=True)
    barrier = threading.Barrier(2, timeout=3)
    original = data_rights._only_admin

    def only_admin_then_meet(user):
        result = original(user)
        try:  # both past the check together, if nothing makes one wait (the bug)
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return result

    monkeypatch.setattr(data_rights, "_only_admin", only_admin_then_meet)
    refused = []

    def erase(user):
        try:
            data_rights.erasure_request(user=user, queue=False)
        except data_rights.DataRightsError as exc:
            refused.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=erase, args=(u,)) for u in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refused == ["only_admin"]
    assert get_user_model().objects.filter(is_superuser=True, is_active=True).count() == 1


# --- Two runs of one erasure ----------------------------------------------------------------------


def _paused_sessions_step(monkeypatch):
    """The first run to reach the sessions step waits there (outside any transaction, as a slow
    step would) until `go_on` is set; `inside` says it got there."""
    import threading

    from accounts import data_rights

    inside, go_on = threading.Event(), threading.Event()
    real = data_rights.sessions_delete_for_user

    def sessions_delete_for_user(**kwargs):
        if not inside.is_set():
            inside.set()
            go_on.wait(10)
        return real(**kwargs)

    monkeypatch.setattr(data_rights, "sessions_delete_for_user", sessions_delete_for_user)
    return inside, go_on


def _steps_recorded(monkeypatch) -> list[tuple[str, str]]:
    """(thread, step) for every step run, in the order they start."""
    import threading

    from accounts import data_rights

    ran: list[tuple[str, str]] = []

    def recorded(name, step):
        def run(erasure, user):
            ran.append((threading.current_thread().name, name))
            step(erasure, user)

        return run

    monkeypatch.setattr(data_rights, "ERASURE_STEPS", [(name, recorded(name, step)) for name, step in data_rights.ERASURE_STEPS])
    return ran


def _in_thread(name, target, outcome):
    import threading

    from django.db import connection

    def run():
        try:
            outcome.append(target())
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            outcome.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
def test_a_second_run_of_an_erasure_never_runs_beside_a_live_one(make_user, monkeypatch):
    from accounts import data_rights, tasks
    from accounts.models import ErasureRequest

    from .data_rights_fixtures import make_history, run_as_worker

    victim = make_user("zed_erasable")
    make_history(victim, conversations=2, messages_each=2)
    erasure = data_rights.erasure_request(user=victim, queue=False)
    inside, go_on = _paused_sessions_step(monkeypatch)
    ran = _steps_recorded(monkeypatch)
    outcome = []
    first = _in_thread("first", lambda: data_rights.erasure_run(erasure_id=erasure.pk), outcome)
    try:
        assert inside.wait(10)
        held = ErasureRequest.objects.get(pk=erasure.pk)
        # The same erasure run again meanwhile (a redelivery, the periodic resume, erase_user):
        with pytest.raises(data_rights.LeaseHeld):
            data_rights.erasure_run(erasure_id=erasure.pk)
        assert len(run_as_worker(tasks.erasure_run_task, str(erasure.pk))) == 1
        assert ErasureRequest.objects.get(pk=erasure.pk).lease_token == held.lease_token
    finally:
        go_on.set()
        first.join()
    erasure.refresh_from_db()
    assert outcome == [erasure] and erasure.status == ErasureRequest.Status.DONE
    assert {thread for thread, _step in ran} == {"first"}
    assert [step for _thread, step in ran] == [name for name, _step in data_rights.ERASURE_STEPS]
    assert erasure.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_run_that_stalled_past_its_lease_and_was_replaced_records_nothing(make_user, client, monkeypatch):
    from accounts import data_rights
    from accounts.models import ErasureRequest

    from .data_rights_fixtures import make_history, travel

    victim = make_user("zed_erasable")
    make_history(victim, conversations=2, messages_each=2)
    client.force_login(victim)
    erasure = data_rights.erasure_request(user=victim, queue=False)
    inside, go_on = _paused_sessions_step(monkeypatch)
    outcome = []
    stalled = _in_thread("stalled", lambda: data_rights.erasure_run(erasure_id=erasure.pk), outcome)
    try:
        assert inside.wait(10)
        travel(monkeypatch, data_rights.LEASE + timedelta(seconds=1))  # it stays silent a whole lease
        replacement = data_rights.erasure_run(erasure_id=erasure.pk)
        assert replacement.status == ErasureRequest.Status.DONE
    finally:
        go_on.set()
        stalled.join()
    # The stalled run wakes up and finishes its step: it is told another run has the erasure,
    # and the step it was in is not recorded a second time.
    assert len(outcome) == 1 and isinstance(outcome[0], data_rights.LeaseHeld)
    erasure.refresh_from_db()
    assert erasure.status == ErasureRequest.Status.DONE and erasure.attempts == 2
    assert erasure.steps_done == [name for name, _step in data_rights.ERASURE_STEPS]
    assert erasure.receipt["sessions"] == 1 and erasure.last_error == ""


# --- A step longer than the lease -------------------------------------------------------------------

ROWS = 30  # rows the step goes through, each taking SECONDS_PER_ROW: 5 minutes, over two leases
SECONDS_PER_ROW = 10


def _sessions_rows(victim, others):
    from django.contrib.auth import SESSION_KEY

    from accounts.sessions import SessionStore

    for index in range(ROWS):
        store = SessionStore()
        store[SESSION_KEY] = str((victim if index % 10 == 0 else others[index % len(others)]).pk)
        store.create()
    return SessionStore, "decode", "sessions", ROWS // 10


def _usage_rows(victim, others):
    from datetime import date

    from billing.models import DailyUsage

    for day in range(ROWS):
        DailyUsage.objects.create(day=date(2024, 1, 1) + timedelta(days=day), user=victim, provider="demo", model="echo")
    return DailyUsage, "save", "daily_rollups_anonymised", ROWS


def _audit_rows(victim, others):
    from accounts.audit import audit_record
    from accounts.models import AuditEvent

    for index in range(ROWS):
        audit_record(action="note", actor=others[0], data={"about": victim.username, "n": index})
    return AuditEvent, "save", "audit_entries_scrubbed", ROWS


@pytest.mark.parametrize("rows", [_sessions_rows, _usage_rows, _audit_rows], ids=["sessions", "usage", "audit"])
@pytest.mark.django_db
def test_a_step_longer_than_the_lease_renews_it_and_is_not_taken_over(rows, make_user, monkeypatch):
    """Every session decoded, every rollup row folded, every audit entry scrubbed takes time: a
    step over many rows can outlast the lease. The run renews it as it goes (at most every
    LEASE_RENEW_SECONDS), so the periodic resume or a redelivered task arriving meanwhile finds
    it held, instead of taking the erasure over and having the long step's work rolled back."""
    from django.utils import timezone

    from accounts import data_rights
    from accounts.models import ErasureRequest

    victim = make_user("zed_erasable")
    others = [make_user("other_a"), make_user("other_b")]
    model, method, receipt_key, expected = rows(victim, others)
    erasure = data_rights.erasure_request(user=victim, queue=False)

    real_now, clock = timezone.now, {"seconds": 0}
    monkeypatch.setattr(timezone, "now", lambda: real_now() + timedelta(seconds=clock["seconds"]))
    renewals = []
    real_renew = data_rights._erasure_lease_renew
    monkeypatch.setattr(data_rights, "_erasure_lease_renew", lambda e: (renewals.append(clock["seconds"]), real_renew(e)))
    seen, attempts = [], []
    real_method = getattr(model, method)

    def slow(self, *args, **kwargs):
        seen.append(1)
        clock["seconds"] += SECONDS_PER_ROW
        if len(seen) == ROWS * 2 // 3:  # 200 s into the step: a lease not renewed ran out at 120 s
            held = ErasureRequest.objects.get(pk=erasure.pk)
            attempts.append(held.lease_until > timezone.now())
            try:
                data_rights.erasure_run(erasure_id=erasure.pk)  # the periodic resume, a redelivery
            except data_rights.LeaseHeld:
                attempts.append("held")
            else:
                attempts.append("taken over")
        return real_method(self, *args, **kwargs)

    monkeypatch.setattr(model, method, slow)
    try:
        done = data_rights.erasure_run(erasure_id=erasure.pk)
    except data_rights.LeaseHeld:
        done = None  # it was taken over midway: what it did in its step was undone

    assert attempts == [True, "held"], "the lease ran out during a long step and another run took over"
    assert len(seen) >= ROWS
    assert done.status == ErasureRequest.Status.DONE and done.attempts == 1
    assert done.steps_done == [name for name, _step in data_rights.ERASURE_STEPS]
    assert done.receipt[receipt_key] == expected
    # Renewed while the step ran, and a bounded number of times (not once a row).
    during = [at for at in renewals if 0 < at]
    assert 1 <= len(during) <= ROWS * SECONDS_PER_ROW // data_rights.LEASE_RENEW_SECONDS + len(data_rights.ERASURE_STEPS)
