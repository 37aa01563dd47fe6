"""Project-wide HTTP middleware: a request id on every log line, API errors without internals,
the security headers, bodiless 204s, and (ASGI, in front of Django) the request body size cap
and the websocket handshake's origin check."""

import json
import logging
import re
import time
import uuid
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http import JsonResponse
from django.http.request import split_domain_port, validate_host
from django.utils import translation
from django.utils.cache import add_never_cache_headers, has_vary_header
from django.utils.translation import gettext as _

from .logging import RepeatThrottle, request_id_var

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
            # A route has no leading slash (the front page's is ""): given one, both read as paths.
            match = getattr(request, "resolver_match", None)
            logger.info(
                "%s %s %s %.0fms user=%s",
                request.method,
                "/" + match.route if match else request.path[:200],
                response.status_code,
                (time.monotonic() - started) * 1000,
                # Only a user the view already loaded: a probe must not cost a session lookup.
                getattr(getattr(request, "_cached_user", None), "pk", None) or "-",
            )
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = rid
        return response

    def process_exception(self, request, exception):
        """An API view that raised answers the API's JSON error shape, never Django's HTML page
        (and never, whatever DEBUG says, a stack trace or a setting). The trace goes to the log,
        where the redaction filter and the request id are."""
        if settings.DEBUG or not request.path.startswith("/api/"):
            return None  # pages: Django's handler500 (templates/500.html), plain in production
        logger.error("unhandled error in %s", getattr(request.resolver_match, "route", "api"), exc_info=exception)
        return JsonResponse(
            {"error": {"code": "server_error", "message": _("Something went wrong on our side. Please try again.")}},
            status=500,
        )


class SecurityHeadersMiddleware:
    """The Content-Security-Policy (no inline script, nothing from other origins), and no caching
    of what depends on who asks.

    A response that read the session (SessionMiddleware then adds `Vary: Cookie`: the chat page,
    the API, the profile, the usage page) and says nothing itself about caching is marked as
    never_cache would: without it a browser keeps someone's conversations in its disk cache, where
    the next person at a shared computer finds them after the sign-out. Listed above
    SessionMiddleware, so it sees the Vary header that one adds on the way out."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        response.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
        if not response.has_header("Cache-Control") and has_vary_header(response, "Cookie"):
            add_never_cache_headers(response)
        return response


class ProbesAnyHostMiddleware:
    """/healthz and /readyz answer whatever Host the probe names. Orchestrators and load balancers
    probe a container by its address (a Kubernetes probe sends the pod's IP as Host, an AWS
    target group's health check the target's, and neither can always be told another name);
    Django refused those with 400 like any Host not in ALLOWED_HOSTS, so a healthy process was
    marked down. The probes build no URL from the Host and show nobody's data. Listed above
    every middleware that reads the Host (CommonMiddleware, CSRF); the HTTPS redirect already
    exempts them (SECURE_REDIRECT_EXEMPT)."""

    def __init__(self, get_response):
        from . import health

        self.get_response = get_response
        self.probes = {"/healthz": health.healthz, "/readyz": health.readyz}

    def __call__(self, request):
        probe = self.probes.get(request.path_info)
        if probe is None:
            return self.get_response(request)
        response = probe(request)
        # What XFrameOptionsMiddleware, below, would have added; the headers above are added anyway.
        response.setdefault("X-Frame-Options", settings.X_FRAME_OPTIONS)
        return response


class NoContentMiddleware:
    """A 204 goes out with no body, no Content-Length and no Content-Type (RFC 9110 6.4.1, 8.6):
    CommonMiddleware gives every response a Content-Length, and a client that believes one on
    a 204 reads the next response on a keep-alive connection wrongly. Listed above
    CommonMiddleware, so it runs after it on the way out."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if response.status_code == 204 and not response.streaming:
            response.content = b""
            for header in ("Content-Length", "Content-Type"):
                if response.has_header(header):
                    del response[header]
        return response


class BodySizeLimitMiddleware:
    """ASGI middleware in front of Django: a request body larger than DATA_UPLOAD_MAX_MEMORY_SIZE
    answers 413 before Django reads it. A declared Content-Length is refused without reading a
    byte; a body without one (chunked) is counted as it streams and refused at the first chunk
    past the cap. /api/ answers the API's JSON error shape, everything else a plain page.

    Django's own check (RequestDataTooBig) only looks at Content-Length, and only after its ASGI
    handler has spooled the whole body; this one costs nothing. Parley takes no file uploads, so
    one cap fits every route."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is None:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                too_big = True  # a malformed length is no length we will read
            if too_big:
                return await self._refuse(scope, send, headers)
            return await self.app(scope, receive, send)

        # No declared length: read (at most the cap, plus one chunk), then replay it to Django.
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: hand it on, Django handles it
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(scope, send, headers)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, send, headers):
        language = language_from_accept_header(headers.get(b"accept-language", b"").decode("latin-1"))
        with translation.override(language):
            message = _("The request is too large.")
        if scope.get("path", "").startswith("/api/"):
            body = json.dumps({"error": {"code": "too_large", "message": message}}).encode()
            content_type = b"application/json"
        else:
            body = (
                f"<!doctype html><html lang=\"{language}\"><meta charset=\"utf-8\"><title>413</title>"
                f"<h1>413</h1><p>{message}</p></html>"
            ).encode()
            content_type = b"text/html; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    # The client may still be sending: tell it this connection is done.
                    (b"connection", b"close"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", settings.CONTENT_SECURITY_POLICY.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def language_from_accept_header(header: str) -> str:
    """The first supported language of an Accept-Language header, else LANGUAGE_CODE."""
    from django.utils.translation.trans_real import get_supported_language_variant, parse_accept_lang_header

    for code, _quality in parse_accept_lang_header(header):
        if code == "*":
            break
        try:
            return get_supported_language_variant(code)
        except LookupError:
            continue
    return settings.LANGUAGE_CODE


_DEFAULT_PORTS = {"http": 80, "https": 443}


def websocket_origin_is_site(scope) -> bool:
    """Whether a socket's handshake comes from a page of this site: the Origin is the scheme, host
    and port the socket was asked on (its Host header, an allowed host), or one of
    CSRF_TRUSTED_ORIGINS, as Django's CSRF check asks of a form. Over HTTPS (DJANGO_HTTPS) every
    page of the site is https. A handshake naming no Host is no browser's: an allowed host then
    suffices, on any port (CONTRACT.md's rule)."""
    headers = dict(scope.get("headers") or [])
    origin = headers.get(b"origin", b"").decode("latin-1")
    if origin and origin in settings.CSRF_TRUSTED_ORIGINS:
        return True
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port out of range, a malformed address
        return False
    if parts.scheme not in (("https",) if settings.HTTPS else ("http", "https")):
        return False
    domain, _port = split_domain_port(parts.netloc.lower())
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    host = headers.get(b"host")
    if host is None:
        # A browser always sends Host, so this is no page in a browser, and no cookie of a
        # person's came with it by a foreign page's doing: the contract's rule alone holds (the
        # Origin is an allowed host), as scripts and test clients that name no Host expect.
        return True
    host_domain, host_port = split_domain_port(host.decode("latin-1").lower())
    return host_domain == domain and (int(host_port) if host_port else _DEFAULT_PORTS[parts.scheme]) == origin_port


class SiteOriginValidator:
    """ASGI, in front of the websocket router: a socket opens only from a page of this site
    (websocket_origin_is_site). Channels' AllowedHostsOriginValidator compares the Origin's host
    name with ALLOWED_HOSTS and nothing else, so a page on another port of an allowed host (a dev
    server beside Parley, another service of the machine) opened a socket, and its browser sent
    the session cookie along: cookies know no ports."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket" and not websocket_origin_is_site(scope):
            _origin_refused_log(scope)
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


# A refused Origin is how a proxy that rewrites Host or drops its port (nginx's $host), or a
# DJANGO_ALLOWED_HOSTS / DJANGO_HTTPS that does not match the public address, shows: pages load, no
# chat socket opens, and the browser only says "reconnecting". Told to the operator, at most once a
# minute (a foreign page can cause it too).
ORIGIN_REFUSALS = RepeatThrottle()


def _origin_refused_log(scope) -> None:
    left_out = ORIGIN_REFUSALS.tell("origin")
    if left_out is None:
        return
    headers = dict(scope.get("headers") or [])
    logger.warning(
        "websocket refused: Origin %r is not this site (Host %r; see DJANGO_ALLOWED_HOSTS, DJANGO_HTTPS "
        "and the Host header the proxy passes)%s",
        headers.get(b"origin", b"").decode("latin-1")[:200],
        headers.get(b"host", b"").decode("latin-1")[:200],
        f"; {left_out} more in the last minute" if left_out else "",
    )
