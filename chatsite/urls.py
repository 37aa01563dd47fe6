from django.contrib import admin
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path

from . import health

# A route under /api/ that does not exist answers the API's JSON error; pages keep Django's 404.
handler404 = "chatsite.api.page_not_found"



def favicon(request):
    # Browsers ask for /favicon.ico where a document names no icon (a JSON response, a download).
    return redirect(static("img/favicon.svg"))


urlpatterns = [
    path("favicon.ico", favicon),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("accounts/", include("accounts.urls")),
    path("api/v1/", include("conversations.api_urls")),
    path("api/v1/", include("billing.api_urls")),
    path("api/v1/", include("accounts.api_urls")),
    path("", include("billing.urls")),
    path("", include("conversations.urls")),
]
