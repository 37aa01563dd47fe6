import pytest


@pytest.mark.django_db
def test_browser_korean_gets_the_korean_login_page(client):
    response = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="ko-KR,ko;q=0.9")
    body = response.content.decode()
    assert response["Content-Language"] == "ko"
    assert '<html lang="ko">' in body
    assert "Parley에 로그인" in body
    assert "비밀번호를 잊으셨나요?" in body


@pytest.mark.django_db
def test_browser_english_gets_the_english_login_page(client):
    body = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert "Log in to Parley" in body


@pytest.mark.django_db
def test_the_profile_language_overrides_the_browser(client, user):
    user.language = "ko"
    user.save()
    client.force_login(user)
    body = client.get("/accounts/profile/", HTTP_ACCEPT_LANGUAGE="en-US").content.decode()
    assert "프로필" in body and "Your profile" not in body
    user.language = "en"
    user.save()
    body = client.get("/accounts/profile/", HTTP_ACCEPT_LANGUAGE="ko").content.decode()
    assert "Your profile" in body


@pytest.mark.django_db
def test_language_switcher_saves_the_choice_to_the_profile(client, user):
    client.force_login(user)
    response = client.post("/accounts/language/", {"language": "ko", "next": "/accounts/profile/"})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.language == "ko"


@pytest.mark.django_db
def test_language_switcher_for_anonymous_sets_the_cookie(client, settings):
    client.post("/accounts/language/", {"language": "ko", "next": "/accounts/login/"})
    body = client.get("/accounts/login/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert "Parley에 로그인" in body


@pytest.mark.django_db
def test_korean_signup_errors_are_korean(client):
    response = client.post(
        "/accounts/signup/",
        {"username": "kim", "email": "kim@example.test", "password1": "plum orchard 7", "password2": "other"},
        HTTP_ACCEPT_LANGUAGE="ko",
    )
    assert "두 비밀번호가 일치하지 않습니다." in response.content.decode()


def test_korean_catalogue_is_complete_and_compiled():
    """Both files are committed, so a fresh machine needs no gettext tools; every entry of the .po
    has a translation and the .mo gives the same text."""
    import gettext
    from pathlib import Path

    from django.conf import settings

    folder = Path(settings.BASE_DIR) / "locale" / "ko" / "LC_MESSAGES"
    po = (folder / "django.po").read_text(encoding="utf-8")
    entries = po.split("\n\n")[1:]
    # An untranslated entry ends with an empty msgstr (a translated one has text on that line or
    # continues on the next).
    untranslated = [e for e in entries if e.strip().splitlines()[-1] in {'msgstr ""', 'msgstr[0] ""'}]
    assert not untranslated
    assert "#, fuzzy" not in po
    catalogue = gettext.GNUTranslations((folder / "django.mo").open("rb"))
    assert catalogue.gettext("Log in to Parley") == "Parley에 로그인"


@pytest.mark.django_db
def test_signup_keeps_a_language_picked_with_the_switcher_else_follows_the_browser(client, django_user_model):
    strong = "plum orchard 7 lantern"
    client.post(
        "/accounts/signup/",
        {"username": "en1", "email": "en1@example.test", "password1": strong, "password2": strong},
        HTTP_ACCEPT_LANGUAGE="ko",
    )
    assert django_user_model.objects.get(username="en1").language == ""
    client.post("/accounts/logout/")
    client.post("/accounts/language/", {"language": "ko", "next": "/"})
    client.post(
        "/accounts/signup/", {"username": "ko1", "email": "ko1@example.test", "password1": strong, "password2": strong}
    )
    assert django_user_model.objects.get(username="ko1").language == "ko"
