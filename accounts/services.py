"""Writes about people: sign-up (and the first administrator), profile settings, teams.

Views, admin actions and commands parse and authorize, then call one of these."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import math
import re
import time
from collections.abc import Collection

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from conversations import sockets

from .audit import audit_record
from .lookalikes import username_lookalike_key
from .models import (
    EMAIL_TAKEN,
    TEAM_NAME_TAKEN,
    USERNAME_LOOKS_TAKEN,
    USERNAME_TAKEN,
    SiteState,
    Team,
    TeamMembership,
    User,
)

logger = logging.getLogger(__name__)

_UNSET = object()


class SignupClosed(ValidationError):
    """Sign-up is closed (SIGNUP_OPEN=false): only an administrator makes accounts."""


class SignupThrottled(ValidationError):
    """Too many sign-ups from this client address were refused for a taken name or email this
    hour (SIGNUP_REFUSALS_PER_HOUR). `retry_after`: whole seconds until the hour is over."""

    def __init__(self, *, retry_after: int) -> None:
        minutes = max(1, math.ceil(retry_after / 60))
        message = ngettext(
            "Too many refused sign-ups from your address. Try again in %(minutes)s minute.",
            "Too many refused sign-ups from your address. Try again in %(minutes)s minutes.",
            minutes,
        ) % {"minutes": minutes}
        super().__init__(message, code="throttled")
        self.retry_after = retry_after


class OnlyAdmin(Exception):
    """Taking these accounts away (disabling, erasing, demoting) would leave the site with no
    active administrator, and nobody could make another. `users`: the administrators in question."""

    def __init__(self, users: list[User]) -> None:
        super().__init__(", ".join(u.username for u in users))
        self.users = users


# An administrator is active, superuser and staff: the admin, where others are made
# administrators, lets in staff only, so a superuser without staff status cannot make another.
ADMINISTRATOR = {"is_active": True, "is_superuser": True, "is_staff": True}


def is_administrator(*, is_active: bool, is_superuser: bool, is_staff: bool) -> bool:
    """Whether an account with these flags is an administrator (ADMINISTRATOR)."""
    return is_active and is_superuser and is_staff


def user_only_admins_among(*, user_ids: Collection[int], lock: bool = False) -> list[User]:
    """The site's active administrators (superusers) when all of them are among `user_ids`: taking
    those accounts away would leave none. Empty when another active administrator would remain.
    An administrator is as ADMINISTRATOR says.

    The one rule behind the Disable action, the user form and erasure. With `lock` (inside the
    transaction that makes the change) the administrators' rows are locked in pk order, so two
    operators taking away the last two administrators at once queue, and the second is refused."""
    admins = User.objects.filter(**ADMINISTRATOR).order_by("pk")
    if lock:
        admins = admins.select_for_update()
    found = list(admins)  # a handful of rows on any site
    ids = set(user_ids)
    return found if found and all(admin.pk in ids for admin in found) else []


def _others(exclude_pk: int | None):
    return User.objects.exclude(pk=exclude_pk) if exclude_pk is not None else User.objects.all()


def identity_taken(*, field: str, value: str, exclude_pk: int | None = None) -> bool:
    """Some account (other than `exclude_pk`) has `field` ("username" or "email") equal to
    `value` in any letter case, in every script. Sign-up and the admin's user forms both ask."""
    others = _others(exclude_pk)
    if connection.vendor == "sqlite":
        # SQLite's LOWER (behind iexact, and user_username_ci_unique/user_email_ci_unique there)
        # folds ASCII letters only: "Émile" would pass beside "émile". Django's REGEXP on SQLite
        # is Python's re, whose (?i) folds every script. A scan, fine for the embedded database.
        return others.filter(**{f"{field}__iregex": rf"^{re.escape(value)}\Z"}).exists()
    return others.filter(**{f"{field}__iexact": value}).exists()


# The first key of PostgreSQL's two-key advisory locks that username_taken_reason takes: the
# second is part of a name's look-alike key. Any fixed number no other lock of this site uses.
_LOOKALIKE_LOCK_SPACE = 0x5061726C  # "Parl"


def _username_lookalike_lock(key: str) -> None:
    """Hold, until the surrounding transaction ends, the lock of every name whose look-alike key
    is `key`. The key is indexed but not unique (models.User.username_lookalike says why), so
    nothing in the database stops two transactions that each checked and found no look-alike from
    both inserting one: under READ COMMITTED neither sees the other's row. With the lock, the
    second to come waits until the first commits, and its check, a new statement, then sees the
    first's row. Different keys do not wait for each other (32 bits of the key: two unrelated
    names sharing a lock only queue). SQLite needs none: its IMMEDIATE transactions take the one
    write lock of the database at BEGIN, before any check, so checks and inserts queue already."""
    if connection.vendor != "postgresql":
        return
    if not connection.in_atomic_block:
        raise RuntimeError("the look-alike lock is held until the transaction ends: take it inside transaction.atomic()")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOOKALIKE_LOCK_SPACE, int(key[:8], 16) - 2**31])


def username_taken_reason(*, username: str, exclude_pk: int | None = None, lock: bool = False) -> str | None:
    """Why no account (other than `exclude_pk`) may take `username`, or None: another has it in
    some letter case, or has one that would look the same on the screen (all-Cyrillic "раура1"
    beside "paypal"), and people would take one for the other. Sign-up, the admin's user forms
    and createsuperuser all ask.

    With `lock` (inside the transaction that then saves the name) the answer holds until that
    transaction ends: another writer of a look-alike name waits for it (_username_lookalike_lock)."""
    key = username_lookalike_key(username)
    if lock:
        _username_lookalike_lock(key)
    if identity_taken(field="username", value=username, exclude_pk=exclude_pk):
        return USERNAME_TAKEN
    if _others(exclude_pk).filter(username_lookalike=key).exists():
        return USERNAME_LOOKS_TAKEN
    return None


def _check_identity_free(*, username: str, email: str, lock: bool = False) -> None:
    # The database holds the same rule for names and emails in any letter case
    # (user_username_ci_unique, user_email_ci_unique); checking first gives a message a person can
    # act on instead of a constraint name. For look-alikes only the check stands: see `lock`.
    errors: dict[str, list[str]] = {}
    if reason := username_taken_reason(username=username, lock=lock):
        errors["username"] = [reason]
    if email and identity_taken(field="email", value=email):
        errors["email"] = [EMAIL_TAKEN]
    if errors:
        raise ValidationError(errors)


def user_signup(*, username: str, email: str, password: str, language: str = "", ip_address: str | None = None) -> User:
    """Make an account. The first account ever made becomes the administrator (staff and
    superuser): exactly one, however many sign up at the same moment.

    Raises SignupClosed when sign-up is closed, ValidationError for a taken name or email, a weak
    password or an invalid field; nothing is written then."""
    if not settings.SIGNUP_OPEN:
        raise SignupClosed(_("Sign-up is closed on this site. Ask an administrator for an account."), code="closed")
    # NFKC first, as full_clean() will before the insert: a fullwidth "ＡLICE" is stored as "ALICE",
    # so it must be checked as "ALICE" (else the constraint, not the check, refuses it: a 500).
    username, email = User.normalize_username(username.strip()), email.strip()
    # Before any check answers: a client past the limit learns nothing more (SignupThrottled).
    _signup_throttle_check(ip_address=ip_address)
    _signup_identity_check(username=username, email=email, ip_address=ip_address)
    user = User(username=username, email=email, language=language if language in dict(settings.LANGUAGES) else "")
    validate_password(password, user=user)
    user.set_password(password)
    user.full_clean(exclude=["password"], validate_constraints=False)
    try:
        with transaction.atomic():
            # Again inside the transaction, locked: on SQLite (IMMEDIATE transactions) it holds the
            # write lock, so no other sign-up inserts between this check and ours. That is what keeps
            # non-ASCII case variants apart there; on PostgreSQL the constraints do, and for
            # look-alikes the lock on the name's look-alike key.
            _signup_identity_check(username=username, email=email, ip_address=ip_address, lock=True)
            user.save()
            made_admin = _claim_first_admin(user=user)
    except IntegrityError:
        # Someone took the same name or email (in another letter case) between the check and the
        # insert: the case-insensitive unique constraints stopped it. Report it like the check does.
        _signup_identity_check(username=username, email=email, ip_address=ip_address)
        raise
    audit_record(action="user.signup", actor=user, target=user, ip_address=ip_address)
    if made_admin:
        audit_record(action="user.first_admin", actor=user, target=user, ip_address=ip_address)
        logger.info("first account %s became the administrator", user.pk)
    return user


def user_create_superuser(*, username: str, email: str | None = None, password: str | None = None, **extra_fields) -> User:
    """An administrator made by `manage.py createsuperuser` (through User.objects.create_superuser),
    refused as sign-up refuses: a name taken in another letter case or looking like a taken one, or
    a taken email, with sign-up's messages (ValidationError: the command prints it on one line and
    exits non-zero). Checked again under the look-alike lock, in the transaction that saves: a
    sign-up or an admin's rename of a look-alike at the same moment waits for it, and is then refused."""
    from django.contrib.auth.models import UserManager as DjangoUserManager

    username = User.normalize_username(username)
    with transaction.atomic():
        _check_identity_free(username=username, email=(email or "").strip(), lock=True)
        # Django's own, past User.objects' override that called this.
        return DjangoUserManager.create_superuser(User.objects, username, email, password, **extra_fields)


# Sign-ups one client address may have refused for a taken name or email in an hour; past it,
# every sign-up from there is refused until the hour is over. Sign-up has to say that a name or an
# email is taken (the account is signed in at once, and no mail need be sent to confirm it), so it
# is a way to ask whether someone has an account here; this keeps the asking to a trickle. Ten is
# more than a person choosing a name needs; successful sign-ups and mistyped forms do not count.
SIGNUP_REFUSALS_PER_HOUR = 10
_SIGNUP_WINDOW = 3600


def _clock() -> float:
    return time.time()  # a function so tests can move time


def _signup_refusals_key(*, ip_address: str, window: int) -> str:
    """By a hash of the client's network, so no address sits in the cache. An IPv6 client is
    given a whole /64 (a home, a phone, a server): each of its addresses counts as the one."""
    try:
        address = ipaddress.ip_address(ip_address)
    except ValueError:  # what a misconfigured proxy put in X-Forwarded-For: counted as it is
        network = ip_address
    else:
        network = str(ipaddress.ip_network(f"{address}/64", strict=False)) if address.version == 6 else str(address)
    return f"accounts:signup-refusals:{hashlib.sha256(network.encode()).hexdigest()}:{window}"


def _signup_throttle_check(*, ip_address: str | None) -> None:
    """Raise SignupThrottled when `ip_address` has had SIGNUP_REFUSALS_PER_HOUR sign-ups refused in
    this clock hour. None (no client: a command, a test) is not throttled. A cache fault lets the
    sign-up through: a person kept from signing up matters more than the probing the fault makes
    possible for its duration (as for password-reset mails)."""
    if not ip_address:
        return
    now = _clock()
    window = int(now // _SIGNUP_WINDOW)
    try:
        refused = cache.get(_signup_refusals_key(ip_address=ip_address, window=window)) or 0
    except Exception:  # noqa: BLE001 - see above
        logger.warning("sign-up throttle unavailable (cache fault); not throttling")
        return
    if refused >= SIGNUP_REFUSALS_PER_HOUR:
        raise SignupThrottled(retry_after=max(1, math.ceil((window + 1) * _SIGNUP_WINDOW - now)))


def _signup_refusal_count(*, ip_address: str | None) -> None:
    if not ip_address:
        return
    key = _signup_refusals_key(ip_address=ip_address, window=int(_clock() // _SIGNUP_WINDOW))
    try:
        cache.add(key, 0, timeout=_SIGNUP_WINDOW + 60)  # kept past its hour's end, then gone
        cache.incr(key)
    except Exception:  # noqa: BLE001 - see _signup_throttle_check
        logger.warning("sign-up throttle unavailable (cache fault); refusal not counted")


def _signup_identity_check(*, username: str, email: str, ip_address: str | None, lock: bool = False) -> None:
    """_check_identity_free, counting a refusal against the client's address."""
    try:
        _check_identity_free(username=username, email=email, lock=lock)
    except ValidationError:
        _signup_refusal_count(ip_address=ip_address)
        raise


def _claim_first_admin(*, user: User) -> bool:
    """Inside the sign-up transaction: flip SiteState.admin_claimed with a conditional UPDATE.
    Of any number of concurrent callers exactly one sees one row updated (the others wait on the
    row lock, then find the condition false)."""
    # The row is seeded by a migration; a flushed database (tests, a reset) makes it again.
    SiteState.objects.get_or_create(pk=1)
    if not SiteState.objects.filter(pk=1, admin_claimed=False).update(admin_claimed=True):
        return False
    if User.objects.filter(is_superuser=True).exclude(pk=user.pk).exists():
        return False  # an administrator was made with createsuperuser before any sign-up
    user.is_staff = user.is_superuser = True
    user.save(update_fields=["is_staff", "is_superuser"])
    return True


def default_model_check(*, model_id: str) -> None:
    """Raise ValidationError when `model_id` cannot be a default model: new conversations start
    on it, and a model without a price in force (or with its price disabled) is refused at every
    turn (billing.prices.price_for, model_unavailable). Empty means "the site's default": fine."""
    from billing.prices import price_for  # billing's service; its models load after accounts'

    if model_id and price_for(model_id=model_id) is None:
        raise ValidationError(
            _(
                "The model %(model)s has no price (or its price is disabled), so new conversations could not "
                "use it. Choose a model that has a price, or set its price first."
            ),
            code="unpriced_model",
            params={"model": model_id},
        )


def user_update_profile(
    *,
    user: User,
    display_name: str | object = _UNSET,
    timezone: str | object = _UNSET,
    language: str | object = _UNSET,
    default_model: str | object = _UNSET,
) -> User:
    """Change the given profile settings (the others stay). Raises ValidationError and saves
    nothing when one is invalid."""
    changes = {
        name: value
        for name, value in {
            "display_name": display_name,
            "timezone": timezone,
            "language": language,
            "default_model": default_model,
        }.items()
        if value is not _UNSET
    }
    if not changes:
        return user
    before = {name: getattr(user, name) for name in changes}
    for name, value in changes.items():
        setattr(user, name, value.strip() if isinstance(value, str) else value)
    try:
        user.full_clean(exclude=[f.name for f in User._meta.fields if f.name not in changes], validate_unique=False)
        # Only a new choice: a saved default whose price went since is the chat's to refuse,
        # and must not block saving the rest of the profile.
        if "default_model" in changes and user.default_model != before["default_model"]:
            try:
                default_model_check(model_id=user.default_model)
            except ValidationError as exc:
                raise ValidationError({"default_model": exc.error_list}) from None
    except ValidationError:
        for name, value in before.items():
            setattr(user, name, value)
        raise
    user.save(update_fields=list(changes))
    return user


def user_password_change(*, user: User, password: str) -> User:
    """Set the user's new password (already validated by the form). Every session signed in with
    the old one stops signing in (Django's session hash changes); their open chat sockets are
    told at once rather than at their next frame or heartbeat. The caller keeps its own session
    with update_session_auth_hash, which gives it a new key: its sockets close too, and the page
    reconnects signed in."""
    user.set_password(password)
    with transaction.atomic():
        user.save(update_fields=["password"])
        sockets.user_sockets_close(user_id=user.pk)
    return user


def password_reset_request(*, email: str, domain: str, use_https: bool) -> None:
    """Queue the password-reset mail for `email`, whether or not an account has it: the request
    does the same work either way, so neither its answer nor its timing tells which addresses
    have an account (mailing in the request took as long as the mail server for a known one).
    The task makes the link itself: no reset token passes through the broker. (On the embedded
    default, with no broker, tasks run eagerly at commit: the mail still goes out in the request.)"""
    from .tasks import password_reset_send_task  # the tasks module imports the services

    if not _password_reset_mail_allowed(email=email):
        logger.info("password reset not mailed: %s asked for that address this hour", PASSWORD_RESET_MAILS_PER_HOUR)
        return
    transaction.on_commit(lambda: password_reset_send_task.delay(email, domain, use_https), robust=True)


# Reset mails to one address in an hour. Past it, the form still says "sent" and mails nothing:
# anyone can type someone's address, and the form must not become a way to flood their inbox.
PASSWORD_RESET_MAILS_PER_HOUR = 3


def _password_reset_mail_allowed(*, email: str) -> bool:
    """Counts this request against the address (known or not: the same work either way), by a
    hash of it, so no address sits in the cache. A cache fault lets the mail go: a person locked
    out of their account matters more than a flood the fault makes possible for its duration."""
    address = email.strip().lower().encode()
    key = "password-reset:" + hashlib.sha256(address).hexdigest()
    try:
        cache.add(key, 0, timeout=3600)  # the hour starts at the first request; incr keeps it
        return cache.incr(key) <= PASSWORD_RESET_MAILS_PER_HOUR
    except Exception:  # noqa: BLE001 - see above
        logger.warning("password reset limit unavailable (cache fault); mailing anyway")
        return True


def password_reset_send(*, email: str, domain: str, use_https: bool) -> None:
    """Mail a reset link to every active account with this address (Django's PasswordResetForm:
    its token, its templates, its choice of accounts); nothing when there is none."""
    from django.contrib.auth.forms import PasswordResetForm

    form = PasswordResetForm({"email": email})
    if form.is_valid():
        form.save(domain_override=domain, use_https=use_https)


def team_create(*, name: str, actor: User | None = None) -> Team:
    name = name.strip()
    if Team.objects.filter(name__iexact=name).exists():
        raise ValidationError({"name": [TEAM_NAME_TAKEN]})
    team = Team(name=name)
    team.full_clean(validate_constraints=False)
    team.save()
    audit_record(action="team.create", actor=actor, target=team)
    return team


def team_add_member(*, team: Team, user: User, actor: User | None = None) -> TeamMembership:
    """Idempotent: adding someone already in the team returns their membership. A person may be
    in several teams; each team's budget applies to them. Raises ConstrainsOperator when `actor`
    adds themselves and may not (admin_services.team_membership_check)."""
    from .admin_services import team_membership_check  # it imports this module

    team_membership_check(actor=actor, user_ids=[user.pk])
    membership, created = TeamMembership.objects.get_or_create(team=team, user=user)
    if created:
        audit_record(action="team.add_member", actor=actor, target=team, data={"user_id": user.pk})
    return membership


def team_remove_member(*, team: Team, user: User, actor: User | None = None) -> bool:
    """Raises ConstrainsOperator when `actor` removes themselves and may not
    (admin_services.team_membership_check): leaving a team escapes its limits and budgets."""
    from .admin_services import team_membership_check  # it imports this module

    team_membership_check(actor=actor, user_ids=[user.pk])
    deleted, _rows = TeamMembership.objects.filter(team=team, user=user).delete()
    if deleted:
        audit_record(action="team.remove_member", actor=actor, target=team, data={"user_id": user.pk})
    return bool(deleted)


def team_delete(*, team: Team, actor: User | None = None, ip_address: str | None = None) -> None:
    """Delete a team, audited: one `team.delete` row (its name and member ids), and one
    `budget.delete` row per budget, removed through billing's service. The spend stays on the
    dashboard, filed under no team (billing folds it on the team's pre_delete signal).

    Raises ConstrainsOperator, deleting nothing, when `actor` is a member and may not change the
    constraints on their own spending: deleting the team would lift its limits and budgets."""
    from billing import budgets  # billing's models point at accounts': imported when needed

    from .admin_services import ConstrainsOperator, constraints_locked_for  # it imports this module

    if constraints_locked_for(actor=actor, team=team):
        raise ConstrainsOperator
    with transaction.atomic():
        # Locked first: a member's call ending meanwhile files its ledger row under this team
        # (billing.ledger.ledger_owner locks the same row), and either commits before the spend
        # is moved off the team below or waits and finds the team gone.
        Team.objects.select_for_update().filter(pk=team.pk).exists()
        budgets.budgets_delete_for_team(team=team, actor=actor)
        member_ids = sorted(TeamMembership.objects.filter(team=team).values_list("user_id", flat=True))
        audit_record(
            action="team.delete",
            actor=actor,
            target=team,
            ip_address=ip_address,
            data={"name": team.name, "member_ids": member_ids},
        )
        team.delete()
