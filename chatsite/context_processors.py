from django.conf import settings


def site(request):
    return {"SIGNUP_OPEN": settings.SIGNUP_OPEN, "MAX_MESSAGE_CHARS": settings.MAX_MESSAGE_CHARS}
