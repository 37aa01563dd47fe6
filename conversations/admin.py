"""Conversations in the admin: metadata only in lists (message text is people's words; it is
deferred and not searchable). Stopping a running reply goes through the turn service."""

from django.contrib import admin, messages
from django.utils.translation import gettext_lazy as _

from . import turns
from .models import Conversation, Message


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "model", "created_at", "updated_at")
    list_filter = ("model",)
    search_fields = ("=id", "owner__username")
    raw_id_fields = ("owner", "summary_upto")
    readonly_fields = ("id", "created_at", "updated_at")
    exclude = ("summary",)
    actions = ["stop_replies"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer("system_prompt", "summary")

    # Stopping a reply changes someone's conversation: not for staff who may only look.
    @admin.action(description=_("Stop the running reply"), permissions=["change"])
    def stop_replies(self, request, queryset):
        stopped = sum(1 for c in queryset if turns.turn_stop(conversation_id=c.id))
        self.message_user(request, _("%(n)d replies asked to stop.") % {"n": stopped}, messages.INFO)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "status", "model", "input_tokens", "output_tokens", "cost", "created_at")
    list_filter = ("status", "role")
    search_fields = ("=id", "=conversation__id")
    raw_id_fields = ("conversation", "reply_to")
    readonly_fields = [f.name for f in Message._meta.fields if f.name != "content"]
    exclude = ("content",)

    def get_queryset(self, request):
        return super().get_queryset(request).defer("content")

    def has_add_permission(self, request):
        return False
