"""The ProviderKey admin: write-only secret, services behind every save and action, permissions.

`conversations.llm.get_adapter` (the llm work, written in parallel) and
`billing.prices.prices_available` (the billing work) are replaced with simple stand-ins here."""

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.urls import reverse

from accounts.models import AuditEvent
from billing import keys
from billing.crypto import secret_decrypt
from billing.models import ProviderKey
from conversations.llm.base import ErrorKind, Finish, ProviderError, TextDelta, Usage
from tests.billing.keys_support import no_env_keys  # noqa: F401 - autouse
from tests.formpage import page_form

pytestmark = pytest.mark.django_db
SECRET = "sk-admin-canary-0123456789wxyz"
CHANGELIST = reverse("admin:billing_providerkey_changelist")
ADD = reverse("admin:billing_providerkey_add")


def change_url(key):
    return reverse("admin:billing_providerkey_change", args=[key.pk])


class FakeAdapter:
    """Stands in for a provider adapter: lists `served`, answers one token, or raises the error
    given (to the listing too: a refused key is refused everywhere)."""

    def __init__(self, error=None):
        self.error, self.calls, self.pings = error, [], []
        self.served = ["gpt-4o-mini", "claude-3-5-haiku-latest"]

    async def ping(self, *, key):
        self.pings.append(key.name)
        if self.error:
            raise self.error
        return list(self.served)

    async def stream(self, request, *, key):
        self.calls.append({"model": request.model, "max_tokens": request.max_tokens, "key": key.name})
        if self.error:
            raise self.error
        yield TextDelta("p")
        yield Usage(input_tokens=1, output_tokens=1)
        yield Finish(reason="length")


@pytest.fixture
def adapter(monkeypatch):
    fake = FakeAdapter()
    fake.ledger = []
    monkeypatch.setattr("conversations.llm.get_adapter", lambda provider: fake)
    monkeypatch.setattr("billing.prices.prices_available", lambda: [])
    monkeypatch.setattr("billing.prices.price_for", lambda *, model_id, at=None: None)
    monkeypatch.setattr("billing.ledger.usage_record", lambda **row: fake.ledger.append(row))
    return fake


def form_data(**overrides):
    data = {
        "name": "main",
        "provider": "openai",
        "secret": SECRET,
        "base_url": "",
        "priority": "100",
        "state": "enabled",
    }
    data.update(overrides)
    return data


def test_add_through_the_admin_stores_an_encrypted_key_and_audits_it(admin_client, admin_user):
    response = admin_client.post(ADD, form_data(base_url="http://127.0.0.1:11434/v1"), follow=True)
    assert response.status_code == 200
    key = ProviderKey.objects.get(name="main")
    assert secret_decrypt(key.secret_encrypted) == SECRET and key.base_url == "http://127.0.0.1:11434/v1"
    assert SECRET not in response.content.decode()
    event = AuditEvent.objects.get(action="provider_key.add")
    assert event.actor_id == admin_user.pk and event.target_id == str(key.pk)


def test_the_secret_is_write_only_in_changelist_and_change_form(admin_client):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    changelist = admin_client.get(CHANGELIST).content.decode()
    assert "…wxyz" in changelist and SECRET not in changelist and key.secret_encrypted not in changelist
    form = admin_client.get(change_url(key)).content.decode()
    assert "…wxyz" in form and SECRET not in form and key.secret_encrypted not in form
    assert 'type="password"' in form


def test_saving_without_a_secret_keeps_it_and_a_new_one_replaces_it(admin_client):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    response = admin_client.post(change_url(key), form_data(secret="", priority="5"), follow=True)
    assert SECRET not in response.content.decode()
    key.refresh_from_db()
    assert key.priority == 5 and secret_decrypt(key.secret_encrypted) == SECRET
    admin_client.post(change_url(key), form_data(secret="sk-replaced-0123456789"))
    key.refresh_from_db()
    assert secret_decrypt(key.secret_encrypted) == "sk-replaced-0123456789" and key.secret_last4 == "6789"


def test_a_refused_form_does_not_send_the_secret_back(admin_client):
    response = admin_client.post(ADD, form_data(base_url="http://169.254.169.254/"))
    html = response.content.decode()
    assert response.status_code == 200 and "metadata" in html
    assert SECRET not in html
    assert not ProviderKey.objects.exists()


def test_the_admin_refuses_a_metadata_base_url_with_private_base_urls_allowed(admin_client, settings):
    settings.ALLOW_PRIVATE_BASE_URLS = True
    response = admin_client.post(ADD, form_data(base_url="http://169.254.169.254/v1"))
    html = response.content.decode()
    assert response.status_code == 200 and "metadata" in html and "ALLOW_PRIVATE_BASE_URLS" not in html
    assert not ProviderKey.objects.exists()
    key = keys.key_add(provider="openai", name="ollama", secret=SECRET, base_url="http://10.1.2.3:11434/v1")
    response = admin_client.post(change_url(key), form_data(name="ollama", base_url="http://[fd00:ec2::254]/"))
    assert response.status_code == 200 and "metadata" in response.content.decode()
    key.refresh_from_db()
    assert key.base_url == "http://10.1.2.3:11434/v1"


def test_pointing_a_key_at_another_server_never_sends_its_stored_secret_there(admin_client, fake_provider, settings):
    # The secret is write-only, to superusers too. A base URL changed without it would send the
    # stored secret to the new address at the next call: the key's Test, or anyone's next chat.
    from tests.fakeprovider.server import FakeProvider

    settings.ALLOW_PRIVATE_BASE_URLS = True  # both servers listen on 127.0.0.1
    stored = "sk-stored-0123456789wxyz"
    key = keys.key_add(provider="openai", name="main", secret=stored, base_url=fake_provider.openai_base_url)
    elsewhere = FakeProvider().start()
    try:
        data = page_form(admin_client, change_url(key), "providerkey_form")
        data["base_url"] = elsewhere.openai_base_url
        response = admin_client.post(change_url(key), data)
        assert response.status_code == 200
        assert "Give the secret again" in response.content.decode() and stored not in response.content.decode()
        admin_client.post(CHANGELIST, {"action": "test_keys", "_selected_action": [key.pk]})
        assert elsewhere.requests == []
        key.refresh_from_db()
        assert key.base_url == fake_provider.openai_base_url

        # With the secret given again, the key moves: what the new server gets is what was typed.
        data["secret"] = "sk-typed-again-0123456789"
        assert admin_client.post(change_url(key), data).status_code == 302
        admin_client.post(CHANGELIST, {"action": "test_keys", "_selected_action": [key.pk]})
        assert {r.key for r in elsewhere.requests} == {"sk-typed-again-0123456789"}
    finally:
        elsewhere.stop()


def test_the_service_refuses_a_new_base_url_without_the_secret_to_any_operator(admin_user, make_staff):
    key = keys.key_add(provider="openai", name="main", secret=SECRET, base_url="http://127.0.0.1:11434/v1")
    staff = make_staff("billing.change_providerkey", "billing.set_providerkey_base_url")
    for actor in (admin_user, staff):
        with pytest.raises(ValidationError) as refused:
            keys.key_update(key_id=key.pk, actor=actor, base_url="http://127.0.0.1:8080/v1")
        assert "secret" in refused.value.message_dict
        key.refresh_from_db()
        assert key.base_url == "http://127.0.0.1:11434/v1"


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"secret": "   "}, "empty"),
        ({"secret": ""}, "required"),
        ({"base_url": "gopher://x/"}, "http://"),
        ({"base_url": "http://a:b@127.0.0.1/"}, "credentials"),
        ({"provider": "demo"}, "valid choice"),
    ],
)
def test_the_add_form_refuses_bad_input(admin_client, overrides, says):
    response = admin_client.post(ADD, form_data(**overrides))
    assert response.status_code == 200 and says in response.content.decode()
    assert not ProviderKey.objects.exists()


def test_the_add_form_refuses_a_duplicate_name(admin_client):
    keys.key_add(provider="openai", name="main", secret="sk-first-0123456789")
    response = admin_client.post(ADD, form_data(name="Main"))
    assert "already exists" in response.content.decode()
    assert ProviderKey.objects.count() == 1


def test_staff_without_permission_cannot_see_or_set_keys(client, make_user):
    staff = make_user("staff", is_staff=True)
    client.force_login(staff)
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, form_data()).status_code == 403
    key = keys.key_add(provider="openai", name="other", secret="sk-first-0123456789")
    assert client.post(change_url(key), form_data(name="other", base_url="http://127.0.0.1/")).status_code == 403
    assert ProviderKey.objects.get().base_url == ""


def test_a_plain_user_is_sent_to_the_admin_login(client, user):
    client.force_login(user)
    response = client.post(ADD, form_data())
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert not ProviderKey.objects.exists()


def test_staff_without_base_url_permission_cannot_set_one(client, make_user):
    staff = make_user("staff", is_staff=True)
    staff.user_permissions.add(
        *Permission.objects.filter(codename__in=["add_providerkey", "change_providerkey", "view_providerkey"])
    )
    client.force_login(staff)
    assert 'name="base_url"' not in client.get(ADD).content.decode()
    client.post(ADD, form_data(base_url="http://127.0.0.1:11434/v1"))
    key = ProviderKey.objects.get()
    assert key.base_url == ""
    client.post(change_url(key), form_data(secret="", base_url="http://127.0.0.1:11434/v1"))
    key.refresh_from_db()
    assert key.base_url == ""


def test_the_changelist_warns_about_invalid_and_cooling_keys(admin_client):
    bad = keys.key_add(provider="openai", name="revoked", secret="sk-first-0123456789")
    hot = keys.key_add(provider="openai", name="busy", secret="sk-second-0123456789")
    keys.key_report_failure(key_id=bad.pk, kind="auth")
    keys.key_report_failure(key_id=hot.pk, kind="rate_limited", retry_after=60)
    html = admin_client.get(CHANGELIST).content.decode()
    assert "Provider key revoked was refused by openai" in html
    assert "Provider key busy is out of rotation until" in html


def test_the_test_action_makes_a_one_token_call(admin_client, adapter):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    keys.key_report_failure(key_id=key.pk, kind="auth")
    response = admin_client.post(CHANGELIST, {"action": "test_keys", "_selected_action": [key.pk]}, follow=True)
    assert "Test of main: it works." in response.content.decode()
    assert adapter.calls == [{"model": "gpt-4o-mini", "max_tokens": 1, "key": "main"}]
    # The call is in the ledger like any other: no user, this key, the provider's token counts.
    [row] = adapter.ledger
    assert (row["user"], row["key_id"], row["model"], row["outcome"]) == (None, key.pk, "gpt-4o-mini", "ok")
    assert (row["input_tokens"], row["output_tokens"], row["estimated"]) == (1, 1, False)
    key.refresh_from_db()
    assert key.health == "healthy"  # an administrator's successful test revives an invalid key
    assert AuditEvent.objects.filter(action="provider_key.test", data__ok=True).exists()


def test_the_test_action_reports_a_refused_key(admin_client, adapter):
    adapter.error = ProviderError(kind=ErrorKind.AUTH, message="Incorrect API key provided", status=401)
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    response = admin_client.post(CHANGELIST, {"action": "test_keys", "_selected_action": [key.pk]}, follow=True)
    assert "Test of main failed (key refused, HTTP 401/403)" in response.content.decode()
    assert [(r["outcome"], r["error_kind"]) for r in adapter.ledger] == [("error", "auth")]
    key.refresh_from_db()
    assert key.health == "invalid"


def test_testing_a_key_the_provider_refuses_says_so_in_one_message(admin_client, fake_provider, settings):
    # The real adapter against the fake provider, which answers 401 to this key. The page used
    # to say it twice: the test's result, then the list's standing warning about the same key.
    from tests.fakeprovider.server import Script

    settings.ALLOW_PRIVATE_BASE_URLS = True  # the fake listens on 127.0.0.1
    refused = "sk-refused-0123456789wxyz"
    fake_provider.script(refused, Script(mode="error", status=401))
    key = keys.key_add(provider="openai", name="main", secret=refused, base_url=fake_provider.openai_base_url)

    response = admin_client.post(CHANGELIST, {"action": "test_keys", "_selected_action": [key.pk]}, follow=True)

    said = [str(m) for m in response.context["messages"]]
    assert said == [
        "Test of main failed (key refused, HTTP 401/403). OpenAI refused the key: HTTP 401 (invalid_request_error). "
        "Replace its secret or disable it."
    ]
    key.refresh_from_db()
    assert key.health == "invalid"
    # The list still warns about it when opened again: the standing reminder is kept.
    assert "Provider key main was refused by openai" in admin_client.get(CHANGELIST).content.decode()


def test_a_rate_limited_test_keeps_the_key_out_as_long_as_the_provider_asked(admin_client, adapter, settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.KEY_RATE_LIMIT_COOLDOWN = 60
    adapter.error = ProviderError(kind=ErrorKind.RATE_LIMITED, message="429", status=429, retry_after=600)
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    before = timezone.now()
    admin_client.post(CHANGELIST, {"action": "test_keys", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.health == "cooling_down"
    # Retry-After said 600 s, not the 60 s default.
    assert key.cooldown_until >= before + timedelta(seconds=600)


def test_testing_a_key_asks_only_for_a_model_that_key_serves(adapter, monkeypatch):
    from decimal import Decimal
    from types import SimpleNamespace

    def priced(model, cost):
        return SimpleNamespace(provider="openai", model=model, input_per_million=Decimal(cost), output_per_million=Decimal(0))

    # A free local model served through an OpenAI-compatible key is priced under "openai" too.
    monkeypatch.setattr("billing.prices.prices_available", lambda: [priced("gpt-4o-mini", "0.15"), priced("llama3.2", "0")])
    official = keys.key_add(provider="openai", name="official", secret=SECRET)
    adapter.served = ["gpt-4o-mini", "gpt-4o"]  # api.openai.com has no llama3.2
    assert keys.key_test(key_id=official.pk).ok
    local = keys.key_add(provider="openai", name="ollama", secret="ollama", base_url="http://127.0.0.1:11434/v1")
    adapter.served = ["llama3.2:latest", "llama3.2"]
    assert keys.key_test(key_id=local.pk).ok
    assert [(c["key"], c["model"]) for c in adapter.calls] == [("official", "gpt-4o-mini"), ("ollama", "llama3.2")]


def test_a_key_serving_no_priced_model_passes_on_its_model_list_alone(adapter):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    adapter.served = ["some-other-model"]
    assert keys.key_test(key_id=key.pk).ok
    assert adapter.pings == ["main"] and adapter.calls == [] and adapter.ledger == []


def test_a_key_that_may_not_list_models_is_tested_with_one_token_instead(adapter):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)

    async def refuse_listing(*, key):
        # An OpenAI restricted key without the Models permission: 403 on /v1/models only.
        raise ProviderError(kind=ErrorKind.AUTH, message="403", status=403)

    adapter.ping = refuse_listing
    assert keys.key_test(key_id=key.pk).ok
    assert [c["model"] for c in adapter.calls] == ["gpt-4o-mini"]
    key.refresh_from_db()
    assert key.health == "healthy"


def test_drain_disable_and_enable_actions(admin_client):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    for action, state in [("drain_keys", "draining"), ("disable_keys", "disabled"), ("enable_keys", "enabled")]:
        admin_client.post(CHANGELIST, {"action": action, "_selected_action": [key.pk]})
        key.refresh_from_db()
        assert key.state == state
    assert AuditEvent.objects.filter(action="provider_key.state").count() == 3


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_a_state_action_on_a_filtered_list_counts_the_keys_it_changed(admin_client):
    # The list filtered to enabled keys: once disabled they leave that filter, and the message
    # must still count them.
    for name in ("main", "spare"):
        keys.key_add(provider="openai", name=name, secret=SECRET)
    selected = list(ProviderKey.objects.values_list("pk", flat=True))
    response = admin_client.post(
        f"{CHANGELIST}?state__exact=enabled", {"action": "disable_keys", "_selected_action": selected}, follow=True
    )
    assert set(ProviderKey.objects.values_list("state", flat=True)) == {"disabled"}
    assert "2 key(s) are now disabled." in _messages(response)


def test_a_state_action_names_the_state_in_the_operators_language(client, django_user_model):
    operator = django_user_model.objects.create_superuser("root-ko", "ko@example.test", language="ko")
    client.force_login(operator)
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    response = client.post(CHANGELIST, {"action": "disable_keys", "_selected_action": [key.pk]}, follow=True)
    assert _messages(response) == ["키 1개의 상태가 이제 '사용 안 함'입니다."]


@pytest.mark.parametrize(
    "colleague, field, expected",
    [
        (lambda key: keys.key_disable(key_id=key.pk), "state", "disabled"),
        (lambda key: keys.key_update(key_id=key.pk, name="main-old"), "name", "main-old"),
        (lambda key: keys.key_update(key_id=key.pk, base_url="http://127.0.0.1:8080/v1"), "base_url", "http://127.0.0.1:8080/v1"),
    ],
)
def test_saving_a_key_page_opened_before_a_colleagues_change_keeps_that_change(admin_client, colleague, field, expected):
    # A leaked key disabled by one operator must not come back because another, whose page was
    # opened before, saved a new priority: only what this operator changed on the page is applied.
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    data = page_form(admin_client, change_url(key), "providerkey_form")
    colleague(key)
    data["priority"] = "5"
    response = admin_client.post(change_url(key), data)
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.priority == 5 and getattr(key, field) == expected


def test_a_state_chosen_on_the_key_page_is_still_applied(admin_client):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    data = page_form(admin_client, change_url(key), "providerkey_form")
    data["state"] = "draining"
    assert admin_client.post(change_url(key), data).status_code == 302
    key.refresh_from_db()
    assert key.state == "draining"


def test_delete_through_the_admin_is_audited(admin_client):
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    admin_client.post(reverse("admin:billing_providerkey_delete", args=[key.pk]), {"post": "yes"})
    assert not ProviderKey.objects.exists()
    assert AuditEvent.objects.filter(action="provider_key.delete", target_id=str(key.pk)).exists()


def test_the_periodic_health_check_tests_enabled_keys_and_skips_invalid_ones(adapter):
    from billing.keys_tasks import keys_health_check

    ok = keys.key_add(provider="openai", name="ok", secret="sk-first-0123456789")
    bad = keys.key_add(provider="openai", name="bad", secret="sk-second-0123456789")
    keys.key_disable(key_id=keys.key_add(provider="openai", name="off", secret="sk-third-0123456789").pk)
    keys.key_report_failure(key_id=bad.pk, kind="auth")
    # Not refused as a "result.get() within a task": Celery's flag for that is one for the
    # process, and eager tasks run at once on other threads (a turn's titles) can leave it set.
    counts = keys_health_check.delay().get(disable_sync_subtasks=False)
    assert counts["ok"] == 1 and counts["failed"] == 0
    assert [c["key"] for c in adapter.calls] == ["ok"]
    assert ProviderKey.objects.get(pk=ok.pk).health == "healthy"


def test_the_health_check_refuses_a_base_url_that_now_resolves_somewhere_forbidden(adapter, monkeypatch):
    import socket

    key = keys.key_add(provider="openai", name="ok", secret="sk-first-0123456789", base_url="http://localhost:8080/v1")
    ProviderKey.objects.filter(pk=key.pk).update(base_url="http://moved.example/v1")
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
    )
    result = keys.key_test(key_id=key.pk)
    assert not result.ok and result.error_kind == "base_url" and adapter.calls == []


def test_a_crash_while_saving_keeps_the_secret_out_of_the_error_report(admin_user, monkeypatch, settings):
    import sys

    from django.test import Client
    from django.views.debug import ExceptionReporter

    def crash(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(keys, "key_add", crash)
    client = Client(raise_request_exception=False)
    client.force_login(admin_user)
    response = client.post(ADD, form_data())
    assert response.status_code == 500
    request = response.wsgi_request
    assert request.sensitive_post_parameters == ("secret",)
    try:
        raise RuntimeError("the database went away")
    except RuntimeError:
        report = ExceptionReporter(request, *sys.exc_info()).get_traceback_text()
    assert "main" in report and SECRET not in report  # the form was there; its secret was not


def test_a_message_that_starts_with_a_keys_name_keeps_the_name_as_written(admin_client, admin_user, adapter):
    # Korean puts the name first ("%(name)s 테스트: 정상 작동합니다."), and Django's admin
    # capitalised every message's first letter: key "main" was told as "Main".
    admin_user.language = "ko"
    admin_user.save(update_fields=["language"])
    key = keys.key_add(provider="openai", name="main", secret=SECRET)
    response = admin_client.post(CHANGELIST, {"action": "test_keys", "_selected_action": [key.pk]}, follow=True)
    html = response.content.decode()
    assert "main 테스트: 정상 작동합니다." in html
    assert "Main 테스트" not in html


def test_a_keys_last_error_is_told_in_words_in_the_operators_language(admin_client, admin_user):
    # The list showed the state machine's codes ("rate_limited", "model_not_found") as they are,
    # in English on a Korean administrator's page too.
    key = keys.key_add(provider="openai", name="busy", secret=SECRET)
    keys.key_report_failure(key_id=key.pk, kind="rate_limited", retry_after=60)
    html = admin_client.get(CHANGELIST).content.decode()
    assert "rate limited, HTTP 429" in html
    admin_user.language = "ko"
    admin_user.save(update_fields=["language"])
    html = admin_client.get(CHANGELIST).content.decode()
    assert "요청 한도 초과, HTTP 429" in html
    assert ">rate_limited<" not in html and "(rate_limited)" not in html


@pytest.mark.parametrize("kind", ["auth", "rate_limited", "unavailable", "timeout", "bad_request", "model_not_found", "context_too_long"])
def test_every_error_kind_has_words_in_english_and_korean(kind):
    from django.utils import translation

    english = keys.error_kind_label(kind)
    with translation.override("ko"):
        korean = keys.error_kind_label(kind)
    assert english != kind and korean != english


def test_an_error_kind_without_words_is_shown_as_it_is():
    assert keys.error_kind_label("something_new") == "something_new"
    assert keys.error_kind_label("") == ""
