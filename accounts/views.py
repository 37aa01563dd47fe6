"""Account pages: thin views over accounts.services and Django's own auth views."""

import math
from urllib.parse import urlsplit

from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse, reverse_lazy
from django.utils import timezone
from django.utils.translation import check_for_language, ngettext
from django.utils.translation import gettext as _
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_http_methods, require_POST
from django.views.i18n import set_language as django_set_language

from chatsite.api import API_PREFIX, api_error
from chatsite.net import client_ip

from . import services
from .forms import AdminPasswordChangeForm, LoginForm, PasswordChangeForm, ProfileForm, SetPasswordForm, SignupForm


def home_url() -> str:
    """Where a signed-in person lands: the chat page, or their profile while no app serves it."""
    try:
        return reverse(settings.LOGIN_REDIRECT_URL)
    except NoReverseMatch:
        return reverse("profile")


class LoginView(auth_views.LoginView):
    authentication_form = LoginForm
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        return home_url()

    def get_redirect_url(self):
        # A next= leading back to this page would send a signed-in person in a circle (Django
        # raises ValueError for it, a 500): they go home instead.
        url = super().get_redirect_url()
        return "" if url and urlsplit(url).path == self.request.path else url


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def signup(request):
    if request.user.is_authenticated:
        return redirect(home_url())
    form = SignupForm(request.POST or None)
    if request.method == "GET":
        return render(request, "registration/signup.html", {"form": form})
    if form.is_valid():
        data = form.cleaned_data
        try:
            user = services.user_signup(
                username=data["username"],
                email=data["email"],
                password=data["password1"],
                # A language picked with the switcher before signing up is kept; otherwise the
                # profile stays empty and follows the browser.
                language=request.COOKIES.get(settings.LANGUAGE_COOKIE_NAME, ""),
                ip_address=client_ip(request),
            )
        except services.SignupThrottled as throttled:
            form.add_error(None, throttled)
            response = render(request, "registration/signup.html", {"form": form}, status=429)
            response["Retry-After"] = str(throttled.retry_after)
            return response
        except ValidationError as error:
            form.add_error(None, error)
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            if user.is_superuser:
                messages.success(request, _("Welcome to Parley. Yours is the first account, so you are the administrator."))
            else:
                messages.success(request, _("Welcome to Parley."))
            return redirect(home_url())
    # Closed sign-up is refused by the service; the page then says so instead of the form.
    status = 400 if settings.SIGNUP_OPEN else 403
    return render(request, "registration/signup.html", {"form": form}, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def profile(request):
    user = request.user
    form = ProfileForm(request.POST or None, initial={name: getattr(user, name) for name in ProfileForm.base_fields})
    if request.method == "POST" and form.is_valid():
        try:
            services.user_update_profile(user=user, **form.cleaned_data)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(request, _("Your profile is saved."))
            return redirect("profile")
    return render(
        request,
        "accounts/profile.html",
        {"form": form, "teams": user.teams.all()},
        status=400 if form.is_bound and form.errors else 200,
    )


@require_POST
def set_language(request):
    """Django's set_language (cookie and redirect); a signed-in person's choice is also saved
    to their profile, since the profile's language wins over the cookie."""
    response = django_set_language(request)
    code = request.POST.get("language", "")
    if request.user.is_authenticated and code in dict(settings.LANGUAGES) and check_for_language(code):
        services.user_update_profile(user=request.user, language=code)
    return response


class _PasswordChangeFormGetsRequest:
    # The form checks the current password through authenticate(request, ...), for django-axes.
    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "request": self.request}


class PasswordChangeView(_PasswordChangeFormGetsRequest, auth_views.PasswordChangeView):
    form_class = PasswordChangeForm
    success_url = reverse_lazy("profile")

    def form_valid(self, form):
        response = super().form_valid(form)
        messages.success(self.request, _("Your password is changed."))
        return response


class AdminPasswordChangeView(_PasswordChangeFormGetsRequest, auth_views.PasswordChangeView):
    """The admin's own password page (ParleyAdminSite.password_change): the same form and service.
    Its done page says the change in the admin's own words."""

    form_class = AdminPasswordChangeForm


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    form_class = SetPasswordForm
    success_url = reverse_lazy("password_reset_complete")

    def get_user(self, uidb64):
        # Django's view finds the account by id alone, active or not; the token does not change
        # when an administrator disables an account. No reset is sent to a disabled account
        # (PasswordResetForm skips them), and a link sent before it was disabled stops working.
        user = super().get_user(uidb64)
        return user if user is not None and user.is_active else None


def lockout(request, original_response=None, credentials=None, *args, **kwargs):
    """django-axes calls this when a username and address have failed too often: a page that
    says when to try again, with status 429 and a Retry-After header."""
    cool_off = get_cool_off(request)
    started = getattr(request, "axes_attempt_time", None) or timezone.now()
    retry_at = started + cool_off
    seconds = max(1, math.ceil((retry_at - timezone.now()).total_seconds()))
    minutes = max(1, math.ceil(seconds / 60))
    if request.path.startswith(API_PREFIX):
        # The erase API checks a password through axes too: a program gets the API's JSON error.
        message = ngettext(
            "Logging in to this account from your address is paused. Try again in %(minutes)s minute.",
            "Logging in to this account from your address is paused. Try again in %(minutes)s minutes.",
            minutes,
        ) % {"minutes": minutes}
        response = api_error(429, "locked_out", message)
    else:
        response = render(
            request, "registration/locked_out.html", {"retry_at": retry_at, "minutes": minutes}, status=429
        )
    response["Retry-After"] = str(seconds)
    return response
