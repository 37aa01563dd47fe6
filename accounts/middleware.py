import zoneinfo

from django.utils import timezone, translation


class UserLanguageMiddleware:
    """A signed-in person's profile wins over the browser: their language (else LocaleMiddleware's
    pick from the cookie or Accept-Language stands) and their time zone for shown times."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            if user.language:
                translation.activate(user.language)
                request.LANGUAGE_CODE = user.language
            try:
                timezone.activate(zoneinfo.ZoneInfo(user.timezone))
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                timezone.deactivate()
        try:
            return self.get_response(request)
        finally:
            timezone.deactivate()
