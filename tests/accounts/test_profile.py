import re

import pytest

from accounts import services


@pytest.mark.django_db
def test_profile_needs_login(client):
    response = client.get("/accounts/profile/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.django_db
def test_profile_saves_settings_and_links_to_data_and_usage(client, user):
    client.force_login(user)
    page = client.get("/accounts/profile/").content.decode()
    assert 'href="/accounts/data/"' in page and 'href="/usage/"' in page
    response = client.post(
        "/accounts/profile/",
        {"display_name": "Alice L.", "timezone": "Asia/Seoul", "language": "ko", "default_model": "openai:gpt-4o-mini"},
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert (user.display_name, user.timezone, user.language, user.default_model) == (
        "Alice L.",
        "Asia/Seoul",
        "ko",
        "openai:gpt-4o-mini",
    )


@pytest.mark.django_db
@pytest.mark.parametrize("zone", ["Japan", "EST5EDT", "GMT"])
def test_a_valid_zone_outside_the_usual_list_is_shown_selected_and_kept(client, user, zone):
    user.timezone = zone  # as the admin's user form may set it: the model accepts every zone
    user.full_clean()
    user.save()
    client.force_login(user)
    page = client.get("/accounts/profile/").content.decode()
    select = re.search(r'<select name="timezone".*?</select>', page, re.S).group(0)
    assert re.findall(r'<option value="([^"]*)" selected>', select) == [zone]
    response = client.post("/accounts/profile/", {"display_name": "A", "timezone": zone, "language": "", "default_model": ""})
    assert response.status_code == 302
    user.refresh_from_db()
    assert (user.display_name, user.timezone) == ("A", zone)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "field, value",
    [
        ("default_model", "gpt-4o"),
        ("default_model", "openai:"),
        ("default_model", "Open AI:gpt"),
        ("default_model", "ollama:llama3"),  # a provider the site does not have
        ("timezone", "Mars/Olympus"),
        ("language", "fr"),
        ("display_name", "x" * 81),
    ],
)
def test_bad_profile_input_is_refused_and_nothing_changes(client, user, field, value):
    client.force_login(user)
    data = {"display_name": "", "timezone": "UTC", "language": "", "default_model": ""}
    data[field] = value
    response = client.post("/accounts/profile/", data)
    assert response.status_code == 400
    assert response.context["form"].errors[field]
    user.refresh_from_db()
    assert (user.display_name, user.timezone, user.language, user.default_model) == ("", "UTC", "", "")


@pytest.mark.django_db
def test_a_default_model_without_a_price_is_refused_in_words(client, user):
    # New chats would start on it and every message be refused (model_unavailable).
    client.force_login(user)
    data = {"display_name": "", "timezone": "UTC", "language": "", "default_model": "openai:gpt-unpriced"}
    response = client.post("/accounts/profile/", data)
    assert response.status_code == 400
    [error] = response.context["form"].errors["default_model"]
    assert "openai:gpt-unpriced" in error and "no price" in error
    user.refresh_from_db()
    assert user.default_model == ""


@pytest.mark.django_db
def test_any_model_that_has_a_price_can_be_the_default_model(client, user):
    # A model name as long as a price may have ("org/model-name..." of an OpenAI-compatible server).
    from billing import prices

    model_id = "openai:" + "acme-research/" + "m" * 90
    prices.price_set(model_id=model_id, input_per_million="1", output_per_million="2")
    client.force_login(user)
    data = {"display_name": "", "timezone": "UTC", "language": "", "default_model": model_id}
    response = client.post("/accounts/profile/", data)
    assert response.status_code == 302, response.context["form"].errors
    user.refresh_from_db()
    assert user.default_model == model_id


@pytest.mark.django_db
def test_update_profile_service_validates_and_keeps_other_fields(user):
    from django.core.exceptions import ValidationError

    services.user_update_profile(user=user, timezone="Europe/Berlin")
    with pytest.raises(ValidationError):
        services.user_update_profile(user=user, default_model="not a model")
    user.refresh_from_db()
    assert user.timezone == "Europe/Berlin" and user.default_model == ""


@pytest.mark.django_db
def test_a_user_can_be_in_several_teams(user):
    red = services.team_create(name="Red")
    blue = services.team_create(name="Blue")
    services.team_add_member(team=red, user=user)
    services.team_add_member(team=red, user=user)  # idempotent
    services.team_add_member(team=blue, user=user)
    assert sorted(t.name for t in user.teams.all()) == ["Blue", "Red"]
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        services.team_create(name="RED")
    assert services.team_remove_member(team=red, user=user) is True
    assert [t.name for t in user.teams.all()] == ["Blue"]
