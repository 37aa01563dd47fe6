import json

import pytest
from django.contrib.auth import get_user_model

User = get_user_model()
PASSWORD = "correct horse battery 9"


@pytest.mark.django_db
def test_login_with_the_right_password_goes_home(client, user):
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    # No chat page in this branch yet: home falls back to the profile.
    assert client.get(response["Location"]).status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("length", [151, 256, 5000])
def test_a_username_longer_than_any_account_can_have_is_just_wrong_credentials(client, user, length):
    """Not passed to authenticate(): django-axes would write it to a varchar(255) (a 500 on
    PostgreSQL). 150 is the longest username an account can have."""
    from axes.models import AccessAttempt

    response = client.post("/accounts/login/", {"username": "a" * length, "password": "whatever"})
    assert response.status_code == 200
    assert response.context["form"].non_field_errors() and "correct username and password" in response.content.decode()
    assert not AccessAttempt.objects.filter(username__startswith="a" * 151).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("next_url", ["/accounts/login/", "/accounts/login/?next=/accounts/login/", "http://testserver/accounts/login/"])
def test_the_login_page_with_next_pointing_at_itself_sends_a_signed_in_person_home(client, user, next_url):
    client.force_login(user)
    response = client.get("/accounts/login/", {"next": next_url})
    assert response.status_code == 302 and response["Location"] == "/"


@pytest.mark.django_db
def test_signing_in_with_next_pointing_at_the_login_page_goes_home(client, user):
    response = client.post("/accounts/login/?next=/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"


@pytest.mark.django_db
def test_logout_is_a_post(client, user):
    client.force_login(user)
    assert client.get("/accounts/logout/").status_code == 405
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/accounts/profile/").status_code == 302


@pytest.mark.django_db
def test_wrong_passwords_are_throttled_and_the_lockout_says_when_to_retry(client, user, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"}, REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 429
    body = response.content.decode()
    assert "Try again in 15 minutes" in body
    assert 0 < int(response["Retry-After"]) <= 15 * 60
    # Locked: even the right password is refused now.
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}, REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_forged_x_forwarded_for_does_not_dodge_the_lockout(client, user, settings):
    for n in range(settings.AXES_FAILURE_LIMIT):
        client.post(
            "/accounts/login/",
            {"username": "alice", "password": "wrong"},
            REMOTE_ADDR="203.0.113.5",
            HTTP_X_FORWARDED_FOR=f"198.51.100.{n}",
        )
    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": PASSWORD},
        REMOTE_ADDR="203.0.113.5",
        HTTP_X_FORWARDED_FOR="198.51.100.200",
    )
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


def test_client_ip_believes_only_the_trusted_proxies(rf, settings):
    from chatsite.net import client_ip

    request = rf.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    settings.TRUSTED_PROXY_COUNT = 0
    assert client_ip(request) == "10.0.0.2"
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_ip(request) == "203.0.113.9"  # what our proxy saw, not what the client wrote
    settings.TRUSTED_PROXY_COUNT = 3
    assert client_ip(request) == "10.0.0.2"  # fewer hops than proxies: the header is not ours


@pytest.mark.django_db
def test_password_change_and_reset_pages_work(client, user, mailoutbox, django_capture_on_commit_callbacks):
    client.force_login(user)
    new = "quiet river 42 stones"
    response = client.post(
        "/accounts/password/change/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new}
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)

    client.logout()
    with django_capture_on_commit_callbacks(execute=True):  # the mail is sent by a task
        response = client.post("/accounts/password/reset/", {"email": "ALICE@example.test"})
    assert response.status_code == 302
    assert len(mailoutbox) == 1
    link = next(line for line in mailoutbox[0].body.splitlines() if "/accounts/password/reset/" in line)
    path = link.split("testserver", 1)[1]
    form_page = client.get(path, follow=True)
    assert form_page.context["validlink"]
    final = "brave meadow 77 kites"
    response = client.post(form_page.redirect_chain[-1][0], {"new_password1": final, "new_password2": final})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(final)


@pytest.mark.django_db
def test_a_reset_link_sent_before_the_account_was_disabled_no_longer_sets_a_password(
    client, user, mailoutbox, django_capture_on_commit_callbacks
):
    # No reset is sent to a disabled account; one sent before an administrator disabled it must
    # not work afterwards either.
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/accounts/password/reset/", {"email": user.email})
    link = next(line for line in mailoutbox[0].body.splitlines() if "/accounts/password/reset/" in line)
    user.is_active = False
    user.save(update_fields=["is_active"])
    path = link.split("testserver", 1)[1]
    form_page = client.get(path, follow=True)
    assert not form_page.context["validlink"]
    final = "brave meadow 77 kites"
    client.post(path.rsplit("/", 2)[0] + "/set-password/", {"new_password1": final, "new_password2": final})
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_a_lockout_reached_through_the_erase_api_answers_the_apis_json_error(client, user, settings):
    # The erase API checks the password through django-axes too; its lockout is an API answer,
    # not the HTML page a program cannot read.
    client.force_login(user)
    body = json.dumps({"password": "wrong", "confirm": "ERASE"})
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post("/api/v1/account/erase/", body, content_type="application/json", REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 429
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "locked_out"
    assert "15 minutes" in response.json()["error"]["message"]
    assert 0 < int(response["Retry-After"]) <= 15 * 60
    assert type(user).objects.filter(pk=user.pk).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/accounts/password/change/", "/admin/password_change/"])
def test_guesses_of_the_current_password_on_a_password_change_page_are_throttled(client, make_user, settings, url):
    # Whoever holds a signed-in browser must not be able to try passwords there without limit
    # and learn the account's password (the erase form is throttled the same way).
    user = make_user("alice", is_staff=True)
    client.force_login(user)
    new = "quiet river 42 stones"
    for n in range(settings.AXES_FAILURE_LIMIT):
        response = client.post(
            url, {"old_password": f"guess {n}", "new_password1": new, "new_password2": new}, REMOTE_ADDR="203.0.113.5"
        )
    assert response.status_code == 429
    response = client.post(url, {"old_password": PASSWORD, "new_password1": new, "new_password2": new}, REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 429
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url, fields",
    [
        ("/accounts/password/change/", ("old_password", "new_password1", "new_password2")),
        ("/admin/password_change/", ("old_password", "new_password1", "new_password2")),
        ("/accounts/login/", ("password",)),
        ("/accounts/data/erase/", ("password",)),
    ],
)
def test_a_refused_password_is_kept_nowhere_in_the_login_records(client, make_user, admin_client, url, fields):
    # django-axes keeps the form of every refused attempt, for the admin to read. A guess of the
    # current password is most of it; the new password typed beside it is a password outright.
    from axes.models import AccessAttempt
    from django.urls import reverse

    user = make_user("alice", is_staff=True)
    if url != "/accounts/login/":
        client.force_login(user)
    typed = {name: f"typed canary-password {n} quiet river" for n, name in enumerate(fields)}
    if "new_password2" in typed:
        typed["new_password2"] = typed["new_password1"]
    client.post(url, {"username": "alice", "confirm": "ERASE", **typed})

    attempt = AccessAttempt.objects.get(username="alice")
    page = admin_client.get(reverse("admin:axes_accessattempt_change", args=[attempt.pk])).content.decode()
    for password in typed.values():
        assert password not in attempt.post_data + attempt.get_data
        assert password not in page
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_the_admins_own_password_change_goes_through_the_service(client, make_user, monkeypatch):
    from accounts import services

    closed = []
    monkeypatch.setattr(services.sockets, "user_sockets_close", lambda *, user_id: closed.append(user_id))
    user = make_user("alice", is_staff=True)
    client.force_login(user)
    new = "quiet river 42 stones"
    response = client.post("/admin/password_change/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new})
    assert response.status_code == 302 and response["Location"] == "/admin/password_change/done/"
    user.refresh_from_db()
    assert user.check_password(new) and closed == [user.pk]
    assert client.get("/admin/").status_code == 200  # this browser stays signed in


@pytest.mark.django_db
def test_the_reset_page_does_the_same_work_for_a_known_and_an_unknown_address(client, user, mailoutbox, django_capture_on_commit_callbacks):
    # Mailing in the request made the answer for a known address as slow as the mail server
    # (with SMTP: a second or more), the answer for an unknown one quick: which addresses have
    # an account showed in the timing. Both now queue the same task and mail nothing in the request.
    for email in ("nobody@example.test", user.email.upper()):
        with django_capture_on_commit_callbacks(execute=False) as queued:
            response = client.post("/accounts/password/reset/", {"email": email})
        assert response.status_code == 302 and response["Location"] == "/accounts/password/reset/sent/"
        assert len(queued) == 1 and mailoutbox == []
        last = queued[0]
    last()  # the worker sends it
    assert len(mailoutbox) == 1 and mailoutbox[0].to == [user.email]
    link = next(line for line in mailoutbox[0].body.splitlines() if "/accounts/password/reset/" in line)
    assert link.startswith("http://testserver/")
    assert client.get(link.split("testserver", 1)[1], follow=True).context["validlink"]


@pytest.mark.django_db
def test_the_reset_form_mails_one_address_at_most_three_times_an_hour(
    client, user, other_user, mailoutbox, django_capture_on_commit_callbacks
):
    # Anyone can type someone's address into the form: without a limit it mailed them as often
    # as it was posted. Past three an hour it still answers "sent" and mails nothing.
    for _i in range(5):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post("/accounts/password/reset/", {"email": f" {user.email.upper()}"})
        assert response.status_code == 302 and response["Location"] == "/accounts/password/reset/sent/"
    assert [m.to for m in mailoutbox] == [[user.email]] * 3
    with django_capture_on_commit_callbacks(execute=True):  # another address is not held back
        client.post("/accounts/password/reset/", {"email": other_user.email})
    assert mailoutbox[-1].to == [other_user.email]


@pytest.mark.django_db
def test_a_changed_password_is_confirmed_once_on_the_profile_and_in_the_admin(client, make_user, user):
    """The profile's own change says so on the profile; the admin's done page has its own words
    and no second copy of ours."""
    from django.contrib.messages import get_messages

    client.force_login(user)
    new = "quiet river 42 stones"
    response = client.post(
        "/accounts/password/change/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == ["Your password is changed."]

    admin = make_user("root", is_staff=True)
    client.force_login(admin)
    response = client.post("/admin/password_change/", {"old_password": PASSWORD, "new_password1": new, "new_password2": new})
    assert response.status_code == 302
    assert [str(m) for m in get_messages(response.wsgi_request)] == []
