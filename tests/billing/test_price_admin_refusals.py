"""The price admin when a save is refused at the moment it is written: a colleague's save of the
same price raced it; and the rule that DEFAULT_MODEL keeps a price. The page says why in the
form, as for any refused input, and nothing of the save is kept."""

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.db.models.signals import post_init, pre_save
from django.test import Client
from django.utils import timezone

from accounts.models import AuditEvent
from billing.models import ModelPrice
from billing.prices import price_for, price_set
from tests.billing.test_admin import PRICE_FORM as ADMIN_PRICE_FORM
from tests.formpage import page_form

D = Decimal
ADD = "/admin/billing/modelprice/add/"
TAKEN = "A price for this model already starts at that moment: choose another moment, or change that price."

# test_admin's form, its moment given by each test.
PRICE_FORM = {k: v for k, v in ADMIN_PRICE_FORM.items() if not k.startswith("effective_from")}


def _moment_fields(moment) -> dict:
    local = timezone.localtime(moment)
    return {"effective_from_0": local.strftime("%Y-%m-%d"), "effective_from_1": local.strftime("%H:%M:%S")}


def _two_operators(django_user_model) -> list[Client]:
    """Two superusers' signed-in clients: two operators at their own browsers."""
    clients = []
    for name in ("root-a", "root-b"):
        operator = django_user_model.objects.create_superuser(name, f"{name}@example.test", "pw-123456789")
        client = Client()
        client.force_login(operator)
        clients.append(client)
    return clients


def _both_at_once(post, *, signal, receiver) -> list:
    """post(0) and post(1) in two threads, with `receiver` on `signal` for ModelPrice meanwhile:
    each post's response (none may raise)."""
    results: list = [None, None]

    def save(i: int) -> None:
        try:
            results[i] = post(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results[i] = exc
        finally:
            connection.close()

    signal.connect(receiver, sender=ModelPrice, weak=False)
    try:
        threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        signal.disconnect(receiver, sender=ModelPrice)
    assert all(not isinstance(r, BaseException) for r in results), results
    return results


def _future(days: int = 3) -> dt.datetime:
    return (timezone.now() + dt.timedelta(days=days)).replace(microsecond=0)


def _form_errors(response) -> list[str]:
    form = response.context["adminform"].form
    return [str(e) for errors in form.errors.values() for e in errors]


def _rows(model: str = "gpt-4o") -> list[tuple]:
    return list(
        ModelPrice.objects.filter(provider="openai", model=model)
        .order_by("effective_from", "pk")
        .values_list("effective_from", "input_per_million", "enabled")
    )


class _ColleagueSavesFirst:
    """Between price_set's check for a price at that moment and its insert, a colleague's price
    for the same moment lands (what a concurrent save does on PostgreSQL): made here on the same
    connection just before this save's insert, so the unique constraint refuses it for real."""

    def __init__(self, moment: dt.datetime):
        self.moment = moment
        self.fired = False

    def __call__(self, sender, instance, **kwargs):
        if self.fired or instance.pk is not None or instance.effective_from != self.moment:
            return
        self.fired = True
        ModelPrice.objects.create(
            provider=instance.provider,
            model=instance.model,
            effective_from=self.moment,
            input_per_million=D("7"),
            output_per_million=D("7"),
        )

    def __enter__(self):
        pre_save.connect(self, sender=ModelPrice, weak=False)
        return self

    def __exit__(self, *exc):
        pre_save.disconnect(self, sender=ModelPrice)


def test_price_set_reports_a_moment_taken_while_saving_as_a_price_error_and_keeps_nothing(db):
    from billing.prices import PriceError

    moment = _future()
    before, events = _rows(), AuditEvent.objects.count()
    with _ColleagueSavesFirst(moment) as colleague, pytest.raises(PriceError) as refused:
        price_set(model_id="openai:gpt-4o", input_per_million="3", output_per_million="9", effective_from=moment)
    assert colleague.fired and str(refused.value) == TAKEN
    # The insert failed in a savepoint: the connection goes on (on PostgreSQL a failed statement
    # would otherwise void the rest of the transaction), with nothing of that save in it.
    assert _rows() == before and AuditEvent.objects.count() == events


def test_a_price_whose_moment_is_taken_while_saving_is_refused_in_the_form_not_a_500(admin_client):
    moment = _future()
    before, events, logs = _rows(), AuditEvent.objects.count(), LogEntry.objects.count()

    with _ColleagueSavesFirst(moment) as colleague:
        response = admin_client.post(ADD, {**PRICE_FORM, **_moment_fields(moment)})

    assert colleague.fired
    assert response.status_code == 200
    assert _form_errors(response) == [TAKEN]
    assert TAKEN in response.content.decode()
    # Nothing of the refused save is kept: no row, no audit entry, no admin history line.
    assert _rows() == before
    assert (AuditEvent.objects.count(), LogEntry.objects.count()) == (events, logs)


def test_moving_a_scheduled_price_to_a_moment_taken_while_saving_keeps_it_where_it_was(admin_client):
    scheduled = price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", effective_from=_future(3))
    target = _future(5)
    before = _rows()

    with _ColleagueSavesFirst(target):
        response = admin_client.post(
            f"/admin/billing/modelprice/{scheduled.pk}/change/", {**PRICE_FORM, **_moment_fields(target)}
        )

    assert response.status_code == 200 and _form_errors(response) == [TAKEN]
    # The move's removal of the old row was undone with the refused insert.
    assert _rows() == before
    assert ModelPrice.objects.filter(pk=scheduled.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_two_operators_scheduling_the_same_price_at_once_the_second_is_told_it_exists(needs_postgres, django_user_model):
    # On SQLite the admin's IMMEDIATE transaction holds the write lock from its first statement,
    # so the second save waits and then replaces the first, as a save made after it would: the
    # two cannot race there (needs_postgres skips with that reason's service).
    moment = _future()
    before = _rows()
    clients = _two_operators(django_user_model)
    # Both saves have looked for a price at that moment (and found none) before either inserts.
    both_checked = threading.Barrier(2, timeout=20)

    def wait_for_the_other(sender, instance, **kwargs):
        if instance.effective_from == moment:
            both_checked.wait()

    results = _both_at_once(
        lambda i: clients[i].post(ADD, {**PRICE_FORM, "input_per_million": str(3 + i), **_moment_fields(moment)}),
        signal=pre_save,
        receiver=wait_for_the_other,
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 302], codes
    [winner] = [i for i, r in enumerate(results) if r.status_code == 302]
    [loser] = [r for r in results if r.status_code == 200]
    # From the page itself: the test client's response.context is filled from a signal, which
    # in two threads at once catches the other request's templates too.
    assert TAKEN in loser.content.decode() and 'class="errornote"' in loser.content.decode()
    # The winner's price, once; the loser's nowhere.
    assert _rows() == [*before, (moment, D(3 + winner), True)]
    assert price_for(model_id="openai:gpt-4o", at=moment).input_per_million == D(3 + winner)
    assert AuditEvent.objects.filter(action="price.set").count() == 1
    assert LogEntry.objects.count() == 1


MOVED_MEANWHILE = (
    "This price was moved or deleted by someone else while you were editing it: nothing was saved. "
    "Open the price list again to see the prices as they are now."
)


def test_moving_a_scheduled_price_that_a_colleague_moved_meanwhile_adds_nothing(admin_client):
    # The move became an addition: a second scheduled price beside the colleague's, which the
    # operator never saw. Here the colleague's change (the row gone) lands after this save loaded
    # the row and before price_set locks it, on the same connection.
    scheduled = price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", effective_from=_future(3))
    fired = []

    def colleague_moves_it(sender, instance, **kwargs):
        if instance.pk == scheduled.pk and not fired:
            fired.append(True)
            ModelPrice.objects.filter(pk=scheduled.pk).update(effective_from=_future(4))
            ModelPrice.objects.filter(pk=scheduled.pk).delete()

    before = _rows()
    post_init.connect(colleague_moves_it, sender=ModelPrice, weak=False)
    try:
        response = admin_client.post(
            f"/admin/billing/modelprice/{scheduled.pk}/change/", {**PRICE_FORM, **_moment_fields(_future(5))}
        )
    finally:
        post_init.disconnect(colleague_moves_it, sender=ModelPrice)

    assert fired and response.status_code == 200
    assert _form_errors(response) == [MOVED_MEANWHILE]
    assert _rows() == before  # the colleague's change was on this transaction: undone with it


@pytest.mark.django_db(transaction=True)
def test_two_operators_moving_the_same_scheduled_price_at_once_the_second_adds_nothing(needs_postgres, django_user_model):
    # SQLite serializes the two saves whole (see above): the second finds the row gone before
    # its form is even shown, and Django says so.
    scheduled = price_set(model_id="openai:gpt-4o", input_per_million="1", output_per_million="2", effective_from=_future(3))
    targets = [_future(5), _future(6)]
    clients = _two_operators(django_user_model)
    both_loaded = threading.Barrier(2, timeout=20)
    waited = threading.local()

    def wait_for_the_other(sender, instance, **kwargs):
        # Both pages' saves have loaded the row before either locks it.
        if instance.pk == scheduled.pk and not getattr(waited, "done", False):
            waited.done = True
            both_loaded.wait()

    results = _both_at_once(
        lambda i: clients[i].post(
            f"/admin/billing/modelprice/{scheduled.pk}/change/",
            {**PRICE_FORM, "input_per_million": str(3 + i), **_moment_fields(targets[i])},
            follow=True,
        ),
        signal=post_init,
        receiver=wait_for_the_other,
    )
    landed = [r.redirect_chain[-1][0] for r in results]
    assert sorted(landed) == ["/admin/", "/admin/billing/modelprice/"], landed
    winner = landed.index("/admin/billing/modelprice/")
    assert MOVED_MEANWHILE in results[1 - winner].content.decode()  # not response.context: see above
    scheduled_now = list(
        ModelPrice.objects.filter(provider="openai", model="gpt-4o", effective_from__gt=timezone.now())
        .values_list("effective_from", "input_per_million")
    )
    assert scheduled_now == [(targets[winner], D(3 + winner))]

# --- DEFAULT_MODEL keeps its price ---------------------------------------------------------------

DEFAULT_REFUSED = (
    "openai:gpt-4o is the site's default model (DEFAULT_MODEL): every new conversation starts on it, "
    "and with its price disabled each of their messages would be refused. Set DEFAULT_MODEL to another "
    "model that has a price and restart the site first, then disable this one."
)


@pytest.mark.parametrize("days", [0, 3], ids=["now", "scheduled"])
def test_disabling_the_price_of_the_default_model_is_refused_naming_DEFAULT_MODEL(admin_client, settings, days):
    # The start-up check said so only at the next start, after every new chat had failed since.
    settings.DEFAULT_MODEL = "openai:gpt-4o"
    seeded = ModelPrice.objects.get(provider="openai", model="gpt-4o")
    before, events = _rows(), AuditEvent.objects.count()
    moment = _moment_fields(_future(days)) if days else _moment_fields(seeded.effective_from)
    form = {**PRICE_FORM, **moment}
    del form["enabled"]  # the box unticked

    for url in (ADD, f"/admin/billing/modelprice/{seeded.pk}/change/"):
        response = admin_client.post(url, form)
        assert response.status_code == 200
        assert response.context["adminform"].form.errors == {"enabled": [DEFAULT_REFUSED]}
    assert _rows() == before and AuditEvent.objects.count() == events
    assert price_for(model_id="openai:gpt-4o") is not None
    assert price_for(model_id="openai:gpt-4o", at=_future(30)) is not None

    # Any other model's price is disabled as before; and the default's changed while enabled.
    assert admin_client.post(ADD, {**form, "model": "gpt-4o-mini"}).status_code == 302
    assert price_for(model_id="openai:gpt-4o-mini", at=_future(30)) is None
    assert admin_client.post(ADD, {**form, "enabled": "on", "input_per_million": "3"}).status_code == 302


def test_the_default_models_refusal_is_in_the_operators_language(client, django_user_model, settings):
    settings.DEFAULT_MODEL = "openai:gpt-4o"
    operator = django_user_model.objects.create_superuser("root-ko", "ko@example.test", language="ko")
    client.force_login(operator)
    form = {**PRICE_FORM, "effective_from_0": "2025-01-01", "effective_from_1": "00:00:00"}
    del form["enabled"]
    response = client.post(ADD, form)
    [error] = response.context["adminform"].form.errors["enabled"]
    assert "openai:gpt-4o" in error and "DEFAULT_MODEL" in error and "기본 모델" in error


def test_set_price_cannot_disable_the_default_model_either(db, settings):
    from django.core.management import CommandError, call_command

    settings.DEFAULT_MODEL = "openai:gpt-4o"
    before = _rows()
    with pytest.raises(CommandError) as refused:
        call_command("set_price", "--model", "openai:gpt-4o", "--input", "1", "--output", "2", "--disable")
    assert str(refused.value) == DEFAULT_REFUSED
    assert _rows() == before


def test_the_price_list_warns_at_once_when_the_default_model_has_no_price(admin_client, settings):
    # Set in the environment to a model never priced (or whose price was disabled before it became
    # the default): the list says so on every visit, not only the log at the next start.
    settings.DEFAULT_MODEL = "openai:gpt-unpriced"
    response = admin_client.get("/admin/billing/modelprice/")
    said = [(m.level_tag, str(m)) for m in response.context["messages"]]
    assert [level for level, text in said if "DEFAULT_MODEL" in text] == ["warning"]
    assert "openai:gpt-unpriced" in response.content.decode()

    settings.DEFAULT_MODEL = "openai:gpt-4o"
    response = admin_client.get("/admin/billing/modelprice/")
    assert not [m for m in response.context["messages"] if "DEFAULT_MODEL" in str(m)]


@pytest.mark.django_db(transaction=True)
def test_two_operators_saving_the_price_in_force_at_once_the_second_is_refused(needs_postgres, django_user_model):
    # Both pages show the price in force; each changes another field. Saved one after the other,
    # the second would put the first one's field back: it is refused instead, however close the
    # two saves come.
    price_set(model_id="openai:gpt-4o", input_per_million="2.5", output_per_million="10")
    row = ModelPrice.objects.filter(provider="openai", model="gpt-4o").latest("effective_from")
    url = f"/admin/billing/modelprice/{row.pk}/change/"
    clients = _two_operators(django_user_model)
    pages = [page_form(client, url, "modelprice_form") for client in clients]
    changes = [{"input_per_million": "3"}, {"output_per_million": "12"}]
    # Both saves have loaded the price they edit before either writes.
    both_loaded, seen = threading.Barrier(2, timeout=20), threading.local()

    def wait_for_the_other(sender, instance, **kwargs):
        if instance.pk == row.pk and not getattr(seen, "done", False):
            seen.done = True
            both_loaded.wait()

    results = _both_at_once(
        lambda i: clients[i].post(url, {**pages[i], **changes[i]}), signal=post_init, receiver=wait_for_the_other
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 302], codes
    [winner] = [i for i, r in enumerate(results) if r.status_code == 302]
    [loser] = [r for r in results if r.status_code == 200]
    assert "A newer price for openai:gpt-4o" in loser.content.decode()
    quote = price_for(model_id="openai:gpt-4o")
    expected = [(D("3"), D("10")), (D("2.5"), D("12"))][winner]
    assert (quote.input_per_million, quote.output_per_million) == expected
