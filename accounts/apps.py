import importlib

import axes.apps
from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def _reseed_site_state(sender, app_config=None, **kwargs):
    # After a flush the SiteState row is gone; put it back as the migration made it.
    from django.apps import apps

    importlib.import_module("accounts.migrations.0002_profile_model_validator_and_site_state").seed_site_state(apps, None)


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = _("Accounts")

    def ready(self) -> None:
        post_migrate.connect(_reseed_site_state, sender=self, dispatch_uid="accounts.reseed_site_state")


class AxesConfig(axes.apps.AppConfig):
    """django-axes under a name the admin can show in Korean too (it ships no Korean; its
    admin's words are in accounts/axes_strings.py, for our catalogue)."""

    verbose_name = _("Sign-in protection")
    # Not the config Django picks for "accounts" itself: that stays AccountsConfig (its ready()).
    default = False
