"""What it costs and who pays: prices, provider keys, the usage ledger and its daily rollup,
budgets and their reservations."""

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .money import money_str

# Money: USD with 10 decimal places (a token of a cheap model costs ~1e-8 USD), 20 digits.
MONEY = {"max_digits": 20, "decimal_places": 10}
PRICE = {"max_digits": 14, "decimal_places": 6}  # USD per million tokens
ZERO = Decimal("0")


class Provider(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    DEMO = "demo", "Demo"


class ModelPrice(models.Model):
    """The price of a model from `effective_from` on; the newest row not in the future applies."""

    provider = models.CharField(_("provider"), max_length=16, choices=Provider.choices)
    model = models.CharField(_("model"), max_length=120)
    label = models.CharField(_("label"), max_length=120, blank=True)
    input_per_million = models.DecimalField(_("input price per million tokens (USD)"), **PRICE)
    output_per_million = models.DecimalField(_("output price per million tokens (USD)"), **PRICE)
    cached_input_per_million = models.DecimalField(
        _("cached input price per million tokens (USD)"), **PRICE, null=True, blank=True
    )
    context_window = models.PositiveIntegerField(_("context window (tokens)"), default=128_000)
    max_output_tokens = models.PositiveIntegerField(_("maximum output tokens"), default=4096)
    enabled = models.BooleanField(_("enabled"), default=True)
    effective_from = models.DateTimeField(_("effective from"), default=timezone.now)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("model price")
        verbose_name_plural = _("model prices")
        indexes = [models.Index(fields=["provider", "model", "-effective_from"], name="price_lookup")]
        constraints = [
            models.UniqueConstraint(fields=["provider", "model", "effective_from"], name="modelprice_unique_from"),
            models.CheckConstraint(
                condition=models.Q(input_per_million__gte=0, output_per_million__gte=0)
                & (models.Q(cached_input_per_million__isnull=True) | models.Q(cached_input_per_million__gte=0)),
                name="modelprice_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.model_id

    @property
    def model_id(self) -> str:
        return f"{self.provider}:{self.model}"


class ProviderKey(models.Model):
    """A provider API key. Rules live in billing.keys; the secret is a MultiFernet token
    (billing.crypto) decrypted only into a KeyLease for one call."""

    class Origin(models.TextChoices):
        MANUAL = "manual", _("added by an administrator")
        ENV = "env", _("imported from the environment")

    class State(models.TextChoices):
        ENABLED = "enabled", _("enabled")
        DRAINING = "draining", _("draining")
        DISABLED = "disabled", _("disabled")

    class Health(models.TextChoices):
        HEALTHY = "healthy", _("healthy")
        COOLING_DOWN = "cooling_down", _("cooling down")
        FAILING = "failing", _("failing")
        INVALID = "invalid", _("invalid")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(_("name"), max_length=80)
    provider = models.CharField(_("provider"), max_length=16, choices=[c for c in Provider.choices if c[0] != "demo"])
    # MultiFernet token of the secret; never plaintext. See billing.crypto.
    secret_encrypted = models.TextField(_("encrypted secret"), editable=False)
    secret_last4 = models.CharField(_("secret's last four characters"), max_length=4, editable=False)
    # Bumped when the secret is replaced, and carried by each KeyLease: a 401 from a call that
    # still used the old secret must not mark the new one invalid.
    secret_version = models.PositiveIntegerField(_("secret version"), default=1, editable=False)
    base_url = models.CharField(_("base URL"), max_length=300, blank=True)
    priority = models.IntegerField(_("priority"), default=100)
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.ENABLED)
    health = models.CharField(_("health"), max_length=16, choices=Health.choices, default=Health.HEALTHY)
    cooldown_until = models.DateTimeField(_("cooling down until"), null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(_("consecutive failures"), default=0)
    last_error_kind = models.CharField(_("last error kind"), max_length=32, blank=True)
    last_used_at = models.DateTimeField(_("last used at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    # When `state` last changed: a draining key is disabled once every reply that could still be
    # using it has ended (billing.keys.keys_finish_draining).
    state_changed_at = models.DateTimeField(_("state changed at"), default=timezone.now)
    # "env" rows are the ones imported from OPENAI_API_KEY/ANTHROPIC_API_KEY; a changed variable
    # rotates them, and only them.
    origin = models.CharField(_("origin"), max_length=8, choices=Origin.choices, default=Origin.MANUAL)

    class Meta:
        verbose_name = _("provider key")
        verbose_name_plural = _("provider keys")
        constraints = [
            models.UniqueConstraint(fields=["name"], name="providerkey_name_unique"),
            # A row without a ciphertext could never be used, and would look like a usable key.
            models.CheckConstraint(condition=~models.Q(secret_encrypted=""), name="providerkey_secret_present"),
        ]
        indexes = [models.Index(fields=["provider", "state", "-priority"], name="providerkey_choose")]
        ordering = ["provider", "-priority", "name"]
        # The base URL decides where a secret is sent (and what the server can reach): separate
        # from plain change rights. Superusers hold it implicitly.
        permissions = [("set_providerkey_base_url", "Can set a provider key's base URL")]

    def __str__(self) -> str:
        return f"{self.name} ({self.provider}, …{self.secret_last4})"


class UsageRecord(models.Model):
    """Append-only: one row per provider call, retries and failovers included. User, team,
    conversation and message are nullable so erasure can cut the link and keep the money."""

    class Outcome(models.TextChoices):
        OK = "ok", _("ok")
        CANCELLED = "cancelled", _("cancelled")
        ERROR = "error", _("error")

    id = models.BigAutoField(primary_key=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    team = models.ForeignKey(
        "accounts.Team", verbose_name=_("team"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    conversation_id = models.UUIDField(_("conversation id"), null=True, blank=True)
    message_id = models.UUIDField(_("message id"), null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(_("attempt"), default=1)
    provider = models.CharField(_("provider"), max_length=16)
    model = models.CharField(_("model"), max_length=120)
    key = models.ForeignKey(
        ProviderKey, verbose_name=_("key"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    input_tokens = models.PositiveIntegerField(_("input tokens"), default=0)
    output_tokens = models.PositiveIntegerField(_("output tokens"), default=0)
    cached_tokens = models.PositiveIntegerField(_("cached tokens"), default=0)
    cost = models.DecimalField(_("cost"), **MONEY, default=ZERO)
    estimated = models.BooleanField(_("estimated"), default=False)
    ttft_ms = models.PositiveIntegerField(_("time to first token (ms)"), null=True, blank=True)
    latency_ms = models.PositiveIntegerField(_("latency (ms)"), null=True, blank=True)
    outcome = models.CharField(_("outcome"), max_length=16, choices=Outcome.choices)
    error_kind = models.CharField(_("error kind"), max_length=32, blank=True)

    class Meta:
        verbose_name = _("usage record")
        verbose_name_plural = _("usage ledger")
        indexes = [
            models.Index(fields=["user", "created_at"], name="usage_user_time"),
            models.Index(fields=["team", "created_at"], name="usage_team_time"),
            models.Index(fields=["created_at"], name="usage_time"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["message_id", "attempt"], condition=models.Q(message_id__isnull=False), name="usagerecord_message_attempt_unique"
            ),
            models.CheckConstraint(condition=models.Q(cost__gte=0), name="usagerecord_cost_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.provider}:{self.model} {self.outcome} {money_str(self.cost)} USD"


class DailyUsage(models.Model):
    """Rollup of the ledger, day x user x team x model, upserted in the ledger's transaction."""

    day = models.DateField(_("day"))
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    team = models.ForeignKey(
        "accounts.Team", verbose_name=_("team"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    provider = models.CharField(_("provider"), max_length=16)
    model = models.CharField(_("model"), max_length=120)
    requests = models.PositiveIntegerField(_("requests"), default=0)
    errors = models.PositiveIntegerField(_("errors"), default=0)
    input_tokens = models.BigIntegerField(_("input tokens"), default=0)
    output_tokens = models.BigIntegerField(_("output tokens"), default=0)
    cached_tokens = models.BigIntegerField(_("cached tokens"), default=0)
    cost = models.DecimalField(_("cost"), **MONEY, default=ZERO)

    class Meta:
        verbose_name = _("daily usage")
        verbose_name_plural = _("daily usage")
        indexes = [
            models.Index(fields=["day"], name="daily_day"),
            models.Index(fields=["user", "day"], name="daily_user_day"),
            models.Index(fields=["team", "day"], name="daily_team_day"),
        ]
        constraints = [
            # One row per (day, user, team, model). SQL treats NULLs as distinct, so the team is
            # compared through COALESCE(team, 0): a user without a team still gets exactly one
            # row, on Postgres and SQLite alike, and a concurrent first insert of the same key
            # fails instead of doubling (billing.ledger retries it as an update).
            # Rows of erased users (user NULL) are deliberately NOT unique: erasing two users
            # with usage on the same day must not collide. Every reader sums, so several
            # user-NULL rows for one key are still exact.
            models.UniqueConstraint(
                "day",
                "user",
                Coalesce("team", models.Value(0), output_field=models.BigIntegerField()),
                "provider",
                "model",
                condition=models.Q(user__isnull=False),
                name="dailyusage_unique",
            ),
            models.CheckConstraint(condition=models.Q(cost__gte=0), name="dailyusage_cost_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.provider}:{self.model} {money_str(self.cost)} USD"


class Budget(models.Model):
    class Period(models.TextChoices):
        DAY = "day", _("day")
        WEEK = "week", _("week")
        MONTH = "month", _("month")
        TOTAL = "total", _("total")

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    team = models.ForeignKey(
        "accounts.Team", verbose_name=_("team"), null=True, blank=True, on_delete=models.CASCADE, related_name="budgets"
    )
    period = models.CharField(_("period"), max_length=8, choices=Period.choices)
    limit = models.DecimalField(_("limit"), **MONEY)
    warn_ratio = models.DecimalField(_("warning ratio"), max_digits=4, decimal_places=3, default=Decimal("0.8"))
    # The calendar periods are counted in, pinned when the budget is set (the user's time zone,
    # UTC for a team): a user editing their profile time zone cannot restart a day early.
    time_zone = models.CharField(_("time zone"), max_length=64, default="UTC")
    # The running period: its start, what was settled in it, and what is reserved right now.
    period_start = models.DateTimeField(_("period start"), null=True, blank=True)
    spent = models.DecimalField(_("spent"), **MONEY, default=ZERO)
    reserved = models.DecimalField(_("held"), **MONEY, default=ZERO)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("budget")
        verbose_name_plural = _("budgets")
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(user__isnull=False, team__isnull=True) | models.Q(user__isnull=True, team__isnull=False)),
                name="budget_exactly_one_owner",
            ),
            models.UniqueConstraint(
                fields=["user", "period"],
                condition=models.Q(user__isnull=False),
                name="budget_user_period_unique",
                violation_error_message=_("This person already has a budget for this period: change that one."),
            ),
            models.UniqueConstraint(
                fields=["team", "period"],
                condition=models.Q(team__isnull=False),
                name="budget_team_period_unique",
                violation_error_message=_("This team already has a budget for this period: change that one."),
            ),
            models.CheckConstraint(
                condition=models.Q(limit__gte=0, spent__gte=0, reserved__gte=0), name="budget_amounts_non_negative"
            ),
        ]

    def __str__(self) -> str:
        # Shown in the admin history; erasure finds a person's entries by "user <username> /"
        # (billing.data_rights._scrub_budget_admin_log).
        owner = self.user if self.user_id else self.team
        return f"{self.scope} {owner} / {self.period}: {money_str(self.limit)} USD"

    @property
    def scope(self) -> str:
        return "user" if self.user_id else "team"


class Reservation(models.Model):
    """A worst-case hold on every budget covering a request, settled to the real cost after."""

    class State(models.TextChoices):
        HELD = "held", _("held")
        SETTLED = "settled", _("settled")
        EXPIRED = "expired", _("expired")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"), null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    budgets = models.ManyToManyField(Budget, verbose_name=_("budgets"), related_name="reservations")
    amount = models.DecimalField(_("amount"), **MONEY)
    settled_amount = models.DecimalField(_("settled amount"), **MONEY, null=True, blank=True)
    state = models.CharField(_("state"), max_length=8, choices=State.choices, default=State.HELD)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    # After this a hold is released by billing.tasks.reservations_expire (its process died).
    expires_at = models.DateTimeField(_("expires at"), )
    settled_at = models.DateTimeField(_("settled at"), null=True, blank=True)

    class Meta:
        verbose_name = _("budget reservation")
        verbose_name_plural = _("budget reservations")
        indexes = [models.Index(fields=["state", "expires_at"], name="reservation_state_expiry")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(amount__gte=0)
                & (models.Q(settled_amount__isnull=True) | models.Q(settled_amount__gte=0)),
                name="reservation_amounts_non_negative",
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.state} {self.amount} USD"


from .models_stats import KeyDailyStats, LatencyBucket  # noqa: E402,F401  (dashboard rollups, issue 7)
