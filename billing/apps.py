import importlib

from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_delete
from django.utils.translation import gettext_lazy as _


def _reseed_prices(sender, app_config=None, **kwargs):
    # `flush` (and the test runner's flush between transactional tests) empties the table the
    # seed migration filled; post_migrate follows every flush, so the seed is put back. It only
    # adds rows that are missing, never changes an operator's prices.
    from django.apps import apps

    seed = importlib.import_module("billing.migrations.0003_seed_prices").seed
    seed(apps, None)


def _fold_team_usage(sender, instance, **kwargs):
    # A team's delete runs this inside Django's delete transaction, before its SET NULLs: on a
    # signal, not in the team admin, because every way of deleting a team (admin page, bulk
    # action, shell) must keep the rollup unique. The rule itself is billing's service.
    from .data_rights import usage_forget_team

    usage_forget_team(team_id=instance.pk)


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = _("Billing")

    def ready(self) -> None:
        post_migrate.connect(_reseed_prices, sender=self, dispatch_uid="billing.reseed_prices")
        pre_delete.connect(_fold_team_usage, sender="accounts.Team", dispatch_uid="billing.fold_team_usage")
