from django.urls import include, path

from .data_rights_views import data_rights_api_urlpatterns

urlpatterns: list = [
    path("", include(data_rights_api_urlpatterns)),  # rights: export, erase, conversation downloads
]
