from django.contrib import admin
from django.urls import include, path

from . import health

urlpatterns = [
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
