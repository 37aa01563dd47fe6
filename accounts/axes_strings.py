"""The words django-axes's admin shows (its models' and admin's labels), marked for our
catalogue: axes ships no Korean, and LOCALE_PATHS is searched before an app's own translations,
so an administrator reading Korean sees these in Korean too. Never imported: makemessages reads
it. Kept to the axes version in requirements.txt; tests/admin/test_admin_labels_korean.py fails
when a label axes shows has no Korean."""

from django.utils.translation import gettext_noop as _

AXES_STRINGS = (
    _("access attempt"), _("access attempts"), _("access failure"), _("access failures"),
    _("access log"), _("access logs"), _("access attempt expiration"), _("access attempt expirations"),
    _("Access Attempt"), _("Access lock out"), _("Attempt Remaining"), _("Attempt Time"),
    _("Clean up expired attempts"), _("Expires At"), _("Failed Logins"), _("Form Data"), _("GET Data"),
    _("HTTP Accept"), _("IP Address"), _("Locked Out"), _("Logout Time"), _("Meta Data"), _("Not set"),
    _("POST Data"), _("Path"), _("Session key hash (sha256)"),
    _("The time when access attempt expires and is no longer valid."), _("User Agent"), _("Username"),
)  # fmt: skip
