"""Admin registrations of the billing app. (billing helper: prices, budgets; keys: admin_keys.)"""

from . import admin_keys  # noqa: F401 - registers the ProviderKey admin
