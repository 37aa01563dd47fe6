"""Admin actions for the data rights, for the User admin (accounts/admin.py, owned by the admin
work) to list: `actions = [*DATA_RIGHTS_ADMIN_ACTIONS]`. They call the same services as the
"Your data" page; erasing asks for confirmation on a page listing what will go."""

from __future__ import annotations

from django.contrib import admin, messages
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from . import data_rights


@admin.action(description=gettext_lazy("Export the data of the selected users"), permissions=["change"])
def export_selected_users(modeladmin, request, queryset):
    started = 0
    for user in queryset.order_by("pk"):
        try:
            data_rights.export_request(user=user, requested_by=request.user)
        except data_rights.DataRightsError as exc:
            modeladmin.message_user(request, f"{user.get_username()}: {exc.message}", messages.WARNING)
        else:
            started += 1
    modeladmin.message_user(
        request,
        ngettext(
            "Export started for %(n)d user: they download it from their Your data page.",
            "Exports started for %(n)d users: each downloads theirs from their Your data page.",
            started,
        )
        % {"n": started},
        messages.SUCCESS,
    )


@admin.action(description=gettext_lazy("Erase the selected users and all their data"), permissions=["delete"])
def erase_selected_users(modeladmin, request, queryset):
    users = list(queryset.order_by("pk"))
    if any(user.pk == request.user.pk for user in users):
        modeladmin.message_user(
            request, _("You cannot erase your own account here: use your Your data page."), messages.ERROR
        )
        return None
    if request.POST.get("post") != "yes":
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": _("Erase users"),
            "previews": [(user, data_rights.erasure_preview(user=user)) for user in users],
            "action_name": "erase_selected_users",
            "opts": modeladmin.model._meta,
        }
        return TemplateResponse(request, "accounts/data/admin_erase_confirm.html", context)
    started = 0
    for user in users:
        try:
            data_rights.erasure_request(user=user, requested_by=request.user)
        except data_rights.DataRightsError as exc:
            modeladmin.message_user(request, f"{user.get_username()}: {exc.message}", messages.ERROR)
        else:
            started += 1
    modeladmin.message_user(
        request,
        ngettext("Erasure started for %(n)d user.", "Erasure started for %(n)d users.", started) % {"n": started},
        messages.SUCCESS,
    )
    return None


DATA_RIGHTS_ADMIN_ACTIONS = [export_selected_users, erase_selected_users]
