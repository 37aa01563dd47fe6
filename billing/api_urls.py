from django.urls import path

from . import api

urlpatterns = [
    path("usage/", api.usage, name="api-usage"),
]
