"""Reads about people."""

from __future__ import annotations

from django.utils.translation import get_supported_language_variant

from chatsite.middleware import language_from_accept_header


def user_language(*, user, language_cookie: str | None, accept_language: str) -> str:
    """The language a signed-in person reads, chosen as for their pages (LocaleMiddleware, then
    UserLanguageMiddleware): their profile's, else the language switcher's cookie, else the
    browser's Accept-Language, else LANGUAGE_CODE. For what is not a page request: the chat
    socket's messages."""
    for code in (user.language, language_cookie):
        if code:
            try:
                return get_supported_language_variant(code)
            except LookupError:
                continue
    return language_from_accept_header(accept_language)
