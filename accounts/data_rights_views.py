"""Entry points of the data rights: the "Your data" page, its JSON API, the private download of an
export, the erasure receipt, and the single-conversation downloads. They parse, authorize and
call accounts.data_rights; the rules live there.

Two URL lists: `data_rights_urlpatterns` (pages, mounted under /accounts/) and
`data_rights_api_urlpatterns` (mounted under /api/v1/).
"""

from __future__ import annotations

import json

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, logout
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_POST

from chatsite.api import api_error, api_view
from conversations import data_rights as conversation_rights

from . import data_rights
from .models import DataExport, ErasureRequest

CONFIRM_WORD = "ERASE"


# --- Shared -------------------------------------------------------------------------------------


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_body(request) -> dict | None:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." too deep
        return None
    return body if isinstance(body, dict) else None


def _expired_message() -> str:
    return _("This export has expired and was deleted. Exports are kept for %(hours)s hours: request a new one.") % {
        "hours": settings.EXPORT_TTL_HOURS
    }


def _export_json(export: DataExport) -> dict:
    body = {
        "export_id": str(export.id),
        "status": export.status,
        "progress": export.progress,
        "created_at": export.created_at.isoformat(),
    }
    if export.status == DataExport.Status.READY:
        body["download_url"] = reverse("data_rights_download", args=[export.id])
        body["expires_at"] = export.expires_at.isoformat() if export.expires_at else None
        body["size_bytes"] = export.size_bytes
    return body


class EraseForm(forms.Form):
    password = forms.CharField(label=gettext_lazy("Your password"), strip=False, widget=forms.PasswordInput)
    confirm = forms.CharField(
        label=gettext_lazy("Type ERASE to confirm"), max_length=20, widget=forms.TextInput(attrs={"autocomplete": "off"})
    )

    def __init__(self, *args, request=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.request = request

    def clean_confirm(self) -> str:
        value = self.cleaned_data["confirm"].strip()
        if value != CONFIRM_WORD:
            raise forms.ValidationError(_("Type ERASE, in capital letters, to confirm."), code="confirmation_required")
        return value

    def clean(self):
        cleaned = super().clean()
        # The password is tried only once the rest is right, so a missing ERASE never costs a
        # login attempt. Through authenticate(), so django-axes counts wrong guesses as at login.
        if self.errors or "password" not in cleaned:
            return cleaned
        user = self.request.user
        password = cleaned["password"]
        if not _is_text(password) or authenticate(self.request, username=user.get_username(), password=password) != user:
            # Not text (a lone surrogate from a JSON escape) matches no password, and would fail
            # the hasher's UTF-8 encoding with a 500.
            self.add_error("password", forms.ValidationError(_("That password is not right."), code="wrong_password"))
        return cleaned


def _start_erasure(request) -> ErasureRequest:
    """Erase the signed-in user and log this browser out (the task logs out the others)."""
    user = request.user
    erasure = data_rights.erasure_request(user=user, requested_by=user)
    logout(request)
    return erasure


# --- Pages (/accounts/...) ----------------------------------------------------------------------


def _data_page(request, *, form: EraseForm | None = None, status: int = 200):
    now = timezone.now()
    export = (
        DataExport.objects.filter(user=request.user)
        .exclude(expires_at__lte=now)
        .order_by("-created_at")
        .first()
    )
    context = {
        "export": export,
        "export_json": _export_json(export) if export else None,
        "form": form or EraseForm(request=request),
        "preview": data_rights.erasure_preview(user=request.user, include_sessions=False),
        "ttl_hours": settings.EXPORT_TTL_HOURS,
    }
    return render(request, "accounts/data/index.html", context, status=status)


@never_cache
@login_required
@require_GET
def data_home(request):
    return _data_page(request)


@login_required
@require_POST
def data_export_start(request):
    try:
        data_rights.export_request(user=request.user)
    except data_rights.DataRightsError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, _("Your export is being prepared. It will appear here when it is ready."))
    return redirect("data_rights_home")


@never_cache
@login_required
@require_GET
def data_export_download(request, export_id):
    export = data_rights.export_get_for_owner(export_id=export_id, user=request.user)
    if export is None:
        raise Http404(_("No such export. Exports are deleted after they expire."))
    if data_rights.export_is_expired(export):
        return render(request, "accounts/data/unavailable.html", {"message": _expired_message()}, status=410)
    if export.status != DataExport.Status.READY:
        return render(
            request,
            "accounts/data/unavailable.html",
            {"message": _("This export is not ready yet: wait until it shows as ready.")},
            status=409,
        )
    file_path = data_rights.export_file_path(export)
    try:
        handle = open(file_path, "rb")  # noqa: SIM115 - FileResponse closes it
    except FileNotFoundError:
        return render(request, "accounts/data/unavailable.html", {"message": _expired_message()}, status=410)
    response = FileResponse(
        handle, as_attachment=True, filename=f"parley-export-{export.created_at:%Y-%m-%d}.zip", content_type="application/zip"
    )
    response["Cache-Control"] = "private, no-store"
    return response


@sensitive_post_parameters("password")
@never_cache
@login_required
@require_POST
def data_erase(request):
    form = EraseForm(request.POST, request=request)
    if not form.is_valid():
        return _data_page(request, form=form, status=400)
    try:
        erasure = _start_erasure(request)
    except data_rights.DataRightsError as exc:
        form.add_error(None, exc.message)
        return _data_page(request, form=form, status=409)
    return redirect("data_rights_receipt", token=data_rights.erasure_receipt_token(erasure))


@never_cache
@require_GET
def data_erasure_receipt(request, token: str):
    erasure = data_rights.erasure_from_receipt_token(token)
    if erasure is None:
        raise Http404(_("No such receipt."))
    context = {
        "erasure": erasure,
        "done": erasure.status == ErasureRequest.Status.DONE,
        "lines": list(data_rights.iter_receipt(erasure.receipt)),
    }
    response = render(request, "accounts/data/receipt.html", context)
    response["X-Robots-Tag"] = "noindex"
    return response


# --- API (/api/v1/...) --------------------------------------------------------------------------


@never_cache
@api_view(("POST",))
def api_export_start(request):
    try:
        export = data_rights.export_request(user=request.user)
    except data_rights.DataRightsError as exc:
        return api_error(409, exc.code, exc.message)
    return JsonResponse(_export_json(export), status=202)


@never_cache
@api_view(("GET",))
def api_export_status(request, export_id):
    export = data_rights.export_get_for_owner(export_id=export_id, user=request.user)
    if export is None:
        return api_error(404, "not_found", _("No such export. Exports are deleted after they expire."))
    if data_rights.export_is_expired(export):
        return api_error(410, "export_expired", _expired_message())
    return JsonResponse(_export_json(export))


@sensitive_post_parameters("password")
@never_cache
@api_view(("POST",))
def api_erase(request):
    body = _json_body(request)
    if body is None:
        return api_error(400, "invalid_input", _("The body must be a JSON object."))
    if not isinstance(body.get("password"), str) or not isinstance(body.get("confirm"), str):
        return api_error(400, "invalid_input", _('Send {"password": "...", "confirm": "ERASE"}.'))
    form = EraseForm({"password": body["password"], "confirm": body["confirm"]}, request=request)
    if not form.is_valid():
        errors = form.errors.as_data()
        if "confirm" in errors:
            code, error = "confirmation_required", errors["confirm"][0]
        else:
            error = next(iter(errors.values()))[0]
            code = "wrong_password" if error.code == "wrong_password" else "invalid_input"
        return api_error(400, code, str(error.message % (error.params or {})))
    try:
        erasure = _start_erasure(request)
    except data_rights.DataRightsError as exc:
        return api_error(409, exc.code, exc.message)
    receipt = reverse("data_rights_receipt", kwargs={"token": data_rights.erasure_receipt_token(erasure)})
    return JsonResponse({"erasure_id": str(erasure.id), "status": erasure.status, "receipt_url": receipt}, status=202)


def _conversation_download(request, conversation_id, kind: str):
    conversation = conversation_rights.conversation_get_for_owner(
        conversation_id=conversation_id, user_id=request.user.pk
    )
    if conversation is None:
        return api_error(404, "not_found", _("No such conversation."))
    stem = conversation_rights.conversation_file_stem(conversation)
    if kind == "md":
        chunks = conversation_rights.conversation_markdown_chunks(conversation=conversation, tz_name=request.user.timezone)
        content_type = "text/markdown; charset=utf-8"
    else:
        chunks = conversation_rights.conversation_json_chunks(conversation=conversation)
        content_type = "application/json; charset=utf-8"
    # One conversation is small enough to build whole; under ASGI a streaming body from a sync
    # iterator would be gathered into memory anyway.
    response = HttpResponse("".join(chunks), content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(True, f"{stem}.{kind}")  # non-ASCII titles too
    response["Cache-Control"] = "private, no-store"
    return response


@never_cache
@api_view(("GET", "HEAD"))
def api_conversation_markdown(request, conversation_id):
    return _conversation_download(request, conversation_id, "md")


@never_cache
@api_view(("GET", "HEAD"))
def api_conversation_json(request, conversation_id):
    return _conversation_download(request, conversation_id, "json")


data_rights_urlpatterns = [
    path("data/", data_home, name="data_rights_home"),
    path("data/export/", data_export_start, name="data_rights_export"),
    path("data/export/<uuid:export_id>/download/", data_export_download, name="data_rights_download"),
    path("data/erase/", data_erase, name="data_rights_erase"),
    path("data/erased/<str:token>/", data_erasure_receipt, name="data_rights_receipt"),
]

data_rights_api_urlpatterns = [
    path("account/export/", api_export_start, name="api_account_export"),
    path("account/export/<uuid:export_id>/", api_export_status, name="api_account_export_status"),
    path("account/erase/", api_erase, name="api_account_erase"),
    path("conversations/<uuid:conversation_id>/export.md", api_conversation_markdown, name="api_conversation_export_md"),
    path("conversations/<uuid:conversation_id>/export.json", api_conversation_json, name="api_conversation_export_json"),
]
