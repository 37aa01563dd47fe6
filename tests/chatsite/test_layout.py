import re

import pytest

PAGES = ["/accounts/login/", "/accounts/signup/", "/accounts/password/reset/"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", PAGES)
def test_pages_have_no_inline_script_or_style_and_send_a_strict_csp(client, path):
    response = client.get(path)
    body = response.content.decode()
    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", body)
    assert "<style" not in body and " style=" not in body
    assert not re.search(r"\son[a-z]+=", body)  # no inline event handlers
    assert not re.search(r"(src|href)=\"(https?:)?//", body)  # every asset local


@pytest.mark.django_db
def test_static_assets_are_served_locally(client):
    assert client.get("/static/css/app.css").status_code == 200
    assert client.get("/static/img/favicon.svg").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/admin/login/", "/admin/", "/admin/dashboard/", "/admin/billing/providerkey/"])
def test_admin_pages_name_the_sites_icon(client, make_user, path):
    # Without it the browser asks for /favicon.ico on every admin page.
    client.force_login(make_user("boss", is_staff=True, is_superuser=True))
    body = client.get(path, follow=True).content.decode()
    assert '<link rel="icon" href="/static/img/favicon.svg"' in body
    assert "Parley" in body  # the admin's own branding is still there


@pytest.mark.django_db
def test_favicon_ico_leads_to_the_sites_icon(client):
    response = client.get("/favicon.ico", follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/static/img/favicon.svg"


@pytest.mark.django_db
def test_header_nav_for_a_member_and_for_staff(client, user, make_user):
    client.force_login(user)
    body = client.get("/accounts/profile/").content.decode()
    assert 'href="/"' in body and 'href="/usage/"' in body and 'href="/accounts/profile/"' in body
    assert 'action="/accounts/logout/"' in body and 'method="post"' in body
    assert "/admin/" not in body
    client.force_login(make_user("boss", is_staff=True))
    assert 'href="/admin/"' in client.get("/accounts/profile/").content.decode()
