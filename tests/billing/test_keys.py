"""The key vault and the key-state machine the turn drives (billing.keys)."""

import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection
from django.utils import timezone

from accounts.models import AuditEvent
from billing import keys
from billing.crypto import secret_decrypt
from billing.models import ProviderKey
from tests.billing.keys_support import no_env_keys  # noqa: F401 - autouse

pytestmark = pytest.mark.django_db

Health, State = ProviderKey.Health, ProviderKey.State


class Clock:
    """The injectable clock: tests move time instead of sleeping."""

    def __init__(self):
        self.now = timezone.now()

    def __call__(self):
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(keys, "clock", c)
    return c


def add(name, *, priority=100, provider="openai", secret=None, **extra):
    return keys.key_add(
        provider=provider, name=name, secret=secret or f"sk-{name}-0123456789abcdef", priority=priority, **extra
    )


def reload(key):
    return ProviderKey.objects.get(pk=key.pk)


# --- choosing ---------------------------------------------------------------------------------


def test_choose_returns_the_highest_priority_key_with_its_secret():
    add("low", priority=1)
    add("high", priority=10)
    lease = keys.key_choose(provider="openai")
    assert lease.name == "high"
    assert lease.secret == "sk-high-0123456789abcdef"
    assert "sk-high" not in repr(lease)


def test_choose_returns_none_without_keys_and_ignores_other_providers():
    add("claude", provider="anthropic")
    assert keys.key_choose(provider="openai") is None
    assert keys.key_choose(provider="anthropic").name == "claude"


def test_choose_honours_exclude():
    a = add("a", priority=10)
    add("b", priority=5)
    assert keys.key_choose(provider="openai", exclude=[a.id]).name == "b"


def test_equal_priorities_spread_the_load():
    add("a")
    add("b")
    add("c")
    add("backup", priority=1)
    chosen = [keys.key_choose(provider="openai").name for _ in range(30)]
    assert {chosen.count(n) for n in ("a", "b", "c")} == {10}
    assert "backup" not in chosen


def test_draining_and_disabled_keys_are_not_chosen():
    old = add("old", priority=10)
    add("new", priority=1)
    keys.key_set_draining(key_id=old.pk)
    assert {keys.key_choose(provider="openai").name for _ in range(5)} == {"new"}
    keys.key_disable(name="old")
    assert keys.key_choose(provider="openai").name == "new"
    keys.key_disable(name="new")
    assert keys.key_choose(provider="openai") is None


def test_rotation_drain_then_disable_always_has_a_key():
    old = add("old")
    seen = [keys.key_choose(provider="openai").name]
    add("new")  # 1. add the new key
    seen += [keys.key_choose(provider="openai").name for _ in range(4)]
    keys.key_set_draining(key_id=old.pk)  # 2. no new calls to the old one
    seen += [keys.key_choose(provider="openai").name for _ in range(4)]
    keys.key_disable(key_id=old.pk)  # 3. retire it
    seen += [keys.key_choose(provider="openai").name for _ in range(4)]
    assert None not in seen and seen[-8:] == ["new"] * 8


def test_a_lease_taken_before_draining_keeps_working():
    key = add("old")
    lease = keys.key_choose(provider="openai")
    keys.key_set_draining(key_id=key.pk)
    # The reply in flight holds its lease; reporting on it still works and changes nothing bad.
    keys.key_report_success(key_id=lease.id)
    assert reload(key).state == State.DRAINING and lease.secret.startswith("sk-old")


def test_draining_keys_are_disabled_after_the_longest_reply(clock, settings):
    settings.LLM_TOTAL_TIMEOUT = 600
    key = add("old")
    keys.key_set_draining(key_id=key.pk)
    clock.advance(600)
    assert keys.keys_finish_draining() == 0
    clock.advance(61)
    assert keys.keys_finish_draining() == 1
    assert reload(key).state == State.DISABLED


# --- the state machine ------------------------------------------------------------------------


def test_a_rate_limited_key_is_skipped_until_its_cooldown_ends(clock):
    a = add("a", priority=10)
    add("b", priority=5)
    outcome = keys.key_report_failure(key_id=a.pk, kind="rate_limited", retry_after=30)
    assert outcome.retry and outcome.backoff == 0
    row = reload(a)
    assert row.health == Health.COOLING_DOWN and row.cooldown_until == clock.now + timedelta(seconds=30)
    assert keys.key_choose(provider="openai").name == "b"
    clock.advance(29)
    assert keys.key_choose(provider="openai").name == "b"
    clock.advance(2)
    assert keys.key_choose(provider="openai").name == "a"
    keys.key_report_success(key_id=a.pk)
    row = reload(a)
    assert row.health == Health.HEALTHY and row.cooldown_until is None


def test_a_key_back_from_a_rate_limit_cooldown_shares_the_load_again(clock):
    a = add("a")
    add("b")
    keys.key_report_failure(key_id=a.pk, kind="rate_limited", retry_after=10)
    assert {keys.key_choose(provider="openai").name for _ in range(4)} == {"b"}
    clock.advance(11)
    chosen = [keys.key_choose(provider="openai").name for _ in range(20)]
    assert chosen.count("a") == chosen.count("b") == 10


def test_a_half_open_key_gets_its_share_of_trials_beside_an_equal_healthy_one(clock, settings):
    settings.KEY_FAILURE_THRESHOLD = 1
    settings.KEY_CIRCUIT_COOLDOWN = 60
    a = add("a")
    add("b")
    keys.key_report_failure(key_id=a.pk, kind="unavailable")
    clock.advance(61)
    chosen = [keys.key_choose(provider="openai").name for _ in range(4)]
    assert chosen.count("a") == 2
    keys.key_report_success(key_id=a.pk)
    assert reload(a).health == Health.HEALTHY


def test_rate_limit_without_retry_after_uses_the_setting(clock, settings):
    settings.KEY_RATE_LIMIT_COOLDOWN = 45
    a = add("a")
    keys.key_report_failure(key_id=a.pk, kind="rate_limited")
    assert reload(a).cooldown_until == clock.now + timedelta(seconds=45)


def test_three_unavailable_failures_open_the_circuit_until_the_cooldown(clock, settings):
    settings.KEY_FAILURE_THRESHOLD = 3
    settings.KEY_CIRCUIT_COOLDOWN = 60
    a = add("a", priority=10)
    add("b", priority=5)
    for n in (1, 2):
        outcome = keys.key_report_failure(key_id=a.pk, kind="unavailable", attempt=n)
        assert outcome.retry and 0 < outcome.backoff <= 1
        assert reload(a).health == Health.HEALTHY
        assert keys.key_choose(provider="openai").name == "a"  # still in: below the threshold
    keys.key_report_failure(key_id=a.pk, kind="timeout")
    row = reload(a)
    assert row.health == Health.FAILING and row.consecutive_failures == 3 and row.last_error_kind == "timeout"
    assert keys.key_choose(provider="openai").name == "b"
    assert AuditEvent.objects.filter(action="provider_key.circuit_open", target_id=str(a.pk)).count() == 1
    clock.advance(61)
    assert keys.key_choose(provider="openai").name == "a"  # half-open: tried again
    keys.key_report_success(key_id=a.pk)
    row = reload(a)
    assert row.health == Health.HEALTHY and row.consecutive_failures == 0 and row.cooldown_until is None


def test_a_failure_after_the_cooldown_reopens_the_circuit_for_longer(clock, settings):
    settings.KEY_FAILURE_THRESHOLD = 3
    settings.KEY_CIRCUIT_COOLDOWN = 60
    a = add("a")
    for _ in range(3):
        keys.key_report_failure(key_id=a.pk, kind="unavailable")
    clock.advance(61)
    keys.key_report_failure(key_id=a.pk, kind="unavailable")
    row = reload(a)
    assert row.health == Health.FAILING and row.cooldown_until == clock.now + timedelta(seconds=120)
    assert keys.key_choose(provider="openai") is None


def test_an_auth_failure_marks_the_key_invalid_for_good(clock):
    a = add("a", priority=10)
    add("b", priority=5)
    outcome = keys.key_report_failure(key_id=a.pk, kind="auth")
    assert outcome.retry
    assert reload(a).health == Health.INVALID
    clock.advance(10 * 24 * 3600)
    assert {keys.key_choose(provider="openai").name for _ in range(5)} == {"b"}
    keys.key_report_success(key_id=a.pk)  # a late success of an older call does not revive it
    assert reload(a).health == Health.INVALID
    assert keys.keys_needing_attention() == [reload(a)]
    event = AuditEvent.objects.get(action="provider_key.invalid")
    assert event.target_id == str(a.pk) and event.actor_id is None
    keys.key_report_failure(key_id=a.pk, kind="auth")  # told once, not on every report
    assert AuditEvent.objects.filter(action="provider_key.invalid").count() == 1


def test_a_new_secret_makes_an_invalid_key_healthy():
    a = add("a")
    keys.key_report_failure(key_id=a.pk, kind="auth")
    keys.key_update(key_id=a.pk, secret="sk-replacement-0123456789")
    assert reload(a).health == Health.HEALTHY
    assert keys.key_choose(provider="openai").secret == "sk-replacement-0123456789"


@pytest.mark.parametrize("kind", ["bad_request", "context_too_long"])
def test_a_bad_request_is_not_retried_and_leaves_the_key_alone(kind):
    a = add("a")
    outcome = keys.key_report_failure(key_id=a.pk, kind=kind)
    assert outcome.retry is False
    row = reload(a)
    assert row.health == Health.HEALTHY and row.consecutive_failures == 0


def test_an_unknown_failure_kind_is_refused():
    a = add("a")
    with pytest.raises(ValueError):
        keys.key_report_failure(key_id=a.pk, kind="gremlins")


def test_when_every_key_failed_choose_says_none():
    a, b = add("a"), add("b")
    keys.key_report_failure(key_id=a.pk, kind="auth")
    keys.key_report_failure(key_id=b.pk, kind="rate_limited", retry_after=5)
    assert keys.key_choose(provider="openai") is None


def test_a_failure_report_for_a_deleted_key_is_harmless():
    assert keys.key_report_failure(key_id=uuid.uuid4(), kind="unavailable").retry
    keys.key_report_success(key_id=uuid.uuid4())


def test_providers_with_usable_keys():
    assert keys.providers_with_usable_keys() == {"demo"}
    a = add("a")
    add("c", provider="anthropic")
    assert keys.providers_with_usable_keys() == {"demo", "openai", "anthropic"}
    keys.key_report_failure(key_id=a.pk, kind="auth")
    assert keys.providers_with_usable_keys() == {"demo", "anthropic"}


def test_keys_needing_attention_lists_invalid_and_cooling_keys(clock):
    a, b, _ = add("a"), add("b"), add("c")
    keys.key_report_failure(key_id=a.pk, kind="auth")
    keys.key_report_failure(key_id=b.pk, kind="rate_limited", retry_after=10)
    assert [k.name for k in keys.keys_needing_attention()] == ["a", "b"]
    clock.advance(11)
    assert [k.name for k in keys.keys_needing_attention()] == ["a"]


# --- storage ----------------------------------------------------------------------------------


def test_the_database_column_holds_no_plaintext():
    secret = "sk-plaintext-canary-0123456789"
    key = add("a", secret=secret)
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM billing_providerkey WHERE name = %s", ["a"])
        row = cursor.fetchone()
    assert not any(secret in str(value) or secret[-8:] in str(value) for value in row)
    assert secret_decrypt(reload(key).secret_encrypted) == secret
    assert reload(key).secret_last4 == "6789"


def test_a_short_secret_shows_no_last_four():
    assert add("a", secret="ollama").secret_last4 == ""


def test_rotate_encryption_keys_then_dropping_the_old_key_still_decrypts(settings):
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [old]
    add("a", secret="sk-one-0123456789abc")
    add("b", secret="sk-two-0123456789abc", provider="anthropic")
    settings.FIELD_ENCRYPTION_KEYS = [new, old]
    assert keys.key_rotate_encryption() == 2
    settings.FIELD_ENCRYPTION_KEYS = [new]
    assert keys.key_choose(provider="openai").secret == "sk-one-0123456789abc"
    assert keys.key_choose(provider="anthropic").secret == "sk-two-0123456789abc"
    assert AuditEvent.objects.filter(action="provider_key.reencrypt").count() == 1


def test_moving_off_the_derived_default_key_rotates_secrets_onto_the_configured_key(settings, caplog):
    from cryptography.fernet import Fernet

    settings.FIELD_ENCRYPTION_KEYS = []  # the embedded default: a key derived from SECRET_KEY
    add("a", secret="sk-derived-0123456789abc")
    new = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new]  # README: set the variable, then rotate
    assert keys.key_choose(provider="openai").secret == "sk-derived-0123456789abc"
    assert keys.key_rotate_encryption() == 1
    token = ProviderKey.objects.get(name="a").secret_encrypted
    assert Fernet(new.encode()).decrypt(token.encode()).decode() == "sk-derived-0123456789abc"
    assert "sk-derived" not in caplog.text


def test_rotate_encryption_keys_is_all_or_nothing(settings):
    from cryptography.fernet import Fernet

    from billing.crypto import SecretUndecryptable

    k1, k2, k3 = (Fernet.generate_key().decode() for _ in range(3))
    settings.FIELD_ENCRYPTION_KEYS = [k1]
    a = add("a")
    settings.FIELD_ENCRYPTION_KEYS = [k2]
    add("b")
    before = {k.pk: k.secret_encrypted for k in ProviderKey.objects.all()}
    settings.FIELD_ENCRYPTION_KEYS = [k3, k2]  # k1 retired too early: "a" cannot be opened
    with pytest.raises(SecretUndecryptable, match="'a'"):
        keys.key_rotate_encryption()
    assert {k.pk: k.secret_encrypted for k in ProviderKey.objects.all()} == before
    assert a.pk in before


def test_every_key_operation_is_audited_without_the_secret():
    secret = "sk-audited-canary-0123456789"
    key = add("a", secret=secret)
    keys.key_update(key_id=key.pk, priority=5, secret="sk-audited-canary-9876543210")
    keys.key_set_draining(key_id=key.pk)
    keys.key_disable(key_id=key.pk)
    keys.key_delete(key_id=key.pk)
    actions = list(AuditEvent.objects.order_by("created_at").values_list("action", flat=True))
    assert actions == [
        "provider_key.add",
        "provider_key.update",
        "provider_key.state",
        "provider_key.state",
        "provider_key.delete",
    ]
    update = AuditEvent.objects.get(action="provider_key.update")
    assert update.data["fields"] == ["priority", "secret"]
    for event in AuditEvent.objects.all():
        assert "sk-audited-canary" not in str(event.data) and "0123456789" not in str(event.data)


# --- bad input: each refused with a clear error, nothing written --------------------------------


@pytest.mark.parametrize(
    ("base_url", "says"),
    [
        ("ftp://models.example/v1", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("http://user:pass@127.0.0.1:11434/v1", "credentials"),
        ("http://token@127.0.0.1/v1", "credentials"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://169.254.10.20:8080/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://2852039166/", "metadata"),  # 169.254.169.254 spelled as one number
        ("http://0xa9fea9fe/", "metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),  # NAT64
        ("http://[2002:a9fe:a9fe::1]/", "metadata"),  # 6to4
        ("http://[fe80::1%25eth0]/", "link-local"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://192.168.1.20:11434/", "private"),
        ("http://100.64.0.1/", "private"),
        ("http://10.1.2.3:11434/v1", "private"),
        ("http://0.0.0.0:8000/", "not an address"),
        ("http://does-not-exist.invalid/v1", "cannot be resolved"),
        ("http:///v1", "no host"),
        ("http://127.0.0.1/v1?x=1", "query"),
        ("http://127.0.0.1/ v1", "spaces"),
    ],
)
def test_bad_base_urls_are_refused_and_nothing_is_saved(base_url, says):
    with pytest.raises(ValidationError) as excinfo:
        add("a", base_url=base_url)
    assert says in " ".join(excinfo.value.message_dict["base_url"])
    assert not ProviderKey.objects.exists()


def test_a_name_that_resolves_to_a_metadata_address_is_refused(monkeypatch):
    import socket

    def resolve(host, *args, **kwargs):
        assert host == "sneaky.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]

    # The one stand-in: this machine has no DNS for outside names.
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ValidationError, match="metadata"):
        add("a", base_url="http://sneaky.example/v1")


@pytest.mark.parametrize(
    "base_url", ["http://127.0.0.1:11434/v1", "http://localhost:8080/v1", "http://[::1]:8000", "https://8.8.8.8/v1/"]
)
def test_loopback_and_public_base_urls_are_accepted(base_url):
    assert add("a", base_url=base_url).base_url == base_url.rstrip("/")


@pytest.mark.parametrize(
    "base_url", ["http://10.1.2.3:11434/v1", "http://169.254.10.20/", "http://[fd12:3456::1]:11434/v1", "http://localhost:11434"]
)
def test_allow_private_base_urls_lets_private_and_link_local_through(settings, base_url):
    settings.ALLOW_PRIVATE_BASE_URLS = True
    assert add("a", base_url=base_url).base_url == base_url.rstrip("/")


METADATA_BASE_URLS = [
    "http://169.254.169.254/v1",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://192.0.0.192/",
    "http://169.254.170.2/v2/credentials",
    "http://[::ffff:169.254.169.254]/",
    "http://2852039166/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/",
    "http://instance-data.ec2.internal./",
]


@pytest.fixture
def private_names_resolve(monkeypatch):
    """Every name resolves to a private address, as the metadata names do inside a cloud (or
    in a cluster whose DNS answers them): only the name itself can refuse them then."""
    import socket

    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host.replace(".", "").isdigit() or ":" in host:
            return real(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.8.7", 80))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


@pytest.mark.parametrize("allow_private", [False, True])
@pytest.mark.parametrize("base_url", METADATA_BASE_URLS)
def test_cloud_metadata_base_urls_are_refused_whatever_allow_private_base_urls_says(
    settings, private_names_resolve, base_url, allow_private
):
    """README: "cloud metadata addresses are always refused"; the refusal does not send the
    administrator to a setting that would not (and must not) lift it."""
    settings.ALLOW_PRIVATE_BASE_URLS = allow_private
    with pytest.raises(ValidationError) as excinfo:
        add("meta", base_url=base_url)
    message = " ".join(excinfo.value.message_dict["base_url"])
    assert "metadata" in message and "always refused" in message
    assert "ALLOW_PRIVATE_BASE_URLS" not in message
    assert not ProviderKey.objects.exists()


def test_a_name_resolving_to_a_metadata_address_is_refused_with_private_base_urls_allowed(settings, monkeypatch):
    import socket

    settings.ALLOW_PRIVATE_BASE_URLS = True
    monkeypatch.setattr(
        socket, "getaddrinfo", lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 80))]
    )
    with pytest.raises(ValidationError, match="metadata"):
        add("a", base_url="http://sneaky.example/v1")
    assert not ProviderKey.objects.exists()


def test_a_key_cannot_be_repointed_at_a_metadata_address_with_private_base_urls_allowed(settings):
    settings.ALLOW_PRIVATE_BASE_URLS = True
    key = add("ollama", base_url="http://10.1.2.3:11434/v1")
    with pytest.raises(ValidationError) as excinfo:
        keys.key_update(key_id=key.pk, base_url="http://169.254.169.254/v1", secret="sk-rotated-0123456789")
    assert "metadata" in " ".join(excinfo.value.message_dict["base_url"])
    key = reload(key)
    assert key.base_url == "http://10.1.2.3:11434/v1" and secret_decrypt(key.secret_encrypted) == "sk-ollama-0123456789abcdef"


@pytest.mark.parametrize("secret", ["", "   ", "\n\t", None, "two words", "sk-ünïcode-0123456789"])
def test_empty_whitespace_or_odd_secrets_are_refused(secret):
    with pytest.raises(ValidationError) as excinfo:
        keys.key_add(provider="openai", name="a", secret=secret)
    assert "secret" in excinfo.value.message_dict
    assert not ProviderKey.objects.exists()


@pytest.mark.parametrize("name", ["dup", "DUP", " dup "])
def test_a_duplicate_name_is_refused(name):
    add("dup")
    with pytest.raises(ValidationError) as excinfo:
        add(name)
    assert "already exists" in excinfo.value.message_dict["name"][0]
    assert ProviderKey.objects.count() == 1


@pytest.mark.parametrize("provider", ["demo", "google", "", None, "OpenAI"])
def test_an_unknown_provider_is_refused(provider):
    with pytest.raises(ValidationError) as excinfo:
        keys.key_add(provider=provider, name="a", secret="sk-abc-0123456789abcdef")
    assert "provider" in excinfo.value.message_dict
    assert not ProviderKey.objects.exists()


@pytest.mark.parametrize("priority", ["10", 1.5, True, 10**9])
def test_a_bad_priority_is_refused(priority):
    with pytest.raises(ValidationError):
        add("a", priority=priority)
    assert not ProviderKey.objects.exists()


def test_a_plain_user_cannot_add_or_change_a_key(user):
    with pytest.raises(PermissionDenied):
        add("a", actor=user)
    key = add("b")
    with pytest.raises(PermissionDenied):
        keys.key_update(key_id=key.pk, actor=user, base_url="http://127.0.0.1:1/v1")
    with pytest.raises(PermissionDenied):
        keys.key_disable(key_id=key.pk, actor=user)
    assert ProviderKey.objects.count() == 1 and reload(key).base_url == "" and reload(key).state == State.ENABLED


def test_staff_without_permission_cannot_add_a_key(make_user):
    staff = make_user("staff", is_staff=True)
    with pytest.raises(PermissionDenied):
        add("a", actor=staff)
    assert not ProviderKey.objects.exists()


def test_staff_with_key_rights_but_not_base_url_rights_cannot_set_a_base_url(make_user):
    from django.contrib.auth.models import Permission

    staff = make_user("staff", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["add_providerkey", "change_providerkey"]))
    staff = type(staff).objects.get(pk=staff.pk)
    with pytest.raises(PermissionDenied):
        add("a", actor=staff, base_url="http://127.0.0.1:11434/v1")
    assert not ProviderKey.objects.exists()
    key = add("b", actor=staff)
    with pytest.raises(PermissionDenied):
        keys.key_update(key_id=key.pk, actor=staff, base_url="http://127.0.0.1:11434/v1")
    assert reload(key).base_url == ""
    staff.user_permissions.add(Permission.objects.get(codename="set_providerkey_base_url"))
    staff = type(staff).objects.get(pk=staff.pk)
    # Holding the permission, they may (with the secret given again: a key's secret goes only
    # where it was given for).
    moved = keys.key_update(key_id=key.pk, actor=staff, base_url="http://127.0.0.1:11434/v1", secret="sk-again-0123456789")
    assert moved.base_url == "http://127.0.0.1:11434/v1"


# --- keys from the environment ----------------------------------------------------------------


def test_env_keys_are_imported_once(settings):
    settings.OPENAI_API_KEY = "sk-from-env-0123456789"
    settings.OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"
    assert keys.keys_import_from_env() == {"openai": "added"}
    assert keys.keys_import_from_env() == {"openai": "unchanged"}
    key = ProviderKey.objects.get()
    assert (key.name, key.origin, key.base_url) == ("env-openai", "env", "http://127.0.0.1:11434/v1")


def test_env_keys_are_imported_lazily_on_first_choice(settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-from-env-0123456789"
    lease = keys.key_choose(provider="anthropic")
    assert lease.name == "env-anthropic" and lease.secret == "sk-ant-from-env-0123456789"
    keys.key_choose(provider="anthropic")
    assert ProviderKey.objects.count() == 1


def test_a_changed_env_secret_rotates(settings):
    settings.OPENAI_API_KEY = "sk-first-0123456789"
    keys.keys_import_from_env()
    settings.OPENAI_API_KEY = "sk-second-0123456789"
    assert keys.keys_import_from_env() == {"openai": "rotated"}
    old, new = ProviderKey.objects.get(name="env-openai"), ProviderKey.objects.get(name="env-openai-2")
    assert old.state == State.DRAINING and new.state == State.ENABLED
    assert keys.key_choose(provider="openai").secret == "sk-second-0123456789"
    assert keys.keys_import_from_env() == {"openai": "unchanged"}


def test_reverting_the_env_secret_puts_the_previous_secret_back_in_use(settings):
    """Rolling OPENAI_API_KEY back (the new secret was wrong, or leaked) must make the site use
    the variable's secret again, not keep the one the variable no longer names."""
    settings.OPENAI_API_KEY = "sk-first-0123456789"
    keys.keys_import_from_env()
    settings.OPENAI_API_KEY = "sk-second-0123456789"
    keys.keys_import_from_env()
    keys.keys_finish_draining(now=timezone.now() + timedelta(days=1))  # the first is disabled by now

    settings.OPENAI_API_KEY = "sk-first-0123456789"
    assert keys.keys_import_from_env() == {"openai": "rotated"}
    assert keys.key_choose(provider="openai").secret == "sk-first-0123456789"
    assert ProviderKey.objects.get(name="env-openai-2").state == State.DRAINING
    assert keys.keys_import_from_env() == {"openai": "unchanged"}


def test_an_env_key_an_admin_disabled_is_not_brought_back(settings):
    settings.OPENAI_API_KEY = "sk-first-0123456789"
    keys.keys_import_from_env()
    keys.key_disable(name="env-openai")
    assert keys.keys_import_from_env() == {"openai": "unchanged"}
    assert ProviderKey.objects.get().state == State.DISABLED


def test_an_env_base_url_on_a_metadata_address_is_refused_with_private_base_urls_allowed(settings):
    settings.ALLOW_PRIVATE_BASE_URLS = True
    settings.OPENAI_API_KEY = "sk-first-0123456789"
    settings.OPENAI_BASE_URL = "http://169.254.169.254/v1"
    result = keys.keys_import_from_env()
    assert result["openai"].startswith("refused") and "metadata" in result["openai"]
    assert "ALLOW_PRIVATE_BASE_URLS" not in result["openai"]
    assert not ProviderKey.objects.exists()


def test_a_refused_env_base_url_imports_nothing_and_says_why(settings, caplog):
    settings.OPENAI_API_KEY = "sk-first-0123456789"
    settings.OPENAI_BASE_URL = "http://169.254.169.254/"
    result = keys.keys_import_from_env()
    assert result["openai"].startswith("refused") and "metadata" in result["openai"]
    assert not ProviderKey.objects.exists()
    assert "sk-first" not in caplog.text


def test_a_refusal_of_a_replaced_secret_does_not_mark_the_new_one_invalid():
    a = add("a")
    lease = keys.key_choose(provider="openai")
    keys.key_update(key_id=a.pk, secret="sk-replacement-0123456789")
    # The reply that still held the old secret is refused after the replacement.
    keys.key_report_failure(key_id=lease.id, kind="auth", version=lease.version)
    assert reload(a).health == Health.HEALTHY
    fresh = keys.key_choose(provider="openai")
    assert fresh.version == lease.version + 1
    keys.key_report_failure(key_id=fresh.id, kind="auth", version=fresh.version)
    assert reload(a).health == Health.INVALID
