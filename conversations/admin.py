"""Conversations in the admin: metadata only (message text, system prompts and summaries are
people's words: never shown, deferred and not searchable), and a conversation stays its owner's.
Stopping a running reply goes through the turn service."""

from django.contrib import admin, messages
from django.core.exceptions import FieldDoesNotExist, PermissionDenied
from django.db.models.constants import LOOKUP_SEP
from django.utils.translation import gettext_lazy as _

from . import services, turns
from .models import Conversation, Message

# People's words, never shown in the admin, on a list or a page: no filter may touch them
# either, or counting the rows that ?content__startswith=... matches would spell them out one
# letter at a time.
HIDDEN_TEXT = {Conversation: {"summary", "system_prompt"}, Message: {"content"}}


class HiddenTextLookupsMixin:
    def lookup_allowed(self, lookup, value, request=None):
        """Refuse (a 400) any URL filter whose path reaches a HIDDEN_TEXT field, from this model
        or across its relations; other lookups are Django's to judge."""
        model = self.model
        for part in lookup.split(LOOKUP_SEP):
            if part in HIDDEN_TEXT.get(model, ()):
                return False
            try:
                field = model._meta.get_field(part)
            except FieldDoesNotExist:
                break
            if field.related_model is None:
                break
            model = field.related_model
        return super().lookup_allowed(lookup, value, request)


@admin.register(Conversation)
class ConversationAdmin(HiddenTextLookupsMixin, admin.ModelAdmin):
    list_display = ("id", "owner", "model", "created_at", "updated_at")
    list_filter = ("model",)
    search_fields = ("=id", "owner__username")
    # Every field is read-only: a conversation is its owner's from its first moment to its
    # deletion. Given to another account (the operator's own, say), every message would be
    # theirs to read on the chat page, the words this admin never shows; switched to a dearer
    # model or a larger max_tokens, every later turn would spend the owner's budget on an
    # operator's choice. The admin looks, stops a running reply, and deletes.
    readonly_fields = [f.name for f in Conversation._meta.fields if f.name not in HIDDEN_TEXT[Conversation]]
    exclude = tuple(HIDDEN_TEXT[Conversation])  # people's words, on this page too
    actions = ["stop_replies"]

    def get_queryset(self, request):
        return super().get_queryset(request).defer(*HIDDEN_TEXT[Conversation])

    # People start their conversations; one made here for them would be a stranger's words (a
    # system prompt) in their list, which nobody may read back afterwards.
    def has_add_permission(self, request):
        return False

    # Deleted through the service a person's own delete uses: it stops a running reply, and the
    # admin history loses the title (an erasure later would no longer find this conversation).
    def delete_model(self, request, obj):
        services.conversation_delete(conversation=obj)

    def delete_queryset(self, request, queryset):
        services.conversations_delete_stopping_replies(conversation_ids=list(queryset.values_list("id", flat=True)))

    # Stopping a reply changes someone's conversation: not for staff who may only look.
    @admin.action(description=_("Stop the running reply"), permissions=["change"])
    def stop_replies(self, request, queryset):
        stopped = sum(1 for c in queryset if turns.turn_stop(conversation_id=c.id))
        self.message_user(request, _("%(n)d replies asked to stop.") % {"n": stopped}, messages.INFO)


@admin.register(Message)
class MessageAdmin(HiddenTextLookupsMixin, admin.ModelAdmin):
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

    # A message goes with its conversation (the person's delete, an erasure, or the conversation's
    # delete here, which asks this admin's delete permission for the messages it takes), never
    # alone: one taken out of the middle would change what the person said, and what the model is
    # told they said. So this admin's own delete page and bulk delete are refused.
    def delete_view(self, request, object_id, extra_context=None):
        raise PermissionDenied

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def change_view(self, request, object_id, form_url="", extra_context=None):
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "show_delete": False})
