"""What people say: conversations and their messages."""

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("owner"), on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(_("title"), max_length=200, blank=True)
    model = models.CharField(_("model"), max_length=120)
    system_prompt = models.TextField(_("system prompt"), blank=True)
    temperature = models.DecimalField(_("temperature"), max_digits=3, decimal_places=2, null=True, blank=True)
    max_tokens = models.PositiveIntegerField(_("max tokens"), null=True, blank=True)
    # Rolling summary of turns trimmed out of the context window, sent as a system note.
    summary = models.TextField(_("summary"), blank=True)
    summary_upto = models.ForeignKey(
        "Message", verbose_name=_("summary covers up to"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), default=timezone.now)

    class Meta:
        verbose_name = _("conversation")
        verbose_name_plural = _("conversations")
        indexes = [models.Index(fields=["owner", "-updated_at"], name="conv_owner_updated")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(temperature__isnull=True) | models.Q(temperature__gte=0, temperature__lte=2),
                name="conversation_temperature_range",
            ),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user", _("user")
        ASSISTANT = "assistant", _("assistant")

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        STREAMING = "streaming", _("streaming")
        DONE = "done", _("done")
        CANCELLED = "cancelled", _("cancelled")
        ERROR = "error", _("error")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(
        Conversation, verbose_name=_("conversation"), on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(_("role"), max_length=16, choices=Role.choices)
    content = models.TextField(_("content"), blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.DONE)
    client_id = models.UUIDField(_("client id"), null=True, blank=True)
    model = models.CharField(_("model"), max_length=120, blank=True)
    # The assistant message answers this user message (regenerate makes a new one for the same).
    reply_to = models.ForeignKey(
        "self", verbose_name=_("reply to"), null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    finish_reason = models.CharField(_("finish reason"), max_length=16, blank=True)
    error_code = models.CharField(_("error code"), max_length=32, blank=True)
    input_tokens = models.PositiveIntegerField(_("input tokens"), default=0)
    output_tokens = models.PositiveIntegerField(_("output tokens"), default=0)
    # USD, 10 decimal places: a single token of a cheap model costs well under a cent.
    cost = models.DecimalField(_("cost"), max_digits=20, decimal_places=10, default=Decimal("0"))
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    # Heartbeat of the process streaming this reply; the reaper marks stale ones `error`.
    heartbeat_at = models.DateTimeField(_("heartbeat at"), null=True, blank=True)
    # A reply's budget hold (billing's Reservation, by id: that table is billing's). With the
    # input counted when the call went out (input_tokens, set then), the reaper can bill a dead
    # process's call and free its hold even when the stream buffer in the cache is gone too.
    reservation_id = models.UUIDField(_("reservation id"), null=True, blank=True, editable=False)

    class Meta:
        verbose_name = _("message")
        verbose_name_plural = _("messages")
        ordering = ["created_at"]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="msg_conv_created"),
            models.Index(fields=["status", "heartbeat_at"], name="msg_status_heartbeat"),
        ]
        constraints = [
            # A resent frame with the same client_id never makes a second message.
            models.UniqueConstraint(fields=["conversation", "client_id"], name="message_client_id_unique"),
            # One running reply per conversation, enforced by the database itself.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=models.Q(status__in=["pending", "streaming"]),
                name="message_one_running_per_conversation",
            ),
            models.CheckConstraint(condition=models.Q(cost__gte=0), name="message_cost_non_negative"),
        ]

    def __str__(self) -> str:
        # Never the text: this shows up in logs and admin lists.
        return f"{self.role} {self.id}"
