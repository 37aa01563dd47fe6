"""Forms parse and report; the rules live in accounts.services."""

import zoneinfo

from django import forms
from django.conf import settings
from django.contrib.auth import authenticate, password_validation
from django.contrib.auth import forms as auth_forms
from django.utils.translation import gettext_lazy as _

from . import services
from .models import User, validate_model_id

# A password longer than this is refused before hashing: hashing megabytes is a cheap way to
# burn a server's CPU, and no password manager makes one this long.
PASSWORD_MAX_LENGTH = 1024


_USERNAME = User._meta.get_field("username")


class SignupForm(forms.Form):
    username = forms.CharField(
        label=_("Username"),
        # The account's own rules, its length among them (not given again as max_length: the
        # form would check the length twice and say so twice), so a rule added there holds here.
        validators=_USERNAME.validators,
        help_text=_("Up to 150 characters: letters, digits and @ . + - _ only."),
        widget=forms.TextInput(
            attrs={"autocomplete": "username", "autocapitalize": "none", "autofocus": True, "maxlength": _USERNAME.max_length}
        ),
    )
    email = forms.EmailField(
        label=_("Email"),
        max_length=254,
        help_text=_("Used only to reset your password."),
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
    )
    password1 = forms.CharField(
        label=_("Password"),
        max_length=PASSWORD_MAX_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password2 = forms.CharField(
        label=_("Password again"),
        max_length=PASSWORD_MAX_LENGTH,
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self):
        cleaned = super().clean()
        p1, p2 = cleaned.get("password1"), cleaned.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", _("The two passwords do not match."))
        elif p1:
            probe = User(username=cleaned.get("username") or "", email=cleaned.get("email") or "")
            try:
                password_validation.validate_password(p1, user=probe)
            except forms.ValidationError as error:
                self.add_error("password1", error)
        return cleaned


def _timezone_choices() -> list[tuple[str, str]]:
    return [(name, name) for name in sorted(zoneinfo.available_timezones()) if "/" in name or name == "UTC"]


class ProfileForm(forms.Form):
    display_name = forms.CharField(
        label=_("Display name"),
        max_length=80,
        required=False,
        help_text=_("How your name is shown. Leave empty to use your username."),
    )
    timezone = forms.ChoiceField(label=_("Time zone"), choices=_timezone_choices)
    language = forms.ChoiceField(
        label=_("Language"),
        required=False,
        choices=lambda: [("", _("Same as my browser")), *settings.LANGUAGES],
    )
    default_model = forms.CharField(
        label=_("Default model"),
        max_length=120,
        required=False,
        validators=[validate_model_id],
        help_text=_("The model new conversations start with, as provider:model (for example demo:echo)."),
        widget=forms.TextInput(attrs={"autocapitalize": "none", "spellcheck": "false"}),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The list holds the usual Area/City names; the model accepts every zone Python knows,
        # and an admin may have set one of the others ("Japan", "EST5EDT"). It is offered too,
        # so the page shows it selected and saving the profile keeps it (a browser submits the
        # first option when none is selected). It passed the model's validate_timezone when saved:
        # no second walk of the zone database here.
        current = self.initial.get("timezone")
        field = self.fields["timezone"]
        if current and current not in dict(field.choices):
            field.choices = sorted([*field.choices, (current, current)])


class LoginForm(auth_forms.AuthenticationForm):
    """Django's login form, with its username capped for real. Django sets the field's max_length
    (the User model's) only after the field is built, so no validator enforces it: a name of any
    length reached authenticate(), and django-axes then wrote it into its varchar(255) username
    column, a DataError (500) on PostgreSQL. No account has such a name: the usual
    wrong-credentials answer, without asking authenticate()."""

    def clean(self):
        username = self.cleaned_data.get("username")
        if username is not None and len(username) > self.fields["username"].max_length:
            raise self.get_invalid_login_error()
        return super().clean()


class _PasswordSavedByService:
    """Django's password forms save the user themselves; these hand the new password to
    accounts.services.user_password_change, which also closes the user's other chat sockets."""

    def save(self, commit=True):
        return services.user_password_change(user=self.user, password=self.cleaned_data["new_password1"])


class PasswordChangeForm(_PasswordSavedByService, auth_forms.PasswordChangeForm):
    """The current password is checked through authenticate(), as at login: django-axes counts
    wrong guesses and locks them out, so whoever holds a signed-in browser cannot try passwords
    here without limit (Django's form asks check_password(), which nothing throttles)."""

    def __init__(self, user, *args, request=None, **kwargs):
        super().__init__(user, *args, **kwargs)
        self.request = request

    def clean_old_password(self):
        old_password = self.cleaned_data["old_password"]
        if authenticate(self.request, username=self.user.get_username(), password=old_password) != self.user:
            raise forms.ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        return old_password


class AdminPasswordChangeForm(PasswordChangeForm):
    """The admin's own "Change password" page, with the admin's form styling."""

    required_css_class = "required"


class SetPasswordForm(_PasswordSavedByService, auth_forms.SetPasswordForm):
    """The last step of a password reset."""


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's form, mailing from a task: accounts.services.password_reset_request."""

    def save(self, *, request, use_https=False, **kwargs):
        services.password_reset_request(email=self.cleaned_data["email"], domain=request.get_host(), use_https=use_https)
