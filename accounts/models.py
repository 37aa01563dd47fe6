"""Who people are: the user, their teams and profile settings, and the audit log."""

import uuid
import zoneinfo

from confusable_homoglyphs import confusables
from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.contrib.auth.models import UserManager as DjangoUserManager
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from conversations.llm.model_ids import model_id_parse

from .lookalikes import username_lookalike_key

# What a taken name or address is refused with, wherever it is checked first (sign-up, the admin's
# forms, team creation) and by the constraints behind them: one wording for one rule.
USERNAME_TAKEN = _("This username is already taken.")
USERNAME_LOOKS_TAKEN = _(
    "This username looks the same as an existing username (letters of another alphabet or digits "
    "that look like its letters, such as a Cyrillic “р” for a Latin “p”, or “1” for “l”). Choose another."
)
EMAIL_TAKEN = _("An account with this email address already exists.")
TEAM_NAME_TAKEN = _("A team with this name already exists.")


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(_("Unknown time zone: %(tz)s"), params={"tz": value})


def validate_model_id(value: str) -> None:
    """`provider:model` (conversations.llm.model_ids, the grammar prices use too). Only the form
    is checked here: which models exist depends on prices and keys, which change at run time."""
    if model_id_parse(value) is None:
        raise ValidationError(
            _("Enter a model as provider:model, for example openai:gpt-4o-mini."), code="invalid_model"
        )


# Hangul fillers: letters to Unicode (so usernames may hold them), blank on the screen.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def validate_username_unmistakable(value: str) -> None:
    """Refuse a username that can pass for another on the screen: letters of one alphabet that
    look like another's mixed in ("аdmin" with a Cyrillic "а" reads as "admin" in every list an
    administrator checks), or blank letters. Latin mixed with Hangul stays allowed ("kim김"): they
    share no look-alikes. A name wholly in one alphabet may look like another name ("раура1" in
    Cyrillic, "paypal"): that depends on the names taken, so services.username_taken_reason asks."""
    if _BLANK_LETTERS.intersection(value) or confusables.is_dangerous(value, preferred_aliases=["latin", "hangul"]):
        raise ValidationError(
            _("This username mixes look-alike letters of different alphabets (such as a Cyrillic “а” among Latin letters). Use the letters of one alphabet."),
            code="confusable_username",
        )


RATE_LIMIT_HELP = _("At least 1. Empty: the site's default.")
TEAM_RATE_LIMIT_HELP = _("At least 1; the strictest of a member's own and their teams' limits applies. Empty: no team limit.")
_RATE_LIMITS_POSITIVE = (models.Q(requests_per_minute__isnull=True) | models.Q(requests_per_minute__gte=1)) & (
    models.Q(tokens_per_minute__isnull=True) | models.Q(tokens_per_minute__gte=1)
)


class UserManager(DjangoUserManager):
    """Django's. `manage.py createsuperuser` makes its account with create_superuser: that is
    handed to accounts.services.user_create_superuser, which refuses the names and emails sign-up
    refuses (a look-alike of a taken name among them), checked as sign-up checks them."""

    def create_superuser(self, username, email=None, password=None, **extra_fields):
        from .services import user_create_superuser  # services import this module

        return user_create_superuser(username=username, email=email, password=password, **extra_fields)


class User(AbstractUser):
    """The account. Profile settings live here: one row per person, no join on every request."""

    objects = UserManager()

    # AbstractUser's field, with look-alike names refused (sign-up, the admin, createsuperuser).
    username = models.CharField(
        _("username"),
        max_length=150,
        unique=True,
        help_text=_("Required. 150 characters or fewer. Letters, digits and @/./+/-/_ only."),
        validators=[UnicodeUsernameValidator(), validate_username_unmistakable],
        error_messages={"unique": _("A user with that username already exists.")},
    )
    # Equal for names that would look the same on the screen (lookalikes.username_lookalike_key):
    # how sign-up and the admin find an existing name a new one would pass for. Indexed, not
    # unique: a site may already hold such a pair ("user1" and "userl"), and the migration adding
    # it must not fail there; passing for someone needs a name that exists, which the check sees.
    username_lookalike = models.CharField(_("look-alike key"), max_length=64, editable=False, db_index=True, default="")
    display_name = models.CharField(_("display name"), max_length=80, blank=True)
    timezone = models.CharField(_("time zone"), max_length=64, default="UTC", validators=[validate_timezone])
    # Empty: follow the browser's Accept-Language.
    language = models.CharField(_("language"), max_length=8, blank=True, choices=settings.LANGUAGES)
    default_model = models.CharField(_("default model"), max_length=120, blank=True, validators=[validate_model_id])
    # Per-user overrides of the settings' rate limits; null means "use the default". 0 is
    # refused (validator and constraint): it reads as "blocked" to one operator and "unlimited"
    # to another; an account is blocked by deactivating it, spending by a budget of 0.
    requests_per_minute = models.PositiveIntegerField(
        _("requests per minute"), null=True, blank=True, validators=[MinValueValidator(1)], help_text=RATE_LIMIT_HELP
    )
    tokens_per_minute = models.PositiveIntegerField(
        _("tokens per minute"), null=True, blank=True, validators=[MinValueValidator(1)], help_text=RATE_LIMIT_HELP
    )

    class Meta:
        verbose_name = _("user")
        verbose_name_plural = _("users")
        constraints = [
            # Usernames and emails are unique whatever their letter case ("Alice" == "alice").
            models.UniqueConstraint(
                Lower("username"),
                name="user_username_ci_unique",
                violation_error_message=USERNAME_TAKEN,
            ),
            models.UniqueConstraint(
                Lower("email"),
                condition=~models.Q(email=""),
                name="user_email_ci_unique",
                violation_error_message=EMAIL_TAKEN,
            ),
            models.CheckConstraint(condition=_RATE_LIMITS_POSITIVE, name="user_rate_limits_positive"),
        ]

    def __str__(self) -> str:
        return self.username

    def save(self, *args, **kwargs) -> None:
        # Derived data, kept beside the value it derives from on every path that writes a username
        # (sign-up, the admin, createsuperuser, create_user): the rule using it is in services.
        update_fields = kwargs.get("update_fields")
        if update_fields is None or "username" in update_fields:
            self.username_lookalike = username_lookalike_key(self.username)
            if update_fields is not None:
                kwargs["update_fields"] = {*update_fields, "username_lookalike"}
        super().save(*args, **kwargs)

    @property
    def shown_name(self) -> str:
        return self.display_name or self.username


class Team(models.Model):
    name = models.CharField(_("name"), max_length=80)
    members = models.ManyToManyField(User, verbose_name=_("members"), through="TeamMembership", related_name="teams")
    # The team's rate limits tighten its members' (billing.limits); null: no team limit.
    requests_per_minute = models.PositiveIntegerField(
        _("requests per minute"), null=True, blank=True, validators=[MinValueValidator(1)], help_text=TEAM_RATE_LIMIT_HELP
    )
    tokens_per_minute = models.PositiveIntegerField(
        _("tokens per minute"), null=True, blank=True, validators=[MinValueValidator(1)], help_text=TEAM_RATE_LIMIT_HELP
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("team")
        verbose_name_plural = _("teams")
        constraints = [
            models.UniqueConstraint(
                Lower("name"), name="team_name_ci_unique", violation_error_message=TEAM_NAME_TAKEN
            ),
            models.CheckConstraint(condition=_RATE_LIMITS_POSITIVE, name="team_rate_limits_positive"),
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TeamMembership(models.Model):
    team = models.ForeignKey(Team, verbose_name=_("team"), on_delete=models.CASCADE)
    user = models.ForeignKey(User, verbose_name=_("user"), on_delete=models.CASCADE)
    joined_at = models.DateTimeField(_("joined at"), default=timezone.now)

    class Meta:
        verbose_name = _("team membership")
        verbose_name_plural = _("team memberships")
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="teammembership_unique")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.team_id}"


class SiteState(models.Model):
    """One row. `admin_claimed` flips once, by a conditional UPDATE, so exactly one first
    sign-up becomes the administrator however many arrive at the same moment."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    admin_claimed = models.BooleanField(default=False)

    class Meta:
        verbose_name = _("site state")
        verbose_name_plural = _("site state")
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="sitestate_singleton")]

    def __str__(self) -> str:
        return f"site state (admin claimed: {self.admin_claimed})"


class AuditEvent(models.Model):
    """Append-only: who did what to which object, and when. Ids only, never a secret or
    message text; the actor link survives erasure as a bare id."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(_("created at"), default=timezone.now, db_index=True)
    actor_id = models.BigIntegerField(_("actor id"), null=True, blank=True, db_index=True)
    action = models.CharField(_("action"), max_length=64, db_index=True)
    target_type = models.CharField(_("target type"), max_length=64, blank=True)
    target_id = models.CharField(_("target id"), max_length=64, blank=True, db_index=True)
    ip_address = models.GenericIPAddressField(_("IP address"), null=True, blank=True)
    data = models.JSONField(_("data"), default=dict, blank=True)

    class Meta:
        verbose_name = _("audit event")
        verbose_name_plural = _("audit log")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.action} {self.target_type}:{self.target_id}"


class DataExport(models.Model):
    """A zip of everything a person has here, built by Celery, private to them, expiring."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        RUNNING = "running", _("running")
        READY = "ready", _("ready")
        FAILED = "failed", _("failed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(User, verbose_name=_("user"), on_delete=models.CASCADE, related_name="exports")
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    progress = models.PositiveSmallIntegerField(default=0)  # percent
    file_name = models.CharField(max_length=200, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True)
    # The running build's claim, renewed as it writes: past lease_until its worker is taken for
    # dead and the build is started again. lease_token names the run holding it, so a run that
    # stalled past its lease and was replaced can no longer write progress or publish its file.
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)

    class Meta:
        verbose_name = _("data export")
        verbose_name_plural = _("data exports")
        ordering = ["-created_at"]
        constraints = [
            # Two requests at once: the second finds the first (the service returns its id).
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(status__in=["pending", "running"]), name="dataexport_one_active_per_user"
            ),
        ]

    def __str__(self) -> str:
        return f"export {self.id} ({self.status})"


class ErasureRequest(models.Model):
    """Tracks an erasure so it can resume after a crash. Holds the user's id only (never their
    name), and outlives the account; `receipt` lists what was removed, as counts."""

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        RUNNING = "running", _("running")
        DONE = "done", _("done")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.BigIntegerField(db_index=True)
    requested_by_id = models.BigIntegerField(null=True, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=Status.choices, default=Status.PENDING)
    steps_done = models.JSONField(default=list, blank=True)
    receipt = models.JSONField(default=dict, blank=True)
    # Cache key prefixes (stream buffers of the user's conversations, per-user keys) to sweep once
    # more at the very end, after a reply that was still streaming can no longer write. Ids only.
    cache_prefixes = models.JSONField(default=list, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=200, blank=True)  # exception class only, never data
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The running erasure's claim, renewed between steps and batches: past lease_until its worker
    # is taken for dead and the next run resumes. lease_token names the run holding it, so a run
    # that stalled past its lease and was replaced can no longer record a step.
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)

    class Meta:
        verbose_name = _("erasure")
        verbose_name_plural = _("erasures")
        ordering = ["-created_at"]
        constraints = [
            # Asking twice (two tabs, the admin and the user) resumes the one open erasure.
            models.UniqueConstraint(
                fields=["user_id"], condition=models.Q(status__in=["pending", "running"]), name="erasurerequest_one_open_per_user"
            ),
        ]

    def __str__(self) -> str:
        return f"erasure {self.id} of user #{self.user_id} ({self.status})"
