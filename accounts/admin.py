"""The admin of people: users (spend, budgets, teams; disable, set a budget, export, erase),
groups (roles), teams with their members, and the read-only audit log.

Who may grant roles or change an account is admin_services' rule (roles_grantable_by,
users_outranking): only a superuser grants staff or superuser status, groups or permissions, or
changes an account that can do more than they can. Likewise only a superuser changes the
constraints on their own spending (admin_services.constraints_locked_for, billing.budgets.
budget_locked_for): their own rate limits and budget, their team memberships, and the limits,
budgets and existence of their teams; to anyone else those are read-only, or refused with the
reason, and the services refuse them again whatever the door.

Actions parse and authorize, then call services: accounts.admin_services (disable, audit of role,
group and membership edits), billing.budgets.budget_set, accounts.data_rights (export, erasure). Each
action also writes an `admin.*` audit row naming the operator and their address."""

from __future__ import annotations

import datetime
import json
from decimal import Decimal

# Imported first so that axes's admins are registered (accounts comes before axes in
# INSTALLED_APPS, and autodiscovery follows that order) before the one below replaces its own.
from axes.admin import AccessAttemptAdmin as AxesAccessAttemptAdmin
from axes.models import AccessAttempt
from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm as DjangoUserChangeForm
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, DecimalField, OuterRef, Prefetch, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.forms.formsets import DELETION_FIELD_NAME
from django.forms.utils import ErrorDict
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from billing.budgets import BudgetError, budget_limit_validate, budget_remaining_now, budget_spent_now
from billing.dashboard import dashboard_today
from billing.models import MONEY, Budget, DailyUsage
from billing.templatetags.billing_money import usd
from chatsite.admin_site import BigTableAdminMixin, OwnChangesOnlyFormMixin

from . import admin_services, data_rights, services
from .models import EMAIL_TAKEN, AuditEvent, Team, TeamMembership, User
from .services import OnlyAdmin

CENT = Decimal("0.01")
ZERO = Decimal("0")


def client_ip(request: HttpRequest) -> str | None:
    """The operator's address as django-axes sees it (honours TRUSTED_PROXY_COUNT)."""
    from axes.helpers import get_client_ip_address

    return get_client_ip_address(request)


def _money(value: Decimal | None) -> str:
    # As the budget and ledger pages show money (billing's usd): a spend under a cent is shown, not "$0.00".
    return "—" if value is None else usd(value)


def _month_start() -> datetime.date:
    # Rollup days are UTC days (billing.ledger), so "this month" is the UTC month, as on the
    # dashboard: timezone.localdate() is the operator's own zone here (accounts' middleware
    # activates it), which near a month's end cut the rollup a day off.
    return dashboard_today().replace(day=1)


def _spend_since(owner_field: str, since: datetime.date) -> Coalesce:
    """This owner's spend from the daily rollup, as one correlated subquery (no query per row)."""
    spend = (
        DailyUsage.objects.filter(**{owner_field: OuterRef("pk")}, day__gte=since)
        .order_by()
        .values(owner_field)
        .annotate(total=Sum("cost"))
        .values("total")
    )
    money = DecimalField(**MONEY)
    return Coalesce(Subquery(spend, output_field=money), Value(ZERO, output_field=money), output_field=money)


def _budget_lines(budgets) -> str:
    """One line per budget: period, spent in the current period of limit, what is left (as the
    usage API's `remaining`: spent and held count)."""
    if not budgets:
        return "—"
    now = timezone.now()
    return format_html_join(
        mark_safe("<br>"),  # noqa: S308 - a constant
        "{}: {} / {} ({})",
        (
            (
                b.get_period_display(),
                _money(spent),
                _money(b.limit),
                _("%(left)s left") % {"left": _money(budget_remaining_now(b, now=now))},
            )
            for b in budgets
            for spent in [budget_spent_now(b, now=now)]
        ),
    )


_BUDGET_FIELDS = ("id", "user_id", "team_id", "period", "limit", "spent", "reserved", "period_start", "time_zone")


# --- Users ----------------------------------------------------------------------------------


class BudgetForm(forms.Form):
    period = forms.ChoiceField(label=gettext_lazy("Period"), choices=Budget.Period.choices)
    limit = forms.DecimalField(
        label=gettext_lazy("Limit (USD)"), min_value=ZERO, max_digits=MONEY["max_digits"], decimal_places=MONEY["decimal_places"]
    )

    def clean_limit(self):
        # The service's own rule (a ceiling among others), checked once before any account is
        # touched: budget_set would refuse it for each of them.
        try:
            return budget_limit_validate(self.cleaned_data["limit"])
        except BudgetError as exc:
            raise ValidationError(str(exc)) from None


def _identity_free(form, field: str):
    # Django's forms check a username with iexact (and the email not at all), which on SQLite
    # folds ASCII letters only; sign-up's rules (services.identity_taken, and for a username
    # services.username_taken_reason, which also refuses a look-alike of another) fold every script.
    # The forms are cleaned inside the admin's save transaction: the username is checked under the
    # look-alike lock, held until the account is saved, as sign-up checks it.
    value = form.cleaned_data.get(field)
    if not value:
        return value
    if field == "username":
        if reason := services.username_taken_reason(username=value, exclude_pk=form.instance.pk, lock=True):
            raise ValidationError(reason)
    elif services.identity_taken(field=field, value=value, exclude_pk=form.instance.pk):
        raise ValidationError(EMAIL_TAKEN)
    return value


class UserAddForm(DjangoUserAdmin.add_form):
    def clean_username(self):
        # In place of Django's (iexact only): the same rule, every script, one message.
        return _identity_free(self, "username")


class UserChangeForm(OwnChangesOnlyFormMixin, DjangoUserChangeForm):
    """Django's form, refusing what the Disable action refuses (admin_services.user_access_check):
    unticking "active" on the operator's own account, and disabling or demoting the last active
    administrator. Runs inside the admin's save transaction, before anything is saved."""

    actor: User | None = None  # the operator, set for each request by UserAdmin.get_form

    def clean_username(self):
        return _identity_free(self, "username")

    def clean_email(self):
        return _identity_free(self, "email")

    def clean_default_model(self):
        value = self.cleaned_data.get("default_model")
        if "default_model" in self.changed_data:  # one it chose: an old one may have lost its price since
            services.default_model_check(model_id=value)
        return value

    def clean(self):
        # Fields this operator did not change keep the row as loaded (OwnChangesOnlyFormMixin):
        # a page opened before a colleague disabled the account (or changed its roles) keeps that.
        cleaned = super().clean()
        user = self.instance  # still as loaded: the form's values are copied onto it after clean()
        is_active = cleaned.get("is_active", user.is_active)
        is_superuser = cleaned.get("is_superuser", user.is_superuser)
        is_staff = cleaned.get("is_staff", user.is_staff)
        try:
            admin_services.user_access_check(
                user=user, actor=self.actor, is_active=is_active, is_superuser=is_superuser, is_staff=is_staff
            )
        except admin_services.CannotDisableSelf:
            self.add_error("is_active", _("You cannot disable your own account."))
        except OnlyAdmin:
            self.add_error(
                "is_active" if not is_active else "is_superuser" if not is_superuser else "is_staff",
                _("This is the only administrator account: make another administrator first."),
            )
        return cleaned


class RateLimitFieldsMixin:
    """The rate limits refuse 0 (a model validator and constraint), but a PositiveIntegerField's
    form field asks only for at least 0: -5 was refused as "greater than or equal to 0", then the
    0 typed next as "... to 1", and the number input offered 0. The form field asks for 1."""

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in ("requests_per_minute", "tokens_per_minute"):
            kwargs.setdefault("min_value", 1)
        return super().formfield_for_dbfield(db_field, request, **kwargs)


@admin.register(User)
class UserAdmin(RateLimitFieldsMixin, BigTableAdminMixin, DjangoUserAdmin):
    list_display = (
        "username", "email", "is_active", "is_staff", "spend_this_month", "budgets_display", "last_active", "teams_display",
    )  # fmt: skip
    list_filter = ("is_active", "is_staff", "is_superuser")
    search_fields = ("username", "email", "display_name")
    ordering = ("username",)
    actions = ("disable_users", "set_budget", "export_data", "erase_users")
    form = UserChangeForm
    add_form = UserAddForm
    readonly_fields = ("last_login", "date_joined", "usage_summary")
    fieldsets = (
        *DjangoUserAdmin.fieldsets,
        (gettext_lazy("Profile"), {"fields": ("display_name", "timezone", "language", "default_model")}),
        (gettext_lazy("Limits"), {"fields": ("requests_per_minute", "tokens_per_minute")}),
        (gettext_lazy("Usage"), {"fields": ("usage_summary",)}),
    )

    def get_readonly_fields(self, request, obj=None):
        # Roles are granted by superusers only (admin_services.roles_grantable_by), and only a
        # superuser changes their own rate limits. For anyone else they are shown but are not
        # fields of the form, so a crafted POST sets nothing.
        locked = admin_services.user_fields_locked_for(actor=request.user, user=obj)
        return (*super().get_readonly_fields(request, obj), *locked)

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        if obj is None:  # the add form: nobody's access is taken away
            return form
        return type(form.__name__, (form,), {"actor": request.user})

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                month_spend=_spend_since("user", _month_start()),
                # The last day with usage: one index probe (daily_user_day) per listed user.
                last_used=Subquery(DailyUsage.objects.filter(user=OuterRef("pk")).order_by("-day").values("day")[:1]),
            )
            .prefetch_related(
                Prefetch("budgets", queryset=Budget.objects.only(*_BUDGET_FIELDS).order_by("period")),
                Prefetch("teams", queryset=Team.objects.only("id", "name")),
            )
        )

    @admin.display(description=gettext_lazy("spend this month"), ordering="month_spend")
    def spend_this_month(self, obj: User) -> str:
        return _money(getattr(obj, "month_spend", None))

    @admin.display(description=gettext_lazy("budgets: spent / limit"))
    def budgets_display(self, obj: User) -> str:
        return _budget_lines(obj.budgets.all())

    @admin.display(description=gettext_lazy("last active"), ordering="last_login")
    def last_active(self, obj: User) -> str:
        """The later of the last login and the last day with usage (a session can last weeks)."""
        days = [d for d in (obj.last_login and timezone.localdate(obj.last_login), getattr(obj, "last_used", None)) if d]
        return max(days).isoformat() if days else "—"

    @admin.display(description=gettext_lazy("teams"))
    def teams_display(self, obj: User) -> str:
        return ", ".join(t.name for t in obj.teams.all()) or "—"

    @admin.display(description=gettext_lazy("usage"))
    def usage_summary(self, obj: User) -> str:
        if obj.pk is None:
            return "—"
        return format_html(
            "{}: {}<br>{}: {}<br>{}: {}",
            _("Spend this month"), _money(getattr(obj, "month_spend", None)),
            _("Budgets"), _budget_lines(obj.budgets.all()),
            _("Teams"), self.teams_display(obj),
        )  # fmt: skip

    # Role changes (staff, superuser, active, groups, permissions) and rate-limit changes are
    # audited. The snapshots are taken before the form is saved; the comparison after the
    # many-to-many fields are.
    def save_model(self, request, obj, form, change):
        stored = User.objects.get(pk=obj.pk) if change else None
        request._parley_roles_before = admin_services.user_roles_snapshot(user=stored) if stored else {}
        request._parley_limits_before = admin_services.limits_snapshot(owner=stored) if stored else {}
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        ip_address = client_ip(request)
        admin_services.user_roles_audit(
            user=form.instance, before=getattr(request, "_parley_roles_before", {}), actor=request.user, ip_address=ip_address
        )
        admin_services.user_limits_audit(
            user=form.instance, before=getattr(request, "_parley_limits_before", {}), actor=request.user, ip_address=ip_address
        )

    def user_change_password(self, request, id, form_url=""):
        response = super().user_change_password(request, id, form_url)
        if request.method == "POST" and response.status_code == 302:  # the form was accepted
            admin_services.user_password_set_by_admin(user_id=int(id), actor=request.user, ip_address=client_ip(request))
        return response

    def has_change_permission(self, request, obj=None):
        # An account that can do more than the operator (admin_services.users_outranking) is
        # read-only to them, its password page included: whoever sets its password or email
        # could sign in as it.
        if not super().has_change_permission(request, obj):
            return False
        return obj is None or not admin_services.users_outranking(actor=request.user, users=[obj])

    def has_delete_permission(self, request, obj=None):
        # Deleting the row would skip erasure's cleanup of files, caches and ledger links:
        # the "erase" action is the only way an account goes.
        return False

    def has_erase_permission(self, request) -> bool:
        return request.user.has_perm("accounts.delete_user")

    def has_budget_permission(self, request) -> bool:
        return request.user.has_perm("billing.add_budget") and request.user.has_perm("billing.change_budget")

    @admin.action(description=gettext_lazy("Disable selected accounts"), permissions=["change"])
    def disable_users(self, request, queryset):
        done = 0
        for user in queryset:
            try:
                done += admin_services.user_disable(user=user, actor=request.user, ip_address=client_ip(request))
            except admin_services.CannotDisableSelf:
                self.message_user(request, _("You cannot disable your own account."), messages.ERROR)
            except admin_services.OutranksOperator:
                self.message_user(
                    request,
                    _(
                        "%(name)s is an administrator or holds permissions you do not: only a superuser can "
                        "disable this account."
                    )
                    % {"name": user.username},
                    messages.ERROR,
                )
            except OnlyAdmin:
                self.message_user(
                    request,
                    _("%(name)s is the only administrator account: make another administrator first.")
                    % {"name": user.username},
                    messages.ERROR,
                )
        if done:
            self.message_user(
                request, ngettext("%(n)d account disabled.", "%(n)d accounts disabled.", done) % {"n": done}, messages.SUCCESS
            )

    @admin.action(description=gettext_lazy("Set a budget for selected accounts"), permissions=["budget"])
    def set_budget(self, request, queryset):
        from billing import budgets

        form = BudgetForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            period, limit = form.cleaned_data["period"], form.cleaned_data["limit"]
            n = 0
            with transaction.atomic():
                for user in queryset:
                    # The service writes the one audit row (budget.set), with the operator's address.
                    # It refuses, before writing anything, the operator's own budget unless they are
                    # a superuser (budgets.budget_locked_for), and the budget of an account that can
                    # do more than the operator (budgets.budget_owner_outranks): skipped, as Disable
                    # skips them.
                    try:
                        budgets.budget_set(
                            user=user, period=period, limit=limit, actor=request.user, ip_address=client_ip(request)
                        )
                    except budgets.BudgetCoversOperator:
                        self.message_user(
                            request, _("You cannot set your own budget: only a superuser can."), messages.ERROR
                        )
                    except admin_services.OutranksOperator:
                        self.message_user(
                            request,
                            _(
                                "%(name)s is an administrator or holds permissions you do not: only a superuser can "
                                "set this account's budget."
                            )
                            % {"name": user.username},
                            messages.ERROR,
                        )
                    else:
                        n += 1
            if n:
                self.message_user(
                    request,
                    ngettext("Budget set for %(n)d account.", "Budget set for %(n)d accounts.", n) % {"n": n},
                    messages.SUCCESS,
                )
            return None
        return self._intermediate(
            request, queryset, "admin/parley/set_budget.html", _("Set a budget"), "set_budget", form=form
        )

    @admin.action(description=gettext_lazy("Export the data of selected accounts"), permissions=["change"])
    def export_data(self, request, queryset):
        n = 0
        for user in queryset:
            # The service writes the one audit row (user.export), naming the operator. It refuses
            # an account whose erasure has begun (still listed until its worker finishes): that
            # one is skipped with the reason, as Disable skips those it may not change.
            try:
                data_rights.export_request(user=user, requested_by=request.user, ip_address=client_ip(request))
            except data_rights.DataRightsError as refused:
                self.message_user(
                    request, _("%(name)s: %(reason)s") % {"name": user.username, "reason": refused.message}, messages.ERROR
                )
            else:
                n += 1
        if n:
            self.message_user(
                request,
                ngettext(
                    "Export started for %(n)d account; it is delivered to the account holder.",
                    "Exports started for %(n)d accounts; each is delivered to its account holder.",
                    n,
                )
                % {"n": n},
                messages.SUCCESS,
            )

    @admin.action(description=gettext_lazy("Erase selected accounts…"), permissions=["erase"])
    def erase_users(self, request, queryset):
        users = list(queryset)
        if any(u.pk == request.user.pk for u in users):
            self.message_user(request, _("You cannot erase your own account from here."), messages.ERROR)
            return None
        try:
            if request.POST.get("confirm") != "yes":
                previews = admin_services.users_erase_preview(users=users, actor=request.user)
                return self._intermediate(
                    request, queryset, "admin/parley/erase_confirm.html", _("Erase accounts"), "erase_users",
                    previews=previews,
                )  # fmt: skip
            # All or none; the service writes the audit rows (user.erase, by id only), naming the operator.
            admin_services.users_erase(users=users, actor=request.user, ip_address=client_ip(request))
        except admin_services.OutranksOperator as refused:
            self.message_user(
                request,
                ngettext(
                    "%(names)s is an administrator or holds permissions you do not: only a superuser can erase "
                    "this account. Nothing was erased.",
                    "%(names)s are administrators or hold permissions you do not: only a superuser can erase "
                    "these accounts. Nothing was erased.",
                    len(refused.users),
                )
                % {"names": ", ".join(u.username for u in refused.users)},
                messages.ERROR,
            )
            return None
        except OnlyAdmin as refused:
            self.message_user(
                request,
                ngettext(
                    "%(names)s is the only administrator account: make another administrator first. Nothing was erased.",
                    "%(names)s are the only administrator accounts: make another administrator first. Nothing was erased.",
                    len(refused.users),
                )
                % {"names": ", ".join(u.username for u in refused.users)},
                messages.ERROR,
            )
            return None
        except data_rights.DataRightsError as refused:  # the service's own refusal, nothing done either
            self.message_user(request, refused.message, messages.ERROR)
            return None
        self.message_user(
            request,
            ngettext("Erasure started for %(n)d account.", "Erasure started for %(n)d accounts.", len(users))
            % {"n": len(users)},
            messages.SUCCESS,
        )
        return None

    def _intermediate(self, request, queryset, template: str, title: str, action: str, **extra):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "queryset": queryset,
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "media": self.media,
            **extra,
        }
        return TemplateResponse(request, template, context)


# --- Groups (their permissions are roles) -----------------------------------------------


admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    """Groups are roles: only a superuser adds, changes or deletes one (admin_services.
    roles_grantable_by). Anyone else holding change_group could grant their own group, and so
    themselves, any permission; to them the groups are read-only."""

    def has_add_permission(self, request):
        return super().has_add_permission(request) and admin_services.roles_grantable_by(actor=request.user)

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and admin_services.roles_grantable_by(actor=request.user)

    def has_delete_permission(self, request, obj=None):
        return super().has_delete_permission(request, obj) and admin_services.roles_grantable_by(actor=request.user)

    def save_related(self, request, form, formsets, change):
        group = form.instance
        before = set(group.permissions.values_list("pk", flat=True)) if change else set()
        super().save_related(request, form, formsets, change)
        admin_services.group_permissions_audit(
            group=group, before=before, actor=request.user, ip_address=client_ip(request)
        )


# --- Teams ----------------------------------------------------------------------------------


class TeamMembershipForm(forms.ModelForm):
    """A member's row. The page carries the account it showed (a hidden "initial-" input), so a
    row whose membership was removed elsewhere since tells whether this operator changed it."""

    gone = False  # set by TeamMembershipFormSet: the row's membership no longer exists

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["user"].show_hidden_initial = True

    def full_clean(self):
        if self.gone:
            # Nothing of it can be saved (Django's formset skips a row without an instance), so
            # nothing of it is checked: Django would refuse it on its hidden id, in no visible place.
            self._errors, self.cleaned_data = ErrorDict(), {}
            return
        super().full_clean()

    def user_shown(self) -> int | None:
        """The account this row showed when the page was opened (as posted, for a POST without
        the page's hidden inputs)."""
        shown = self.add_initial_prefix("user")
        raw = self.data.get(shown if shown in self.data else self.add_prefix("user"))
        return int(raw) if raw and str(raw).isdigit() else None

    def user_changed(self) -> bool:
        """Whether the operator put another account on this row."""
        return str(self.user_shown() or "") != str(self["user"].data or "")

    def removal_ticked(self) -> bool:
        return DELETION_FIELD_NAME in self.fields and bool(self[DELETION_FIELD_NAME].data)


class TeamMembershipFormSet(forms.BaseInlineFormSet):
    """Refuses, with the reason, the memberships added or removed (a new row, a deleted row, or a
    row switched from one account to another) that the operator may not change
    (admin_services.team_membership_check): their own, when they may not change the constraints
    on their own spending, and those of accounts that can do more than they can.
    admin_services.team_members_audit refuses them again after the save.

    A row whose membership is gone (removed by a colleague, or in another tab, since the page was
    opened) is left out of the save: the removal stands, as OwnChangesOnlyFormMixin keeps a
    colleague's change of the team's own fields, and `gone_user_ids` names whom the page still
    listed, for the admin to say so. A gone row given to another account on the page is refused
    with the reason: that change has no row left to be saved on."""

    actor: User | None = None  # the operator, set for each request by TeamMembershipInline.get_formset

    def _construct_form(self, i, **kwargs):
        form = super()._construct_form(i, **kwargs)
        # An existing row's instance is looked up by its posted id among the team's memberships:
        # none found, it is gone.
        form.gone = self.is_bound and i < self.initial_form_count() and form.instance.pk is None
        return form

    @property
    def gone_user_ids(self) -> list[int]:
        """The accounts on the gone rows that the page left as they were."""
        return [
            form.user_shown()
            for form in self.forms
            if form.gone and not form.removal_ticked() and not form.user_changed() and form.user_shown()
        ]

    def clean(self):
        super().clean()
        for form in self.forms:
            if form.gone and not form.removal_ticked() and form.user_changed():
                shown = form.user_shown()
                name = User.objects.filter(pk=shown).values_list("username", flat=True).first()
                name = name or _("#%(id)s (erased)") % {"id": shown}
                raise ValidationError(
                    _(
                        "%(name)s was removed from this team by someone else after this page was opened, so "
                        "their row cannot be changed to another account: add that account on a new row."
                    )
                    % {"name": name}
                )
        if admin_services.roles_grantable_by(actor=self.actor):  # a superuser: bound by neither rule
            return
        changed: set[int] = set()
        for form in self.forms:
            if form.gone:
                continue  # nothing of it is saved
            deleted = self.can_delete and self._should_delete_form(form)
            if form.errors and not deleted:
                continue  # its own error is shown; nothing of it is saved
            was = form.initial.get("user") if form.instance.pk is not None else None
            user = None if deleted else form.cleaned_data.get("user")
            now = user.pk if user is not None else None
            if was != now:
                changed.update(pk for pk in (was, now) if pk is not None)
        try:
            admin_services.team_membership_check(actor=self.actor, user_ids=changed)
        except admin_services.ConstrainsOperator:
            raise ValidationError(
                _("You cannot add yourself to a team or remove yourself from one: only a superuser can.")
            ) from None
        except admin_services.OutranksOperator as refused:
            raise ValidationError(
                ngettext(
                    "%(names)s is an administrator or holds permissions you do not: only a superuser can add "
                    "this account to a team or remove it from one.",
                    "%(names)s are administrators or hold permissions you do not: only a superuser can add "
                    "these accounts to a team or remove them from one.",
                    len(refused.users),
                )
                % {"names": ", ".join(u.username for u in refused.users)}
            ) from None


class TeamMembershipInline(admin.TabularInline):
    model = TeamMembership
    form = TeamMembershipForm
    formset = TeamMembershipFormSet
    extra = 1
    raw_id_fields = ("user",)  # a select of every user would not load on a big site
    fields = ("user", "joined_at")
    readonly_fields = ("joined_at",)

    def get_formset(self, request, obj=None, **kwargs):
        formset = super().get_formset(request, obj, **kwargs)
        return type(formset.__name__, (formset,), {"actor": request.user})


class TeamForm(OwnChangesOnlyFormMixin, forms.ModelForm):
    """Saving a team applies only what its operator changed on the page: a page opened before a
    colleague tightened the team's limits (or renamed it) keeps their change."""

    class Meta:
        model = Team
        fields = ["name", "requests_per_minute", "tokens_per_minute", "created_at"]


@admin.register(Team)
class TeamAdmin(RateLimitFieldsMixin, admin.ModelAdmin):
    form = TeamForm
    list_display = ("name", "member_count", "spend_this_month", "budgets_display", "created_at")
    search_fields = ("name",)
    inlines = (TeamMembershipInline,)
    show_full_result_count = False

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_members=Subquery(
                    TeamMembership.objects.filter(team=OuterRef("pk")).order_by().values("team").annotate(n=Count("pk")).values("n")
                ),
                month_spend=_spend_since("team", _month_start()),
            )
            .prefetch_related(Prefetch("budgets", queryset=Budget.objects.only(*_BUDGET_FIELDS).order_by("period")))
        )

    @admin.display(description=gettext_lazy("members"), ordering="n_members")
    def member_count(self, obj: Team) -> int:
        return getattr(obj, "n_members", None) or 0

    @admin.display(description=gettext_lazy("spend this month"), ordering="month_spend")
    def spend_this_month(self, obj: Team) -> str:
        return _money(getattr(obj, "month_spend", None))

    @admin.display(description=gettext_lazy("budgets: spent / limit"))
    def budgets_display(self, obj: Team) -> str:
        return _budget_lines(obj.budgets.all())

    # The limits of a team the operator belongs to are a superuser's to change (admin_services.
    # team_fields_locked_for): shown, but not fields of the form, so a crafted POST sets nothing.
    def get_readonly_fields(self, request, obj=None):
        return (*super().get_readonly_fields(request, obj), *admin_services.team_fields_locked_for(actor=request.user, team=obj))

    # Nor may they delete it, which would lift its limits and budgets: services.team_delete refuses
    # it, and "delete selected" asks this of each team, refusing the whole selection.
    def has_delete_permission(self, request, obj=None):
        if not super().has_delete_permission(request, obj):
            return False
        return obj is None or not admin_services.constraints_locked_for(actor=request.user, team=obj)

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Django's page names the permission lacking; this says why, when it is one of these.
        if perms_needed and any(admin_services.constraints_locked_for(actor=request.user, team=t) for t in objs):
            self.message_user(
                request, _("You cannot delete a team you belong to: only a superuser can."), messages.ERROR
            )
        return deleted, model_count, perms_needed, protected

    # Every way the admin deletes a team goes through the service (audited, budgets included).
    def delete_model(self, request, obj: Team) -> None:
        services.team_delete(team=obj, actor=request.user, ip_address=client_ip(request))

    def delete_queryset(self, request, queryset) -> None:
        # All or none: a refusal midway (ConstrainsOperator) undoes the deletions before it.
        with transaction.atomic():
            for team in queryset:
                services.team_delete(team=team, actor=request.user, ip_address=client_ip(request))

    # Membership and limit changes are audited; the snapshots are taken before the form is saved.
    def save_model(self, request, obj, form, change):
        request._parley_limits_before = admin_services.limits_snapshot(owner=Team.objects.get(pk=obj.pk)) if change else {}
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        team = form.instance
        before = list(team.teammembership_set.values_list("user_id", flat=True)) if change else []
        super().save_related(request, form, formsets, change)
        ip_address = client_ip(request)
        # Memberships first: the limits' check asks whether the operator is a member.
        admin_services.team_members_audit(team=team, before=before, actor=request.user, ip_address=ip_address)
        admin_services.team_limits_audit(
            team=team, before=getattr(request, "_parley_limits_before", {}), actor=request.user, ip_address=ip_address
        )
        self._say_members_gone(request, team, formsets)

    def _say_members_gone(self, request, team: Team, formsets) -> None:
        """Name the members the page still listed whom someone else removed meanwhile (the save
        left them out, TeamMembershipFormSet), unless they are members again since."""
        shown = {pk for formset in formsets for pk in getattr(formset, "gone_user_ids", ())}
        names = list(
            User.objects.filter(pk__in=shown).exclude(teams=team).order_by("username").values_list("username", flat=True)
        )
        if names:
            self.message_user(
                request,
                _(
                    "%(names)s had already been removed from this team by someone else after this page was "
                    "opened; the rest of your changes were saved."
                )
                % {"names": ", ".join(names)},
                messages.WARNING,
            )


# --- Audit log ------------------------------------------------------------------------------


@admin.register(AuditEvent)
class AuditEventAdmin(BigTableAdminMixin, admin.ModelAdmin):
    """Read-only for everyone, superusers included: the log is append-only."""

    list_display = ("created_at", "action", "actor_display", "target_type", "target_id", "ip_address")
    list_filter = ("action", "target_type", "created_at")
    date_hierarchy = None  # a date drill-down would run DISTINCT over the whole table
    search_fields = ("action",)  # see get_search_results: exact matches on indexed columns only
    fields = ("created_at", "action", "actor_display", "target_type", "target_id", "ip_address", "data_display")
    readonly_fields = fields
    ordering = ("-created_at",)

    def get_queryset(self, request):
        # The actor's name in the same query; an erased actor stays as a bare id.
        username = User.objects.filter(pk=OuterRef("actor_id")).values("username")[:1]
        # `data` is only shown on the detail page (one more query there): not loaded for lists.
        return super().get_queryset(request).annotate(actor_username=Subquery(username)).defer("data")

    def get_search_results(self, request, queryset, search_term):
        """A term is an actor id, a target id or an action, matched exactly (indexed columns)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(target_id=term) | Q(action=term)
        if term.isdigit() and len(term) < 19:
            match |= Q(actor_id=int(term))
        return queryset.filter(match), False

    @admin.display(description=gettext_lazy("actor"), ordering="actor_id")
    def actor_display(self, obj: AuditEvent) -> str:
        if obj.actor_id is None:
            return _("system")
        name = getattr(obj, "actor_username", None)
        return f"{name} (#{obj.actor_id})" if name else _("#%(id)s (erased)") % {"id": obj.actor_id}

    @admin.display(description=gettext_lazy("data"))
    def data_display(self, obj: AuditEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.data, indent=2, sort_keys=True, ensure_ascii=False))

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- django-axes's login records ----------------------------------------------------------


if admin.site.is_registered(AccessAttempt):
    admin.site.unregister(AccessAttempt)

    @admin.register(AccessAttempt)
    class AccessAttemptAdmin(AxesAccessAttemptAdmin):
        """django-axes's own, with its status column named in words our catalogue translates."""

        @admin.display(description=gettext_lazy("status"))
        def status(self, obj: AccessAttempt) -> str:
            return super().status(obj)
