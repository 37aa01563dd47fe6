from django.urls import path

from . import api

urlpatterns = [
    path("models/", api.models_list, name="api-models"),
    path("conversations/", api.conversations_collection, name="api-conversations"),
    path("conversations/<uuid:conversation_id>/", api.conversation_item, name="api-conversation"),
]
