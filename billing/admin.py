"""Admin for prices and budgets. Saving goes through the same services as set_price and
set_budget, so the rules and the audit entry are the same whichever door is used.
(ProviderKey's admin is billing/admin_keys.py, owned by the keys work.)

A budget covering the operator (their own, or their team's) is a superuser's to change
(budgets.budget_locked_for), and so is the budget of an account that can do more than the
operator (budgets.budget_owner_outranks): to anyone else its page is view-only and cannot be
deleted, and the add form refuses it with the reason; budget_set and budget_delete refuse it
again whatever the door."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.admin_services import OutranksOperator
from chatsite.admin_site import OwnChangesOnlyFormMixin, RefusedAtSaveAdminMixin

from . import admin_keys  # noqa: F401 - registers the ProviderKey admin
from .budgets import (
    BudgetCoversOperator,
    BudgetError,
    budget_change_check,
    budget_delete,
    budget_locked_for,
    budget_owner_outranks,
    budget_remaining_now,
    budget_set,
    budget_spent_now,
    budget_validate,
    budgets_with_spent_now,
    period_bounds,
)
from .models import Budget, ModelPrice
from .money import decimal_str
from .prices import MAX_CONTEXT_WINDOW, PRICE_PLACES, PriceError, price_for, price_set, price_unschedule, price_validate
from .templatetags.billing_money import usd

OUTRANKS_YOU = _(
    "This account is an administrator or holds permissions you do not: only a superuser can set, change or "
    "remove its budget."
)


class RefusedOnceFormMixin:
    """For a model form whose clean() asks the service's own validation. Once that (or a field)
    has refused the input, the model's constraint checks, which Django runs after clean(), are
    skipped: they refused the same input again, in Django's words ("Constraint
    “budget_exactly_one_owner” is violated."), under the service's sentence."""

    def _post_clean(self):
        if self._errors:  # the form is refused already: nothing of it is saved
            return
        super()._post_clean()


class AmountField(forms.DecimalField):
    """A decimal shown on the page as a person writes it (billing.money.decimal_str), not padded
    to the column's places ("3.0000000000") nor in exponent form ("1.23E-8"): an amount of
    money keeps two decimals ("3.00"). What the operator typed is shown back as typed."""

    min_places = 2

    def prepare_value(self, value):
        if isinstance(value, Decimal) and value.is_finite():
            return decimal_str(value, min_places=self.min_places)
        return value


class RatioField(AmountField):
    min_places = 0  # "0.8", not "0.800"


class PriceField(AmountField):
    """A price as set_price takes it: zeros past the stored places ("1.50000000") are dropped,
    not counted as decimal places; a digit past them is still refused, never rounded."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None or not value.is_finite():
            return value
        try:
            exact = value.quantize(PRICE_PLACES)
        except InvalidOperation:  # too large to hold 6 places: the field's max_digits says so
            return value
        return exact if exact == value else value


class ModelPriceForm(RefusedOnceFormMixin, forms.ModelForm):
    class Meta:
        model = ModelPrice
        field_classes = {
            "input_per_million": PriceField,
            "output_per_million": PriceField,
            "cached_input_per_million": PriceField,
        }
        fields = [
            "provider",
            "model",
            "label",
            "input_per_million",
            "output_per_million",
            "cached_input_per_million",
            "context_window",
            "max_output_tokens",
            "enabled",
            "effective_from",
        ]
        help_texts = {
            "effective_from": _("Saving never rewrites a price: it adds a new one in force from this moment "
                                "(or from now, if this moment has passed). Earlier calls keep their price. "
                                "A price scheduled for a future moment and not in force yet is changed, "
                                "moved or deleted instead: no call has used it yet."),
        }

    def clean(self):
        data = super().clean()
        if self.errors.keys() & {*self.Meta.field_classes, "context_window", "max_output_tokens"}:
            # That field's own error says what is wrong; the service would add a misleading
            # "price is required" for the value the field refused.
            return data
        # On a change the model is read-only, so it comes from the row, not the form.
        provider = data.get("provider", self.instance.provider if self.instance.pk else None)
        model = data.get("model", self.instance.model if self.instance.pk else None)
        try:
            price_validate(
                model_id=f"{provider}:{model}",
                input_per_million=data.get("input_per_million"),
                output_per_million=data.get("output_per_million"),
                cached_input_per_million=data.get("cached_input_per_million"),
                context_window=data.get("context_window"),
                max_output_tokens=data.get("max_output_tokens"),
                label=data.get("label"),
                enabled=data.get("enabled", True),
            )
        except PriceError as exc:
            raise ValidationError({exc.field: str(exc)} if exc.field in self.fields else str(exc)) from None
        return data

    def validate_unique(self):
        # A save makes a new row at max(now, effective_from); the service checks uniqueness.
        pass

    def _get_validation_exclusions(self):
        # Nor is the moment checked against the model's unique (provider, model, effective_from):
        # a moment that has passed is never written (the price starts now), and one still to
        # come replaces the price scheduled for it (price_set). Either way the constraint would
        # refuse, as "already exists", a row the save never makes.
        return {*super()._get_validation_exclusions(), "effective_from"}


@admin.register(ModelPrice)
class ModelPriceAdmin(RefusedAtSaveAdminMixin, admin.ModelAdmin):
    form = ModelPriceForm
    # price_set refuses a save that a colleague's concurrent save overtook (it took the moment
    # first, or moved the price being edited): the form passed before theirs committed. The page
    # says so in the form, and keeps nothing.
    save_refusals = (PriceError,)
    list_display = [
        "model_id_display",
        "label",
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "context_window",
        "enabled",
        "effective_from",
        "in_force",
    ]
    list_filter = ["provider", "enabled"]
    search_fields = ["model", "label"]
    ordering = ["provider", "model", "-effective_from"]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        # A PositiveIntegerField's form field asks only for at least 0: -1 was refused as "greater
        # than or equal to 0", then the 0 typed next by the service ("between 1 and ..."). The
        # field asks for what the service takes (and the number input offers only that).
        if db_field.name in ("context_window", "max_output_tokens"):
            kwargs.setdefault("min_value", 1)
            kwargs.setdefault("max_value", MAX_CONTEXT_WINDOW)
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description=_("model"), ordering="model")
    def model_id_display(self, obj: ModelPrice) -> str:
        return obj.model_id

    @admin.display(description=_("in force"), boolean=True)
    def in_force(self, obj: ModelPrice) -> bool:
        if obj.effective_from > timezone.now():
            return False
        newest = (
            ModelPrice.objects.filter(provider=obj.provider, model=obj.model, effective_from__lte=timezone.now())
            .order_by("-effective_from", "-pk")
            .values_list("pk", flat=True)
            .first()
        )
        return newest == obj.pk and price_for(model_id=obj.model_id) is not None

    def changelist_view(self, request, extra_context=None):
        # The form refuses to disable DEFAULT_MODEL's price, but the setting may name a model
        # never priced (it is read from the environment at start): said here on every visit,
        # not only in the log at the next start.
        if request.method == "GET" and price_for(model_id=settings.DEFAULT_MODEL) is None:
            text = gettext(
                "DEFAULT_MODEL %(model)s has no price in force (or its price is disabled): every new conversation "
                "starts on it, and each of its messages is refused. Give it a price, or set DEFAULT_MODEL to a model "
                "that has one and restart the site."
            )
            self.message_user(request, text % {"model": settings.DEFAULT_MODEL}, messages.WARNING)
        return super().changelist_view(request, extra_context)

    def get_readonly_fields(self, request, obj=None):
        # A price row belongs to its model: saving one under another model's name would copy it.
        if obj is not None:
            return ["provider", "model"]
        return []

    def has_delete_permission(self, request, obj=None) -> bool:
        # Prices in force are history: the ledger's past costs were computed from them (disable
        # instead). A price scheduled for later is not yet, and can be cancelled, one at a time.
        if obj is None or obj.effective_from <= timezone.now():
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj: ModelPrice) -> None:
        try:
            price_unschedule(price_id=obj.pk, actor=request.user)
        except PriceError as exc:  # it came into force while the page was open
            raise PermissionDenied(str(exc)) from None

    def save_model(self, request, obj: ModelPrice, form, change: bool) -> None:
        row = price_set(
            model_id=obj.model_id,
            input_per_million=obj.input_per_million,
            output_per_million=obj.output_per_million,
            cached_input_per_million=obj.cached_input_per_million,
            context_window=obj.context_window,
            max_output_tokens=obj.max_output_tokens,
            label=obj.label,
            enabled=obj.enabled,
            effective_from=obj.effective_from,
            moving_id=obj.pk if change else None,
            actor=request.user,
        )
        # The admin's log entry and redirect then point at the new version.
        obj.pk, obj.effective_from, obj.created_at = row.pk, row.effective_from, row.created_at
        if row.replaced_scheduled_price:
            # Said, since the page adds or moves a price and the operator may not know that
            # another was scheduled for that moment.
            self.message_user(
                request,
                gettext("The new price replaces the price scheduled for that moment, which no call had used yet."),
                messages.INFO,
            )


class BudgetForm(RefusedOnceFormMixin, OwnChangesOnlyFormMixin, forms.ModelForm):
    """On a change, only what its operator changed on the page is applied (OwnChangesOnlyFormMixin):
    a page opened before a colleague raised the limit keeps the new limit."""

    actor = None  # the operator, set for each request by BudgetAdmin.get_form

    class Meta:
        model = Budget
        fields = ["user", "team", "period", "limit", "warn_ratio"]
        field_classes = {"limit": AmountField, "warn_ratio": RatioField}

    def clean(self):
        data = super().clean()
        user = data.get("user", getattr(self.instance, "user", None) if self.instance.pk else None)
        team = data.get("team", getattr(self.instance, "team", None) if self.instance.pk else None)
        if (user is None) != (team is None):  # else budget_validate says a budget has one owner
            try:
                budget_change_check(actor=self.actor, user=user, team=team)
            except BudgetCoversOperator as exc:
                raise ValidationError(exc.message) from None
            except OutranksOperator:
                raise ValidationError(OUTRANKS_YOU) from None
        if self.errors.keys() & {"period", "limit", "warn_ratio"}:
            # That field's own error says what is wrong; the service would say it again, for the
            # value the field refused ("The limit must be a number" beside "Enter a number.").
            return data
        try:
            budget_validate(
                user=user,
                team=team,
                period=data.get("period", self.instance.period),
                limit=data.get("limit"),
                warn_ratio=data.get("warn_ratio"),
            )
        except BudgetError as exc:
            raise ValidationError(str(exc)) from None
        return data


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetForm
    # The figures of the running period, as the budget check and the usage API count them: a
    # row keeps the spend of a period that has ended (and its start) until the budget's next
    # use rolls it over, and showing those stored columns said a new day's budget was spent.
    list_display = ["__str__", "period", "limit_display", "spent_this_period", "held", "remaining", "warn_ratio", "current_period"]
    list_filter = ["period"]
    search_fields = ["user__username", "team__name"]
    list_select_related = ["user", "team"]  # each row's name, without a query per row
    raw_id_fields = ["user"]
    readonly_fields = ["spent_this_period", "held", "remaining", "current_period", "time_zone", "created_at"]

    def get_queryset(self, request):
        # spent_now, in SQL, only to sort by; each row's figures are read by the budget rules.
        return budgets_with_spent_now(super().get_queryset(request))

    def get_readonly_fields(self, request, obj=None):
        # Owner and period identify a budget; changing them would be a different budget.
        if obj is not None:
            return ["user", "team", "period", *self.readonly_fields]
        return ["time_zone", "created_at"]  # a budget not made yet has spent and holds nothing

    @admin.display(description=_("limit"), ordering="limit")
    def limit_display(self, obj: Budget) -> str:
        return usd(obj.limit)

    @admin.display(description=_("spent this period"), ordering="spent_now")
    def spent_this_period(self, obj: Budget) -> str:
        return usd(budget_spent_now(obj))

    @admin.display(description=_("held by replies being written"), ordering="reserved")
    def held(self, obj: Budget) -> str:
        return usd(obj.reserved)

    @admin.display(description=_("remaining"), ordering=F("limit") - F("spent_now") - F("reserved"))
    def remaining(self, obj: Budget) -> str:
        return usd(budget_remaining_now(obj))

    @admin.display(description=_("current period"))
    def current_period(self, obj: Budget) -> str:
        start, end = period_bounds(period=obj.period, tz_name=obj.time_zone, now=timezone.now())
        if start is None:
            return gettext("all time (never resets)")
        return f"{start:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} ({obj.time_zone})"

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        return type(form.__name__, (form,), {"actor": request.user})

    def _covers_operator(self, request, obj: Budget) -> bool:
        owner = {"user": obj.user} if obj.user_id else {"team": obj.team}
        return budget_locked_for(actor=request.user, **owner)

    def _outranks_operator(self, request, obj: Budget) -> bool:
        return bool(obj.user_id) and budget_owner_outranks(actor=request.user, user=obj.user)

    def _locked(self, request, obj: Budget) -> bool:
        return self._covers_operator(request, obj) or self._outranks_operator(request, obj)

    # A budget covering the operator, or an account that outranks them, is read-only to them, and
    # cannot be deleted by them (the "delete selected" action asks this of each budget, and
    # refuses the whole selection).
    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or not self._locked(request, obj))

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and (obj is None or not self._locked(request, obj))

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Django's page names the permission lacking; this says why, when it is one of these.
        if perms_needed and any(self._covers_operator(request, b) for b in objs):
            self.message_user(request, BudgetCoversOperator().message, messages.ERROR)
        if perms_needed and any(self._outranks_operator(request, b) for b in objs):
            self.message_user(request, OUTRANKS_YOU, messages.ERROR)
        return deleted, model_count, perms_needed, protected

    def save_model(self, request, obj: Budget, form, change: bool) -> None:
        budget = budget_set(
            user=obj.user if obj.user_id else None,
            team=obj.team if obj.team_id else None,
            period=obj.period,
            limit=obj.limit,
            warn_ratio=obj.warn_ratio,
            actor=request.user,
        )
        obj.pk = budget.pk
        obj.refresh_from_db()

    def delete_model(self, request, obj: Budget) -> None:
        budget_delete(budget=obj, actor=request.user)

    def delete_queryset(self, request, queryset) -> None:
        # All or none: a refusal midway (BudgetCoversOperator) undoes the deletions before it.
        with transaction.atomic():
            for budget in queryset:
                budget_delete(budget=budget, actor=request.user)
