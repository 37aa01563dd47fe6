"""Words of Django's own admin whose Korean in Django's catalogue is wrong, given again in ours:
LOCALE_PATHS is searched before Django's translations. Never imported: makemessages reads it.
tests/admin/test_admin_korean.py shows each one as a Korean administrator sees it."""

from django.utils.translation import gettext_noop as _

DJANGO_ADMIN_STRINGS = (
    # Django's Korean is "보기위한 1%s 를(을) 선택", with a stray "1": the title of every read-only
    # list (the audit log, the usage ledger, the daily usage).
    _("Select %s to view"),
    # Django's Korean is "뷰 %s", "view" spelt out in Hangul: the title of every read-only record
    # (an audit event, a ledger row, a staff member's view of a budget).
    _("View %s"),
)
