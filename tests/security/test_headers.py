"""Security headers on every kind of response, and the production settings (DJANGO_HTTPS=true)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _csp(response) -> dict[str, list[str]]:
    policy = {}
    for part in response["Content-Security-Policy"].split(";"):
        name, *values = part.split()
        policy[name] = values
    return policy


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/accounts/login/", "/", "/api/v1/conversations/", "/usage/", "/accounts/profile/", "/healthz"])
def test_every_response_carries_the_security_headers(client, user, url):
    if url != "/accounts/login/":  # signed in, the login page redirects
        client.force_login(user)
    response = client.get(url)
    assert response.status_code == 200, url
    policy = _csp(response)
    for directive in ("script-src", "style-src", "default-src"):
        assert "'unsafe-inline'" not in policy.get(directive, []) and "'unsafe-eval'" not in policy.get(directive, [])
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert policy["img-src"] == ["'self'", "data:"]  # no image from another origin (tracking pixels)
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"
    assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    ["/", "/c/{id}/", "/usage/", "/accounts/profile/", "/api/v1/conversations/", "/api/v1/conversations/{id}/", "/api/v1/usage/", "/api/v1/models/"],
)
def test_a_signed_in_persons_pages_and_api_answers_are_never_stored_by_a_cache(client, user, url):
    # A browser on a shared computer (or a proxy) must not keep someone's conversations on disk,
    # nor show them from its cache after they signed out.
    from conversations.models import Conversation

    conversation = Conversation.objects.create(owner=user, title="private words", model="demo:echo")
    client.force_login(user)
    response = client.get(url.format(id=conversation.id))
    assert response.status_code == 200, url
    directives = {d.strip() for d in response.get("Cache-Control", "").split(",")}
    assert {"private", "no-store"} <= directives, (url, response.get("Cache-Control"))


@pytest.mark.django_db
def test_static_files_stay_cacheable_for_a_signed_in_person(client, user):
    client.force_login(user)
    response = client.get("/static/css/app.css")
    assert response.status_code == 200
    assert "no-store" not in response.get("Cache-Control", "")


@pytest.mark.django_db
def test_the_session_and_csrf_cookies_are_httponly_or_samesite(client, user):
    response = client.post("/accounts/login/", {"username": user.username, "password": "correct horse battery 9"})
    assert response.status_code == 302
    session = response.cookies["sessionid"]
    assert session["httponly"] and session["samesite"] == "Lax"


PRODUCTION_PROBE = """
import json
from django.conf import settings as s
from django.test import Client
c = Client()
secure = c.get('/healthz', secure=True, HTTP_HOST='parley.example.com')
plain = c.get('/accounts/login/', HTTP_HOST='parley.example.com')
print(json.dumps({
  'session_secure': s.SESSION_COOKIE_SECURE, 'csrf_secure': s.CSRF_COOKIE_SECURE,
  'session_httponly': s.SESSION_COOKIE_HTTPONLY, 'ssl_redirect': s.SECURE_SSL_REDIRECT,
  'hsts': secure.headers.get('Strict-Transport-Security', ''), 'debug': s.DEBUG,
  'plain_status': plain.status_code, 'plain_location': plain.headers.get('Location', ''),
}))
"""


def _production_env() -> dict[str, str]:
    # Not DJANGO_ALLOW_ASYNC_UNSAFE: the browser tests set it in this process for Playwright.
    dropped = {"DATABASE_URL", "REDIS_URL", "DJANGO_DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(
        {
            "DJANGO_HTTPS": "true",
            "DJANGO_SECRET_KEY": "prod-probe-" + "k3y" * 20,
            "DJANGO_ALLOWED_HOSTS": "parley.example.com",
            "FIELD_ENCRYPTION_KEYS": "hOQ8v6yLcPzQoOeGJpZ4v8Fz2r0xjJ3f7nYl4qk2m1A=",
        }
    )
    return env


def test_production_cookies_are_secure_with_hsts_and_https_redirect():
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", PRODUCTION_PROBE],
        cwd=ROOT, env=_production_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["session_secure"] and probe["csrf_secure"] and probe["session_httponly"]
    assert probe["debug"] is False
    assert "max-age=31536000" in probe["hsts"] and "includeSubDomains" in probe["hsts"]
    assert probe["ssl_redirect"] and probe["plain_status"] == 301
    assert probe["plain_location"].startswith("https://parley.example.com/")


def test_check_deploy_is_clean_under_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=_production_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
