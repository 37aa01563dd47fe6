"""What every JSON API view under /api/ shares (CONTRACT section 4): errors as
{"error": {"code", "message"}}, 401 JSON for anonymous callers, CSRF failures and wrong methods
answered in JSON too, and a JSON 404 for paths under /api/ that no route matches. One decorator
for the three apps' APIs, so none of them answers Django's HTML pages to a program."""

from __future__ import annotations

import functools

from django.http import HttpRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.translation import gettext as _
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt

API_PREFIX = "/api/"
_csrf = CsrfViewMiddleware(lambda request: None)


def api_error(status: int, code: str, message: str, **details) -> JsonResponse:
    """`details` go beside code and message (a refused body's "field", say)."""
    return JsonResponse({"error": {"code": code, "message": message, **details}}, status=status)


def api_view(methods: tuple[str, ...]):
    """401 JSON for anonymous callers (never a login redirect), CSRF on unsafe methods answered
    in JSON too, 405 JSON for other methods."""

    def decorate(view):
        @csrf_exempt  # checked below, so a failure answers JSON instead of Django's HTML page
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args, **kwargs):
            if not request.user.is_authenticated:
                return api_error(401, "not_authenticated", _("Sign in first."))
            if request.method not in methods:
                response = api_error(405, "method_not_allowed", _("Method not allowed."))
                response["Allow"] = ", ".join(methods)
                return response
            if request.method not in {"GET", "HEAD", "OPTIONS"}:
                if _csrf.process_view(request, None, (), {}) is not None:
                    return api_error(403, "csrf_failed", _("The CSRF token is missing or wrong."))
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def page_not_found(request: HttpRequest, exception: Exception):
    """handler404: JSON under /api/ (a client program asked), Django's page elsewhere. Like
    every handler404 it answers only with DEBUG off; with DEBUG on Django shows its debug page."""
    if request.path.startswith(API_PREFIX):
        return api_error(404, "not_found", _("No such API route."))
    return defaults.page_not_found(request, exception)
