"""The JSON API (CONTRACT section 4): session auth, CSRF on unsafe methods, owner-scoped reads,
errors as {"error": {"code", "message"}}. Entry points only: parse, authorize, call a service."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.translation import gettext as _

from billing import keys, prices
from chatsite.api import api_error as error
from chatsite.api import api_view

from . import selectors, services
from .markdown import markdown_render
from .models import Conversation, Message
from .turns import money_str

PAGE_SIZE = 50
# The last page whose rows (offset and one row past the page) a signed 64-bit integer, SQLite's
# and PostgreSQL's LIMIT/OFFSET type, can address. A page past it cannot exist: 400, not a 500.
MAX_PAGE = (2**63 - 2) // PAGE_SIZE


def _body(request: HttpRequest) -> dict | JsonResponse:
    try:
        data = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return error(400, "invalid_input", _("The body must be JSON."))
    except RecursionError:
        # json.loads recurses once per nesting level; a body of ~1,000 nested arrays or more
        # (well under the body size cap) exhausts the stack. Refused, not a 500.
        return error(400, "invalid_input", _("The body is nested too deeply."))
    if not isinstance(data, dict):
        return error(400, "invalid_input", _("The body must be a JSON object."))
    return data


def _iso(value) -> str:
    return value.isoformat().replace("+00:00", "Z")


def conversation_summary_data(c: Conversation) -> dict:
    return {"id": str(c.id), "title": c.title, "model": c.model, "created_at": _iso(c.created_at), "updated_at": _iso(c.updated_at)}


def conversation_data(c: Conversation) -> dict:
    return {
        **conversation_summary_data(c),
        "system_prompt": c.system_prompt,
        # Not money: a JSON number is what clients expect for a sampling temperature.
        "temperature": float(c.temperature) if c.temperature is not None else None,
        "max_tokens": c.max_tokens,
    }


def message_data(m: Message) -> dict:
    return {
        "id": str(m.id),
        "role": m.role,
        "content": m.content,
        "status": m.status,
        "created_at": _iso(m.created_at),
        "input_tokens": m.input_tokens,
        "output_tokens": m.output_tokens,
        "cost": money_str(m.cost),
        # Extra fields beyond the contract: the rendering the page shows, and how the reply ended.
        "html": markdown_render(text=m.content) if m.role == Message.Role.ASSISTANT else None,
        "model": m.model,
        "finish_reason": m.finish_reason,
        "error_code": m.error_code,
        "reply_to": str(m.reply_to_id) if m.reply_to_id else None,
        # The id the sending tab gave a user's message: a tab whose ack was lost knows it is saved.
        "client_id": str(m.client_id) if m.client_id else None,
    }


def models_available() -> list[dict]:
    """Priced models whose provider has a usable key, and the demo model, labelled as a demo."""
    usable = keys.providers_with_usable_keys()
    results = []
    for quote in prices.prices_available():
        is_demo = quote.provider == "demo"
        if not is_demo and quote.provider not in usable:
            continue
        label = quote.label or quote.model_id
        if is_demo and "demo" not in label.lower():
            label = _("%(label)s (demo)") % {"label": label}
        label = prices.label_display(label)
        results.append({"id": quote.model_id, "label": label, "context_window": quote.context_window, "demo": is_demo})
    return results


@api_view(("GET",))
def models_list(request):
    return JsonResponse({"results": models_available()})


@api_view(("GET", "POST"))
def conversations_collection(request):
    if request.method == "POST":
        data = _body(request)
        if isinstance(data, JsonResponse):
            return data
        try:
            conversation = services.conversation_create(owner=request.user, data=data)
        except services.InvalidField as exc:
            return error(400, "invalid_input", exc.message, field=exc.field)
        return JsonResponse(conversation_data(conversation), status=201)

    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        return error(400, "invalid_input", _("page must be a whole number."))
    if page > MAX_PAGE:
        return error(400, "invalid_input", _("page must be at most %(n)d.") % {"n": MAX_PAGE})
    query = request.GET.get("q", "")[:200]
    if "\x00" in query:
        # PostgreSQL cannot take NUL in a text parameter; refused on every backend alike, as
        # titles are (a title never holds one, so the search could match nothing anyway).
        return error(400, "invalid_input", _("q: The text must not contain NUL characters."))
    return JsonResponse(conversations_page(request, page=page, query=query))


def conversations_page(request, *, page: int = 1, query: str = "") -> dict:
    """One page of the user's conversation list, newest first: {"results", "next"}, "next" the
    API's URL of the page after (None on the last). Also the chat page's first sidebar page."""
    rows = list(selectors.conversation_list(owner=request.user, title_contains=query)[(page - 1) * PAGE_SIZE : page * PAGE_SIZE + 1])
    next_url = None
    if len(rows) > PAGE_SIZE:  # one row past the page says there is a next one
        params = {"page": page + 1, **({"q": query} if query else {})}
        next_url = request.build_absolute_uri(reverse("api-conversations") + "?" + urlencode(params))
    return {"results": [conversation_summary_data(c) for c in rows[:PAGE_SIZE]], "next": next_url}


@api_view(("GET", "PATCH", "DELETE"))
def conversation_item(request, conversation_id):
    conversation = selectors.conversation_get(owner=request.user, conversation_id=conversation_id)
    if conversation is None:
        return error(404, "not_found", _("No such conversation."))
    if request.method == "DELETE":
        services.conversation_delete(conversation=conversation)
        return HttpResponse(status=204)
    if request.method == "PATCH":
        data = _body(request)
        if isinstance(data, JsonResponse):
            return data
        try:
            conversation = services.conversation_update(conversation=conversation, data=data)
        except services.InvalidField as exc:
            return error(400, "invalid_input", exc.message, field=exc.field)
        return JsonResponse(conversation_data(conversation))
    payload = conversation_data(conversation)
    payload["messages"] = [message_data(m) for m in selectors.message_list(conversation=conversation)]
    return JsonResponse(payload)
