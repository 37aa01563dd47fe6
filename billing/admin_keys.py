"""The ProviderKey admin. The secret is write-only: a password input that is never rendered back,
shown afterwards only as "…last4". Saving, state changes, tests and deletion go through the
services in billing.keys (which also write the audit entries)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils.decorators import method_decorator
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _
from django.views.decorators.debug import sensitive_post_parameters

from chatsite.admin_site import OwnChangesOnlyFormMixin

from . import keys
from .models import ProviderKey

BASE_URL_PERMISSION = "billing.set_providerkey_base_url"
# The keys whose test has just said they are refused (invalid): the list the action redirects to
# does not warn about them again. A session entry, read once, by the next list.
_KEYS_JUST_REPORTED = "billing.keys_just_reported"


class ProviderKeyForm(OwnChangesOnlyFormMixin, forms.ModelForm):
    # Not a model field: the model holds only the ciphertext. render_value=False so a form shown
    # again (after an error) never carries the secret back to the browser.
    secret = forms.CharField(
        label=_("Secret"),
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("Write-only. Leave empty to keep the current secret."),
    )

    class Meta:
        model = ProviderKey
        fields = ["name", "provider", "secret", "base_url", "priority", "state"]

    def __init__(self, *args, **kwargs):
        # OwnChangesOnlyFormMixin: saving a new priority must not undo a colleague's "disable" of
        # a leaked key, or their rename (save_model applies only what this operator changed).
        super().__init__(*args, **kwargs)
        if self.instance._state.adding:
            self.fields["secret"].required = True
            self.fields["secret"].help_text = _("Write-only: it is never shown again, only its last four characters.")

    def _run(self, field_name: str, check, value):
        try:
            return check(value)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict.get(field_name) or exc.messages) from None

    def clean_name(self):
        exclude = None if self.instance._state.adding else self.instance.pk
        return self._run("name", lambda v: keys.name_validate(v, exclude_id=exclude), self.cleaned_data.get("name"))

    def clean_secret(self):
        value = self.cleaned_data.get("secret") or ""
        if not value and not self.instance._state.adding:
            return ""
        return self._run("secret", keys.secret_validate, value)

    def clean_base_url(self):
        return self._run("base_url", keys.base_url_validate, self.cleaned_data.get("base_url") or "")

    def clean_priority(self):
        return self._run("priority", keys.priority_validate, self.cleaned_data.get("priority"))

    def clean(self):
        # Said here, beside the field, before save_model: key_update refuses it again.
        cleaned = super().clean()
        moved = "base_url" in cleaned and cleaned["base_url"] != self.instance.base_url
        if not self.instance._state.adding and moved and not cleaned.get("secret"):
            self.add_error("secret", keys.secret_needed_for_new_base_url())
        return cleaned


@admin.register(ProviderKey)
class ProviderKeyAdmin(admin.ModelAdmin):
    form = ProviderKeyForm
    list_display = (
        "name",
        "provider",
        "masked_secret",
        "base_url",
        "priority",
        "state",
        "health_display",
        "consecutive_failures",
        "last_error_display",
        "last_used_at",
    )
    list_filter = ("provider", "state", "health")
    search_fields = ("name",)  # never the secret
    readonly_fields = (
        "masked_secret",
        "health",
        "cooldown_until",
        "consecutive_failures",
        "last_error_display",
        "last_used_at",
        "origin",
        "state_changed_at",
        "created_at",
    )
    actions = ["test_keys", "drain_keys", "disable_keys", "enable_keys"]

    def get_queryset(self, request):
        # The ciphertext is never needed to show a key.
        return super().get_queryset(request).defer("secret_encrypted")

    def get_fields(self, request, obj=None):
        fields = ["name", "provider", "secret", "masked_secret", "base_url", "priority", "state"]
        if obj is None:
            fields.remove("masked_secret")
        else:
            fields += [f for f in self.readonly_fields if f != "masked_secret"]
        return fields

    def get_readonly_fields(self, request, obj=None):
        readonly = list(self.readonly_fields)
        if obj is not None:
            readonly.append("provider")  # a key belongs to one provider; add another one instead
        if not request.user.has_perm(BASE_URL_PERMISSION):
            readonly.append("base_url")
        return readonly

    @admin.display(description=_("secret"))
    def masked_secret(self, obj: ProviderKey) -> str:
        return f"…{obj.secret_last4}" if obj.secret_last4 else "…"

    @admin.display(description=_("health"), ordering="health")
    def health_display(self, obj: ProviderKey) -> str:
        if obj.cooldown_until and obj.health in (ProviderKey.Health.COOLING_DOWN, ProviderKey.Health.FAILING):
            if obj.cooldown_until > keys.clock():
                return gettext("%(health)s until %(when)s") % {
                    "health": obj.get_health_display(),
                    "when": obj.cooldown_until.strftime("%Y-%m-%d %H:%M:%S %Z"),
                }
            return gettext("%(health)s (cooldown over, will be retried)") % {"health": obj.get_health_display()}
        return obj.get_health_display()

    @admin.display(description=_("last error kind"), ordering="last_error_kind")
    def last_error_display(self, obj: ProviderKey) -> str:
        return keys.error_kind_label(obj.last_error_kind)

    @method_decorator(sensitive_post_parameters("secret"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        can_set_url = request.user.has_perm(BASE_URL_PERMISSION)
        if not change:
            key = keys.key_add(
                actor=request.user,
                provider=data["provider"],
                name=data["name"],
                secret=data["secret"],
                base_url=data.get("base_url", "") if can_set_url else "",
                priority=data["priority"],
            )
        else:
            key = keys.key_update(
                key_id=obj.pk,
                actor=request.user,
                name=data["name"] if "name" in form.changed_data else None,
                priority=data["priority"] if "priority" in form.changed_data else None,
                base_url=data["base_url"] if can_set_url and "base_url" in form.changed_data else None,
                secret=data["secret"] or None,
            )
        if data.get("state") and (not change or "state" in form.changed_data) and data["state"] != key.state:
            key = keys.key_set_state(key_id=key.pk, state=data["state"], actor=request.user)
        # The admin goes on with `obj` (its log entry, its redirect): make it the saved row.
        for f in ProviderKey._meta.concrete_fields:
            setattr(obj, f.attname, getattr(key, f.attname))
        obj._state.adding = False

    def delete_model(self, request, obj):
        keys.key_delete(key_id=obj.pk, actor=request.user)

    def delete_queryset(self, request, queryset):
        for key_id in queryset.values_list("pk", flat=True):
            keys.key_delete(key_id=key_id, actor=request.user)

    def changelist_view(self, request, extra_context=None):
        keys.keys_ensure_imported()  # so keys from the environment are listed before first use
        if request.method == "GET":
            reported = set(request.session.pop(_KEYS_JUST_REPORTED, ()))
            for key in keys.keys_needing_attention():
                if str(key.pk) in reported:
                    continue
                if key.health == ProviderKey.Health.INVALID:
                    text = gettext(
                        "Provider key %(name)s was refused by %(provider)s (invalid): replace its secret or disable it."
                    )
                    self.message_user(request, text % {"name": key.name, "provider": key.provider}, messages.ERROR)
                else:
                    text = gettext("Provider key %(name)s is out of rotation until %(when)s (%(kind)s).")
                    when = key.cooldown_until.strftime("%Y-%m-%d %H:%M:%S %Z")
                    self.message_user(
                        request, text % {"name": key.name, "when": when, "kind": keys.error_kind_label(key.last_error_kind)},
                        messages.WARNING,
                    )
        return super().changelist_view(request, extra_context)

    @admin.action(description=_("Test the selected keys (a one-token call)"), permissions=["change"])
    def test_keys(self, request, queryset):
        refused = []
        for key in queryset.only("pk", "name"):
            result = keys.key_test(key_id=key.pk, actor=request.user)
            if result.ok:
                self.message_user(
                    request, gettext("Test of %(name)s: it works.") % {"name": key.name}, messages.SUCCESS
                )
                continue
            values = {"name": key.name, "kind": keys.error_kind_label(result.error_kind), "detail": result.detail}
            if result.needs_new_secret:
                # What the list's warning would say about this key (keys_needing_attention), said
                # here once instead.
                refused.append(str(key.pk))
                text = gettext("Test of %(name)s failed (%(kind)s). %(detail)s Replace its secret or disable it.")
            else:
                text = gettext("Test of %(name)s failed (%(kind)s). %(detail)s")
            self.message_user(request, text % values, messages.ERROR)
        if refused:
            request.session[_KEYS_JUST_REPORTED] = refused

    def _set_state(self, request, queryset, state: str) -> None:
        # Counted before the change: on a list filtered by state, the keys changed leave the
        # queryset ("0 key(s) are now disabled").
        key_ids = list(queryset.values_list("pk", flat=True))
        for key_id in key_ids:
            keys.key_set_state(key_id=key_id, state=state, actor=request.user)
        text = gettext("%(n)d key(s) are now %(state)s.")
        self.message_user(request, text % {"n": len(key_ids), "state": ProviderKey.State(state).label})

    @admin.action(
        description=_("Drain the selected keys (no new calls; replies in flight finish)"), permissions=["change"]
    )
    def drain_keys(self, request, queryset):
        self._set_state(request, queryset, ProviderKey.State.DRAINING)

    @admin.action(description=_("Disable the selected keys"), permissions=["change"])
    def disable_keys(self, request, queryset):
        self._set_state(request, queryset, ProviderKey.State.DISABLED)

    @admin.action(description=_("Enable the selected keys"), permissions=["change"])
    def enable_keys(self, request, queryset):
        self._set_state(request, queryset, ProviderKey.State.ENABLED)
