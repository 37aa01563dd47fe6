"""The audit log's one writer. Every admin and security event goes through `audit_record`.

Records hold ids only: never a secret, a password or message text (callers pass ids and small
facts such as a key's name or a budget's limit)."""

from __future__ import annotations

from typing import Any

from django.db import models

from .models import AuditEvent


def audit_record(
    *,
    action: str,
    actor=None,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str = "",
    ip_address: str | None = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event. `actor` is a user (or None for the system); `target` a model
    instance, or give `target_type`/`target_id` for something already gone."""
    if target is not None:
        target_type = target_type or target._meta.label_lower
        target_id = target_id or str(target.pk)
    return AuditEvent.objects.create(
        action=action,
        actor_id=getattr(actor, "pk", None),
        target_type=target_type,
        target_id=str(target_id),
        ip_address=ip_address,
        data=data or {},
    )
