import importlib

from django.apps import AppConfig
from django.db.models.signals import post_migrate
from django.utils.translation import gettext_lazy as _


def _reseed_prices(sender, app_config=None, **kwargs):
    # `flush` (and the test runner's flush between transactional tests) empties the table the
    # seed migration filled; post_migrate follows every flush, so the seed is put back. It only
    # adds rows that are missing, never changes an operator's prices.
    from django.apps import apps

    seed = importlib.import_module("billing.migrations.0003_seed_prices").seed
    seed(apps, None)


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = _("Billing")

    def ready(self) -> None:
        post_migrate.connect(_reseed_prices, sender=self, dispatch_uid="billing.reseed_prices")
