"""The site's URLs, plus Django's login/logout under their usual names when the accounts app
(written on another branch) does not provide them yet. Harmless once it does: nothing is added."""

from django.contrib.auth import views as auth_views
from django.urls import path

from accounts import urls as accounts_urls
from chatsite.urls import urlpatterns as site_urlpatterns

_names = {getattr(p, "name", None) for p in accounts_urls.urlpatterns}
urlpatterns = list(site_urlpatterns)
if "login" not in _names:
    urlpatterns.append(path("accounts/login/", auth_views.LoginView.as_view(), name="login"))
if "logout" not in _names:
    urlpatterns.append(path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"))
