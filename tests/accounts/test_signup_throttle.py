"""Sign-up tells whether a name or an email is taken (it must: the account is signed in at once,
and no mail need be sent). What keeps it from serving to find out who has an account here is a
throttle: past SIGNUP_REFUSALS_PER_HOUR refusals for a taken name or email, one client address
is refused every sign-up, taken or not, until its hour is over."""

import pytest
from django.contrib.auth import get_user_model

from accounts import services

User = get_user_model()
STRONG = "plum orchard 7 lantern"
LIMIT = services.SIGNUP_REFUSALS_PER_HOUR


def post_signup(client, n: int, address: str = "198.51.100.7", **overrides):
    data = {"username": f"prober{n}", "email": f"prober{n}@example.test", "password1": STRONG, "password2": STRONG}
    data.update(overrides)
    return client.post("/accounts/signup/", data, REMOTE_ADDR=address)


@pytest.fixture
def victims(make_user):
    return [make_user(f"victim{n}", email=f"victim{n}@example.test") for n in range(LIMIT + 5)]


@pytest.fixture
def clock(monkeypatch):
    now = [1_800_000_000.0 + 60]  # a minute into an hour
    monkeypatch.setattr(services, "_clock", lambda: now[0])
    return now


@pytest.mark.django_db
def test_probing_emails_is_cut_off_after_the_limit_and_then_tells_nothing(client, victims, clock):
    for n in range(LIMIT):
        response = post_signup(client, n, email=f"victim{n}@example.test")
        assert response.status_code == 400 and "already exists" in response.content.decode()

    clock[0] += 60  # two minutes into the hour: 58 left
    taken = post_signup(client, LIMIT, email=f"victim{LIMIT}@example.test")
    free = post_signup(client, LIMIT + 1, email="nobody-has-this@example.test")
    for response in (taken, free):
        assert response.status_code == 429
        assert response["Retry-After"] == str(58 * 60)
        body = response.content.decode()
        assert "Too many refused sign-ups from your address. Try again in 58 minutes." in body
        assert "already exists" not in body
    assert not User.objects.filter(username__startswith="prober").exists()


@pytest.mark.django_db
def test_taken_names_count_too(client, victims, clock):
    for n in range(LIMIT):
        assert post_signup(client, n, username=f"Victim{n}").status_code == 400
    assert post_signup(client, LIMIT).status_code == 429


@pytest.mark.django_db
def test_after_the_hour_the_address_may_sign_up_again(client, victims, clock):
    for n in range(LIMIT):
        post_signup(client, n, email=f"victim{n}@example.test")
    assert post_signup(client, LIMIT).status_code == 429
    clock[0] += 3600
    assert post_signup(client, LIMIT).status_code == 302
    assert User.objects.filter(username=f"prober{LIMIT}").exists()


@pytest.mark.django_db
def test_other_addresses_are_not_held_back(client, victims, clock):
    for n in range(LIMIT):
        post_signup(client, n, email=f"victim{n}@example.test")
    assert post_signup(client, LIMIT, address="203.0.113.9").status_code == 302


@pytest.mark.django_db
def test_one_ipv6_network_counts_as_one_address(client, victims, clock):
    """An IPv6 client is given a whole /64 network: each of its addresses must not be a fresh start."""
    for n in range(LIMIT):
        post_signup(client, n, address=f"2001:db8:5:7::{n + 1:x}", email=f"victim{n}@example.test")
    assert post_signup(client, LIMIT, address="2001:db8:5:7:ffff::1").status_code == 429
    assert post_signup(client, LIMIT, address="2001:db8:5:8::1").status_code == 302


@pytest.mark.django_db
def test_successful_signups_and_bad_input_do_not_count(client, clock):
    """Only answers to "is this taken?" count: a household behind one address can sign up."""
    for n in range(LIMIT + 2):
        assert post_signup(client, n, password2="does not match").status_code == 400
        assert post_signup(client, n).status_code == 302
        client.post("/accounts/logout/")
    assert User.objects.filter(username__startswith="prober").count() == LIMIT + 2


@pytest.mark.django_db
def test_the_pause_is_said_in_korean(client, victims, clock):
    for n in range(LIMIT):
        post_signup(client, n, email=f"victim{n}@example.test")
    response = client.post(
        "/accounts/signup/",
        {"username": "x", "email": "x@example.test", "password1": STRONG, "password2": STRONG},
        REMOTE_ADDR="198.51.100.7",
        HTTP_ACCEPT_LANGUAGE="ko",
    )
    assert response.status_code == 429
    assert "59분 후에 다시 시도하세요" in response.content.decode()


@pytest.mark.django_db
def test_a_cache_fault_lets_signups_through(client, clock, monkeypatch):
    """As for password-reset mails: a person kept from signing up matters more than the probing
    the fault makes possible while it lasts."""
    from django.core.cache import cache

    def broken(*args, **kwargs):
        raise ConnectionError("cache down")

    for name in ("get", "add", "incr"):
        monkeypatch.setattr(cache, name, broken)
    assert post_signup(client, 1).status_code == 302
