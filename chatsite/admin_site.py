"""Parley's AdminSite: Django's admin plus the cost dashboard (an admin_view, so non-staff get
the login page and the site's permission checks apply), and a paginator that never counts a
whole big table."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _


class CappedCountPaginator(Paginator):
    """Counts at most CAP rows: `SELECT COUNT(*) FROM (… LIMIT CAP+1)` costs the same on a
    million rows as on a thousand. Past the cap the admin shows "CAP+" pages' worth, which is all
    anyone pages through; search and filters narrow the rest."""

    CAP = 10_000

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if hasattr(qs, "values"):
            return qs.order_by().values("pk")[: self.CAP + 1].count()
        return len(qs)


class BigTableAdminMixin:
    """For list pages of tables that grow without bound."""

    paginator = CappedCountPaginator
    show_full_result_count = False  # no second, unfiltered COUNT(*)


class OwnChangesOnlyFormMixin:
    """For the change form of a row that two operators may have open at once (a user, a team, a
    budget, a provider key). The page carries the values it was shown with (hidden "initial-" inputs), so
    changed_data is what this operator changed since opening it, and clean() keeps every other
    field as the row is now: otherwise a page opened before a colleague disabled an account,
    tightened a team's limits or raised a budget would undo that on any save.

    Only for a POST from the page: a bare POST has no record of what was shown, and an unticked
    box would look unchanged. The add form (no row yet) is left as it is: told by the instance's
    state, as a model whose key has a default (a UUID) has a pk before it is saved."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance._state.adding:
            return
        for field in self.fields.values():
            # A write-only field (a secret) shows no value to protect, and must never be echoed
            # back into the page, not even in a hidden input.
            if not field.disabled and not isinstance(field.widget, forms.PasswordInput):
                field.show_hidden_initial = True

    def clean(self):
        cleaned = super().clean()
        if cleaned is None or self.instance._state.adding:
            return cleaned
        shown = [name for name, field in self.fields.items() if field.show_hidden_initial]
        if shown and self.add_initial_prefix(shown[0]) in self.data:
            # self.initial is the row as loaded for this save, not as the page showed it.
            for name in shown:
                if name in cleaned and name in self.initial and name not in self.changed_data:
                    cleaned[name] = self.initial[name]
        return cleaned


class RefusedAtSaveAdminMixin:
    """For an admin whose save_model calls a service that may still refuse, at the moment it
    writes, what the form accepted: a colleague's save of the same row raced this one (a unique
    moment taken between the service's check and its insert). Such a refusal is one of
    `save_refusals`, raised by save_model; it leaves changeform_view's transaction, which undoes
    the whole save (the service's rows, its audit entry, the admin's history line), and the page
    is shown again with the refusal as the form's error, as for any refused input, not a 500."""

    save_refusals: tuple[type[Exception], ...] = ()

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except self.save_refusals as refused:
            if request.method != "POST" or hasattr(request, "_refused_at_save"):
                raise
            # The same POST again, in a new transaction: the form is bound and checked as before,
            # and this time refused with the service's reason, so nothing is saved.
            request._refused_at_save = str(refused)
            response = super().changeform_view(request, object_id, form_url, extra_context)
            if not getattr(request, "_refused_at_save_shown", False):
                # No form this time (the row is gone: Django redirects, saying so): the reason
                # is said as a message instead.
                self.message_user(request, request._refused_at_save, messages.ERROR)
            return response

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        reason = getattr(request, "_refused_at_save", None)
        if reason is None:
            return form

        def full_clean(self):
            form.full_clean(self)
            if self.is_bound:
                self.add_error(None, reason)
                request._refused_at_save_shown = True

        return type(form.__name__, (form,), {"full_clean": full_clean})


class ParleyAdminSite(admin.AdminSite):
    site_header = _("Parley administration")
    site_title = _("Parley admin")
    index_title = _("Administration")
    index_template = "admin/parley/index.html"

    def get_urls(self):
        from billing.dashboard_views import dashboard_view  # the billing app's models load first

        def dashboard(request):
            return dashboard_view(request, site=self)

        return [path("dashboard/", self.admin_view(dashboard), name="dashboard"), *super().get_urls()]

    def password_change(self, request, extra_context=None):
        """Django's page, with accounts' form: the new password is saved by
        accounts.services.user_password_change (the account's other chat sockets close at once)
        and the current one is checked through django-axes, as everywhere else."""
        from accounts.views import AdminPasswordChangeView  # the accounts app loads first

        defaults = {
            "success_url": reverse("admin:password_change_done", current_app=self.name),
            "extra_context": {**self.each_context(request), **(extra_context or {})},
        }
        if self.password_change_template is not None:
            defaults["template_name"] = self.password_change_template
        request.current_app = self.name
        return AdminPasswordChangeView.as_view(**defaults)(request)

    def each_context(self, request):
        context = super().each_context(request)
        context["can_view_dashboard"] = request.user.is_active and request.user.has_perm("billing.view_dashboard")
        return context
