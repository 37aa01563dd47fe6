"""Read-only admin lists of the ledger and its daily rollup: the rows behind each dashboard figure.

Registered from chatsite.apps (after autodiscovery) only if billing/admin.py has not registered
these models itself, so either can own them without an AlreadyRegistered error at start-up."""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from chatsite.admin_site import BigTableAdminMixin

from .models import DailyUsage, UsageRecord
from .templatetags.billing_money import usd


class ReadOnlyAdmin(BigTableAdminMixin, admin.ModelAdmin):
    """Accounting rows are append-only: nobody edits or deletes them from the admin."""

    # The dashboard links here with these filters; they are not in list_filter (a related-object
    # filter would list every user), so they are allowed explicitly.
    DASHBOARD_LOOKUPS = {
        "user__id__exact", "user__isnull", "team__id__exact", "key__id__exact",
        "provider__exact", "model__exact", "outcome__exact", "day__gte", "day__lte",
    }  # fmt: skip

    def lookup_allowed(self, lookup, value, request=None):
        return lookup in self.DASHBOARD_LOOKUPS or super().lookup_allowed(lookup, value, request)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    # The ids, not the objects: no join per row.
    @admin.display(description=_("user id"), ordering="user_id")
    def user_ref(self, obj):
        return obj.user_id

    @admin.display(description=_("team id"), ordering="team_id")
    def team_ref(self, obj):
        return obj.team_id

    @admin.display(description=_("cost"), ordering="cost")
    def cost_usd(self, obj):
        return usd(obj.cost)


class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "user_ref", "team_ref", "provider", "model", "input_tokens", "output_tokens",
                    "cost_usd", "outcome", "latency_ms")
    list_filter = ("created_at", "outcome", "provider")
    list_select_related = False  # ids only: no join per row
    ordering = ("-created_at", "-id")


class DailyUsageAdmin(ReadOnlyAdmin):
    list_display = ("day", "user_ref", "team_ref", "provider", "model", "requests", "errors", "cost_usd")
    list_filter = ("day", "provider")
    ordering = ("-day", "-id")


def register_usage_admins(site: admin.AdminSite | None = None) -> None:
    site = site or admin.site
    for model, model_admin in ((UsageRecord, UsageRecordAdmin), (DailyUsage, DailyUsageAdmin)):
        if not site.is_registered(model):
            site.register(model, model_admin)

