"""Errors reveal nothing in production (DEBUG=false): no stack trace, no setting, no path."""

from __future__ import annotations

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db

MARKER = "boom-internal-detail-5c1e"


def _leaks(body: str, settings) -> list[str]:
    found = [
        needle
        for needle in (MARKER, "Traceback", "File \"", ".py", settings.SECRET_KEY, "SECRET_KEY", "DATABASES", "INSTALLED_APPS", str(settings.BASE_DIR))
        if needle in body
    ]
    return found


@pytest.fixture
def production(settings):
    settings.DEBUG = False
    settings.DEBUG_PROPAGATE_EXCEPTIONS = False
    return settings


def test_an_api_500_is_json_without_internals(production, user, monkeypatch):
    def explode():
        raise RuntimeError(f"{MARKER} key={production.SECRET_KEY}")

    monkeypatch.setattr("conversations.api.models_available", explode)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    response = client.get("/api/v1/models/")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "server_error"
    assert _leaks(response.content.decode(), production) == []


def test_a_page_500_is_plain_without_internals(production, user, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError(f"{MARKER} key={production.SECRET_KEY}")

    monkeypatch.setattr("accounts.views.render", explode)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    response = client.get("/accounts/profile/")
    assert response.status_code == 500
    assert _leaks(response.content.decode(), production) == []


def test_404_and_api_errors_in_production_show_no_urlconf_or_settings(production, user):
    client = Client()
    client.force_login(user)
    for url in ("/no/such/page/", "/api/v1/no-such-route/", "/api/v1/conversations/not-a-uuid/"):
        response = client.get(url)
        assert response.status_code == 404
        body = response.content.decode()
        assert "urlpatterns" not in body and "URLconf" not in body and _leaks(body, production) == []
        if url.startswith("/api/"):  # CONTRACT section 4: API errors are JSON
            assert response["Content-Type"] == "application/json"
            assert response.json() == {"error": {"code": "not_found", "message": response.json()["error"]["message"]}}
        else:
            assert response["Content-Type"].startswith("text/html")
    response = client.post("/api/v1/conversations/", "{not json", content_type="application/json")
    assert response.status_code == 400 and set(response.json()["error"]) == {"code", "message"}


def test_the_api_500_is_still_logged_for_the_operator(production, user, monkeypatch, caplog):
    monkeypatch.setattr("conversations.api.models_available", lambda: 1 / 0)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    with caplog.at_level("ERROR"):
        client.get("/api/v1/models/")
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


# --- every API answers its errors in JSON (CONTRACT section 4), whichever app it belongs to -------

DATA_RIGHTS_POSTS = ["/api/v1/account/export/", "/api/v1/account/erase/"]


def _is_json_error(response, status: int, code: str) -> bool:
    return (
        response.status_code == status
        and response["Content-Type"] == "application/json"
        and set(response.json()["error"]) == {"code", "message"}
        and response.json()["error"]["code"] == code
    )


@pytest.mark.parametrize("url", DATA_RIGHTS_POSTS)
def test_an_anonymous_post_to_the_data_rights_api_is_401_json_not_a_csrf_page(db, url):
    response = Client(enforce_csrf_checks=True).post(url, "{}", content_type="application/json")
    assert _is_json_error(response, 401, "not_authenticated"), (response.status_code, response["Content-Type"])


@pytest.mark.parametrize("url", DATA_RIGHTS_POSTS)
def test_a_csrf_failure_on_the_data_rights_api_is_403_json(user, url):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    response = client.post(url, "{}", content_type="application/json")
    assert _is_json_error(response, 403, "csrf_failed"), (response.status_code, response["Content-Type"])


@pytest.mark.parametrize(
    "method,url", [("post", "/api/v1/usage/"), ("get", "/api/v1/account/export/"), ("get", "/api/v1/account/erase/")]
)
def test_a_wrong_method_on_any_api_is_405_json(user, method, url):
    client = Client()
    client.force_login(user)
    response = getattr(client, method)(url)
    assert _is_json_error(response, 405, "method_not_allowed"), (response.status_code, response["Content-Type"])
