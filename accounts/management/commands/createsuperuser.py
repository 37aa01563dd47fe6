"""Django's createsuperuser, refusing the names sign-up refuses as soon as one is typed."""

from django.contrib.auth.management.commands import createsuperuser

from accounts import services


class Command(createsuperuser.Command):
    """Django checks a name for an exact match and the field's validators (mixed alphabets among
    them) only: "ALICE" beside "alice" failed at the insert with a traceback, and "раура1" beside
    "paypal" was made. Here it is refused with sign-up's message before anything else is asked
    (the interactive prompt asks again). accounts.services.user_create_superuser checks once more
    when the account is saved, under the look-alike lock."""

    def _validate_username(self, username, verbose_field_name, database):
        error = super()._validate_username(username, verbose_field_name, database)
        if error or not username:
            return error
        if reason := services.username_taken_reason(username=self.UserModel.normalize_username(username)):
            return f"Error: {reason}"
        return None
