"""Who is asking: the client address as far as this deployment can know it."""

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, unless TRUSTED_PROXY_COUNT proxies stand in front of Daphne.

    Each trusted proxy appends the address it saw to X-Forwarded-For, so the client's address is
    the one TRUSTED_PROXY_COUNT entries from the right. Anything further left was written by the
    client and is never believed: a forged header cannot dodge the login throttle."""
    remote = request.META.get("REMOTE_ADDR", "") or "0.0.0.0"  # noqa: S104 - a placeholder, not a bind
    proxies = settings.TRUSTED_PROXY_COUNT
    if proxies <= 0:
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    if len(hops) < proxies:
        return remote
    return hops[-proxies]
