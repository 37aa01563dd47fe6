import threading

import pytest
from django.core.cache import cache

from billing import limits
from billing.limits import RateLimited, limits_for, rate_limit_check


@pytest.fixture
def clock(monkeypatch):
    """Time that only moves when the test says so (start: 10 s into a minute)."""
    now = {"t": 1_800_000_010.0}
    monkeypatch.setattr(limits, "_clock", lambda: now["t"])
    return now


def counters(user):
    return sorted((k, v) for k in [f"billing:rl:{user.pk}:{m}" for m in ("requests_per_minute", "tokens_per_minute")]
                  for w in range(1_800_000_010 // 60 - 1, 1_800_000_010 // 60 + 3)
                  if (v := cache.get(f"{k}:{w}")))


def test_a_burst_is_refused_with_seconds_to_wait_and_counts_nothing(user, clock, settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 3
    for _ in range(3):
        rate_limit_check(user=user, tokens=10)
    before = counters(user)

    with pytest.raises(RateLimited) as refused:
        rate_limit_check(user=user, tokens=10)

    assert refused.value.limit == "requests_per_minute"
    # 50 s to the end of the minute, then 20 s until its 3 requests weigh 2: room for one more.
    assert refused.value.retry_after == 70
    assert "70" in refused.value.message
    assert counters(user) == before  # the refused request was not counted


def test_waiting_the_given_seconds_is_enough(user, clock, settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 4
    for _ in range(4):
        rate_limit_check(user=user, tokens=0)
    with pytest.raises(RateLimited) as refused:
        rate_limit_check(user=user, tokens=0)
    clock["t"] += refused.value.retry_after - 1
    with pytest.raises(RateLimited):
        rate_limit_check(user=user, tokens=0)
    clock["t"] += 1
    rate_limit_check(user=user, tokens=0)


def test_the_window_slides_so_a_minute_boundary_is_no_double_burst(user, clock, settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 10
    clock["t"] += 49  # 59 s into the minute
    for _ in range(10):
        rate_limit_check(user=user, tokens=0)
    clock["t"] += 2  # 1 s into the next minute: the previous ten still weigh ~9.8
    with pytest.raises(RateLimited):
        rate_limit_check(user=user, tokens=0)


def test_tokens_per_minute_refusal_also_takes_back_the_request(user, clock, settings):
    settings.RATE_LIMIT_TOKENS_PER_MINUTE = 1000
    rate_limit_check(user=user, tokens=900)
    before = counters(user)
    with pytest.raises(RateLimited) as refused:
        rate_limit_check(user=user, tokens=200)
    assert refused.value.limit == "tokens_per_minute"
    assert refused.value.retry_after > 0
    assert counters(user) == before
    rate_limit_check(user=user, tokens=100)


def test_a_request_larger_than_a_minute_of_tokens_is_refused(user, clock, settings):
    settings.RATE_LIMIT_TOKENS_PER_MINUTE = 1000
    with pytest.raises(RateLimited) as refused:
        rate_limit_check(user=user, tokens=1001)
    assert refused.value.retry_after == 60


def test_a_request_larger_than_a_minute_of_tokens_says_waiting_will_not_help(user, clock, settings):
    """Waiting never lets it through: "try again in 60 seconds" would send the person round in
    circles. The message names the sizes and what to do instead."""
    settings.RATE_LIMIT_TOKENS_PER_MINUTE = 1000
    with pytest.raises(RateLimited) as refused:
        rate_limit_check(user=user, tokens=1001)
    message = refused.value.message
    assert "try again" not in message.lower()
    assert "1001" in message and "1000" in message
    clock["t"] += 3600
    with pytest.raises(RateLimited) as again:
        rate_limit_check(user=user, tokens=1001)
    assert again.value.message == message


def test_user_override_replaces_the_default_and_the_strictest_team_applies(user, make_team, settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 20
    settings.RATE_LIMIT_TOKENS_PER_MINUTE = 1000
    user.requests_per_minute = 50
    user.save()
    assert limits_for(user=user) == limits.Limits(50, 1000)
    make_team("loose", user, requests_per_minute=100)
    make_team("strict", user, requests_per_minute=5, tokens_per_minute=300)
    assert limits_for(user=user) == limits.Limits(5, 300)


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["requests_per_minute", "tokens_per_minute"])
def test_a_rate_limit_of_zero_is_refused_rather_than_read_as_the_default(user, make_team, field):
    """Empty means the site default; 0 would read as "blocked" to one operator and "unlimited" to
    another, and was silently the default. It is refused, by validation and by the database."""
    from django.core.exceptions import ValidationError
    from django.db import IntegrityError, transaction

    team = make_team("ops", user)
    for owner in (user, team):
        setattr(owner, field, 0)
        with pytest.raises(ValidationError) as refused:
            owner.full_clean()
        assert field in refused.value.message_dict
        with pytest.raises(IntegrityError), transaction.atomic():
            owner.save()


def _add_team(admin_client, *, name: str, requests_per_minute: str = ""):
    """The admin's "add team" form, posted with no members."""
    return admin_client.post(
        "/admin/accounts/team/add/",
        {
            "name": name,
            "requests_per_minute": requests_per_minute,
            "tokens_per_minute": "",
            "created_at_0": "2026-01-05",
            "created_at_1": "10:00:00",
            "teammembership_set-TOTAL_FORMS": "0",
            "teammembership_set-INITIAL_FORMS": "0",
        },
    )


def test_the_team_admin_refuses_a_rate_limit_of_zero(admin_client):
    from accounts.models import Team

    response = _add_team(admin_client, name="ops", requests_per_minute="0")
    assert response.status_code == 200
    assert "greater than or equal to 1" in response.content.decode()
    assert not Team.objects.exists()


@pytest.mark.parametrize("value", ["-5", "0"])
def test_the_team_admin_asks_for_at_least_one_whatever_the_value_refused(admin_client, value):
    # "-5" was refused as "greater than or equal to 0", and 0, typed next, as "... to 1"; the
    # page's number input also offered 0 (min="0").
    from accounts.models import Team

    response = _add_team(admin_client, name="ops", requests_per_minute=value)
    html = response.content.decode()
    assert response.status_code == 200 and not Team.objects.exists()
    assert "greater than or equal to 1" in html and "greater than or equal to 0" not in html
    assert 'min="0"' not in html


def test_the_user_admin_asks_for_a_rate_limit_of_at_least_one(admin_client, user):
    from tests.formpage import page_form

    url = f"/admin/accounts/user/{user.pk}/change/"
    data = page_form(admin_client, url, "user_form")
    response = admin_client.post(url, {**data, "tokens_per_minute": "-1"})
    html = response.content.decode()
    assert response.status_code == 200
    assert "greater than or equal to 1" in html and "greater than or equal to 0" not in html
    user.refresh_from_db()
    assert user.tokens_per_minute is None


def test_users_are_counted_apart(user, other_user, clock, settings):
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 1
    rate_limit_check(user=user, tokens=0)
    rate_limit_check(user=other_user, tokens=0)
    with pytest.raises(RateLimited):
        rate_limit_check(user=user, tokens=0)


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_are_never_admitted_past_the_limit(make_user, settings):
    """Threads share the cache (Redis when REDIS_URL is set, as across processes)."""
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 10
    user = make_user("burst")
    barrier = threading.Barrier(40)
    outcomes = []

    def work():
        from django.db import connection

        try:
            barrier.wait()
            rate_limit_check(user=user, tokens=5)
            outcomes.append("ok")
        except RateLimited:
            outcomes.append("limited")
        finally:
            connection.close()

    threads = [threading.Thread(target=work) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The minute may turn during the run; then a few more may pass, never more than the limit
    # in one window.
    assert 1 <= outcomes.count("ok") <= 20
    assert len(outcomes) == 40


def test_rate_limits_use_the_shared_redis_cache(needs_redis, user, clock, settings):
    from django.core.cache import caches
    from django.core.cache.backends.redis import RedisCache

    assert isinstance(caches["default"], RedisCache)
    settings.RATE_LIMIT_REQUESTS_PER_MINUTE = 2
    rate_limit_check(user=user, tokens=0)
    rate_limit_check(user=user, tokens=0)
    with pytest.raises(RateLimited):
        rate_limit_check(user=user, tokens=0)


def test_the_team_admin_refuses_a_taken_name_in_words(admin_client):
    from accounts.models import Team

    Team.objects.create(name="Ops")
    response = _add_team(admin_client, name="ops")
    assert response.status_code == 200
    page = response.content.decode()
    assert "A team with this name already exists." in page and "team_name_ci_unique" not in page
    assert Team.objects.count() == 1
