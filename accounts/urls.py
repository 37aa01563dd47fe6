from django.urls import include, path

from .data_rights_views import data_rights_urlpatterns

urlpatterns: list = [
    path("", include(data_rights_urlpatterns)),  # rights: the "Your data" pages
]
