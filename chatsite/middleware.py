"""Project-wide HTTP middleware: a request id on every log line, and the security headers."""

import logging
import re
import time
import uuid

from django.conf import settings

from .logging import request_id_var

logger = logging.getLogger("parley.request")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestIdMiddleware:
    """Takes a well-formed X-Request-ID from the proxy, else makes one; echoes it back."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = rid
        token = request_id_var.set(rid)
        started = time.monotonic()
        try:
            response = self.get_response(request)
            # The route pattern when a view answered, never its path: a path can hold a
            # password-reset token. Static files and 404s have no route; their path is logged.
            match = getattr(request, "resolver_match", None)
            logger.info(
                "%s %s %s %.0fms user=%s",
                request.method,
                match.route if match else request.path[:200],
                response.status_code,
                (time.monotonic() - started) * 1000,
                # Only a user the view already loaded: a probe must not cost a session lookup.
                getattr(getattr(request, "_cached_user", None), "pk", None) or "-",
            )
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        return response


class SecurityHeadersMiddleware:
    """The Content-Security-Policy (no inline script, nothing from other origins)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        response.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        return response
