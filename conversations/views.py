"""The chat page. The page is a shell: the sidebar, messages and model list are rendered here
once, then static/js/chat.js keeps them current through the JSON API and the socket."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render, resolve_url
from django.utils.translation import gettext as _
from django.views.decorators.csrf import ensure_csrf_cookie

from . import api, selectors, services, turns
from .services import message_too_long_text


def _strings() -> dict:
    # Everything chat.js shows, translated here (no inline script: passed with json_script).
    return {
        "untitled": _("New conversation"),
        "noMatches": _("No conversations match this filter."),
        "you": _("You"),
        "assistant": _("Assistant"),
        "send": _("Send"),
        "stop": _("Stop"),
        "busy": _("A reply is already being written in this conversation."),
        "regenerate": _("Regenerate"),
        "rename": _("Rename"),
        "showMore": _("Show more"),
        "delete": _("Delete"),
        "renamePrompt": _("New title:"),
        "deleteConfirm": _("Delete this conversation? This cannot be undone."),
        "copy": _("Copy"),
        "copied": _("Copied"),
        "tokens": _("%(input)s in / %(output)s out tokens"),
        "cost": _("$%(cost)s"),
        "cancelled": _("Stopped."),
        "error": _("Error"),
        # What ended a reply, by the error_code its row keeps: said in words after a reload, as
        # the live error frame said it. An unknown code shows as it is.
        "errorCodes": turns.saved_error_words(),
        "reconnecting": _("Connection lost, reconnecting…"),
        "connected": _("Connected"),
        "saved": _("Settings saved."),
        "tooLong": message_too_long_text(),  # the limit named, as the socket names it
        "demo": _("demo"),
        "offline": _("The server cannot be reached. Check your connection and try again."),
        "requestFailed": _("The request failed. Please try again."),
        "signedOut": _("You were signed out. Sign in again to continue."),
        "logIn": _("Log in"),
        "gone": _("This conversation no longer exists."),
        "tooManyWindows": _("Too many chat windows are open. Close some and reload."),
    }


@login_required
@ensure_csrf_cookie
def chat(request, conversation_id=None):
    conversation = None
    messages = []
    if conversation_id is not None:
        conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
        if conversation is None:
            raise Http404
        messages = [api.message_data(m) for m in selectors.message_list(conversation=conversation)]
    sidebar = api.conversations_page(request)
    config = {
        "conversation": api.conversation_data(conversation) if conversation else None,
        "messages": messages,
        "conversations": sidebar["results"],
        "conversationsNext": sidebar["next"],
        "models": api.models_available(),
        "defaultModel": services.model_default(user=request.user),
        "maxChars": settings.MAX_MESSAGE_CHARS,
        "loginUrl": resolve_url(settings.LOGIN_URL),
        "strings": _strings(),
    }
    return render(request, "conversations/chat.html", {"config": config, "conversation": conversation, "conversations": sidebar["results"]})
