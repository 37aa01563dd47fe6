"""Writes the admin makes to accounts that no other service covers: disabling an account, and the
audit entries of an operator's changes to roles, groups, rate limits and team membership; who may
grant roles; and who may change the constraints on their own spending.

Roles (superuser and staff status, groups, individual permissions) are granted by a superuser
only: anyone else holding `change_user` could otherwise make themselves a superuser. And an
account that can do more than the operator is changed by a superuser only: whoever sets its
password or email, or switches it on, can act as it.

Likewise the constraints on an operator's own spending are a superuser's to change: their own
rate limits, their own team memberships, and the limits of the teams they belong to (billing's
budgets follow the same rule, billing.budgets.budget_locked_for). Otherwise a helpdesk member
with `change_user` could raise their own rate limit, or one with `change_team` leave the team
whose limits hold them. And the constraints put on one account, its own budget and its team
memberships, are changed by a superuser only when that account outranks the operator: otherwise
a budgets clerk could put every administrator on a $0 budget, or a team clerk file them in a team
held to one request a minute. A team's own limits and budgets bind all its members, superusers
included, and stay the team clerk's to manage.

Kept apart from accounts/services.py (the sign-up and profile services) so the admin's rules and
their audit rows live in one place."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.utils.translation import gettext as _

from conversations import sockets

from . import data_rights
from .audit import audit_record
from .models import Team, User
from .services import OnlyAdmin, is_administrator, user_only_admins_among

# The fields of a user whose change is a change of role (what they may do), audited as such.
ROLE_FIELDS = ("is_active", "is_staff", "is_superuser")
# The fields (of the form) and snapshot keys that grant powers: only a superuser changes them.
# `is_active` is not among them: switching an account off or on grants nothing it did not have.
GRANTING_FIELDS = ("is_staff", "is_superuser", "groups", "user_permissions")
_GRANTING_KEYS = ("is_staff", "is_superuser", "groups", "permissions")
# The rate-limit fields of a user and of a team (billing.limits reads them): spending constraints.
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute")


def roles_grantable_by(*, actor: User | None) -> bool:
    """Whether `actor` may grant or change roles: superuser and staff status, groups (whose
    permissions are roles) and individual permissions. An active superuser, or the system (None)."""
    return actor is None or (actor.is_active and actor.is_superuser)


def user_fields_locked_for(*, actor: User | None, user: User | None = None) -> tuple[str, ...]:
    """The fields of the form of `user` (None: a new account) that `actor` sees but may not
    change: the roles, and on their own account their rate limits (constraints_locked_for)."""
    locked = () if roles_grantable_by(actor=actor) else GRANTING_FIELDS
    if user is not None and constraints_locked_for(actor=actor, user=user):
        locked += LIMIT_FIELDS
    return locked


# --- The constraints on the operator's own spending -------------------------------------------


class ConstrainsOperator(PermissionDenied):
    """The change would alter a constraint on the operator's own spending (their rate limits,
    their team memberships, their teams' limits or existence): only a superuser may. A
    PermissionDenied, so a refusal that reaches the admin answers 403 and undoes its save."""

    def __init__(self) -> None:
        super().__init__(_("Only a superuser can change the limits on their own spending."))


def own_constraints_changeable_by(*, actor: User | None) -> bool:
    """Whether `actor` may change the constraints on their own spending: an active superuser (who
    is bound by none they could not lift anyway), or the system (None: commands, tasks)."""
    return roles_grantable_by(actor=actor)


def constraints_locked_for(*, actor: User | None, user: User | None = None, team: Team | None = None) -> bool:
    """Whether the spending constraints of `user` (their rate limits, their budgets) or of `team`
    (its limits, its budgets, its existence) bind `actor`, who may not change their own: `user` is
    the operator, or the operator is a member of `team`. Everyone else's stay theirs to manage,
    within their permissions."""
    if own_constraints_changeable_by(actor=actor):
        return False
    if user is not None:
        return user.pk is not None and user.pk == actor.pk
    return team is not None and team.pk is not None and team.teammembership_set.filter(user_id=actor.pk).exists()


def team_fields_locked_for(*, actor: User | None, team: Team | None) -> tuple[str, ...]:
    """The fields of the team form that `actor` sees but may not change: the limits of a team
    they belong to."""
    return LIMIT_FIELDS if team is not None and constraints_locked_for(actor=actor, team=team) else ()


def team_membership_check(*, actor: User | None, user_ids: Iterable[int]) -> None:
    """Raise ConstrainsOperator when the memberships to add or remove (`user_ids`) include the
    operator's own and they may not change their constraints. Both ways: leaving a team escapes
    its limits and budgets; joining one spends from the budgets its other members share, and can
    file the operator's spending under it in the ledger (billing.ledger.primary_team_id). One
    rule both ways is also the simpler one to audit. A superuser does either.

    Raise OutranksOperator when they include accounts that can do more than the operator
    (users_outranking): joining a team puts its limits and budgets on them, leaving one lifts
    them; either is a superuser's to do, as any other change to such an account."""
    ids = set(user_ids)
    if actor is not None and actor.pk in ids and not own_constraints_changeable_by(actor=actor):
        raise ConstrainsOperator
    if ids and not roles_grantable_by(actor=actor):  # the query only for those it could refuse
        users_manage_check(actor=actor, users=list(User.objects.filter(pk__in=ids).order_by("username")))


def limits_snapshot(*, owner: User | Team) -> dict:
    """A user's or a team's rate limits, for comparing before and after an edit."""
    if owner.pk is None:
        return {}
    return {name: getattr(owner, name) for name in LIMIT_FIELDS}


def _limits_changes(*, owner: User | Team, before: dict) -> dict:
    """[before, after] of each rate limit of `owner` that an edit changed (none for a new one)."""
    if not before:
        return {}
    return {name: [before.get(name), value] for name, value in limits_snapshot(owner=owner).items() if before.get(name) != value}


def _limits_audit(*, owner: User | Team, before: dict, actor: User | None, ip_address: str | None) -> None:
    """Write one `<user|team>.limits_changed` row ([before, after] of each rate limit that
    changed) for an edit of an existing account or team. The second lock behind the forms'
    read-only fields: a change of limits that bind the operator (their own, or a team they belong
    to) by someone who may not raises ConstrainsOperator, which undoes the admin's save."""
    changes = _limits_changes(owner=owner, before=before)
    if not changes:
        return
    kind = "user" if isinstance(owner, User) else "team"
    if constraints_locked_for(actor=actor, **{kind: owner}):
        raise ConstrainsOperator
    audit_record(action=f"{kind}.limits_changed", actor=actor, target=owner, ip_address=ip_address, data=changes)


def user_limits_audit(*, user: User, before: dict, actor: User | None, ip_address: str | None = None) -> None:
    _limits_audit(owner=user, before=before, actor=actor, ip_address=ip_address)


def team_limits_audit(*, team: Team, before: dict, actor: User | None, ip_address: str | None = None) -> None:
    _limits_audit(owner=team, before=before, actor=actor, ip_address=ip_address)


class OutranksOperator(PermissionDenied):
    """These accounts can do more than the operator (see users_outranking): only a superuser
    changes, disables or erases them, or changes their budgets and team memberships. `users`: the
    accounts in question. A PermissionDenied, so a refusal that reaches the admin past its forms
    (the second lock, after a save) answers 403 and undoes the save."""

    def __init__(self, users: list[User]) -> None:
        super().__init__(", ".join(u.username for u in users))
        self.users = users


def users_outranking(*, actor: User | None, users: Sequence[User]) -> list[User]:
    """Those of `users` that can do more than `actor`: superusers, and accounts holding (directly
    or through a group) a permission `actor` does not hold. Changing such an account's password,
    email or active flag would let `actor` act as it, so only a superuser may. A disabled account
    counts with what it would hold once enabled again. Two queries for the whole selection."""
    if roles_grantable_by(actor=actor) or not users:
        return []
    held = actor.get_all_permissions()
    ids = [u.pk for u in users]
    granted: dict[int, set[str]] = defaultdict(set)
    direct = User.user_permissions.through.objects.filter(user_id__in=ids).values_list(
        "user_id", "permission__content_type__app_label", "permission__codename"
    )
    via_groups = User.groups.through.objects.filter(user_id__in=ids, group__permissions__isnull=False).values_list(
        "user_id", "group__permissions__content_type__app_label", "group__permissions__codename"
    )
    for rows in (direct, via_groups):
        for user_id, app_label, codename in rows:
            granted[user_id].add(f"{app_label}.{codename}")
    return [u for u in users if u.is_superuser or not granted[u.pk] <= held]


def users_manage_check(*, actor: User | None, users: Sequence[User]) -> None:
    """Raise OutranksOperator naming those of `users` that `actor` may not change."""
    outranking = users_outranking(actor=actor, users=users)
    if outranking:
        raise OutranksOperator(outranking)


class CannotDisableSelf(Exception):
    """An operator disabling their own account would lock themselves out mid-action."""


def user_access_check(
    *, user: User, actor: User | None, is_active: bool, is_superuser: bool, is_staff: bool
) -> None:
    """The rule for taking access away from an account, shared by the Disable action and the user
    form: an operator cannot disable their own account (CannotDisableSelf), and the last active
    administrator can be neither disabled nor demoted, from superuser or from staff, which shuts
    them out of the admin (OnlyAdmin). `is_active`/`is_superuser`/`is_staff` are the flags the
    account is to have. Call inside the transaction making the
    change: it locks the administrators' rows."""
    if user.pk is None:
        return
    if not is_active and actor is not None and actor.pk == user.pk:
        raise CannotDisableSelf
    if not is_administrator(is_active=is_active, is_superuser=is_superuser, is_staff=is_staff):
        only = user_only_admins_among(user_ids=[user.pk], lock=True)
        if only:
            raise OnlyAdmin(only)


def user_disable(*, user: User, actor: User | None, ip_address: str | None = None) -> bool:
    """Disable `user`'s account; their sessions stop working at the next request (Django's
    ModelBackend refuses inactive users) and their open chat sockets close at once (the
    conditional update sends no save signal). Returns False when already disabled (no audit row).
    Raises OutranksOperator (see users_outranking), CannotDisableSelf or OnlyAdmin (see
    user_access_check), changing nothing."""
    users_manage_check(actor=actor, users=[user])
    with transaction.atomic():
        user_access_check(user=user, actor=actor, is_active=False, is_superuser=user.is_superuser, is_staff=user.is_staff)
        changed = User.objects.filter(pk=user.pk, is_active=True).update(is_active=False)
        if changed:
            audit_record(action="user.disabled", actor=actor, target=user, ip_address=ip_address)
            sockets.user_sockets_close(user_id=user.pk)
    user.is_active = False
    return bool(changed)


def users_erase_preview(*, users: list[User], actor: User | None) -> list[tuple[User, list[str], list[str]]]:
    """What erasing each of `users` would remove and keep, in words (for the confirmation page:
    data_rights.erasure_preview_words); or OutranksOperator when the selection holds accounts
    `actor` may not change, OnlyAdmin when it holds every active administrator: refused as a
    whole before the page lists anyone as going. users_erase checks again, locked, when it is
    confirmed."""
    users_manage_check(actor=actor, users=users)
    only = user_only_admins_among(user_ids=[u.pk for u in users])
    if only:
        raise OnlyAdmin(only)
    return [(u, *data_rights.erasure_preview_words(data_rights.erasure_preview(user=u))) for u in users]


def users_erase(*, users: list[User], actor: User | None, ip_address: str | None = None) -> int:
    """Start the erasure of every account in `users`, or of none: when the selection holds an
    account `actor` may not change, OutranksOperator is raised, and when it holds every active
    administrator, OnlyAdmin, before anything is done (erasing them one by one
    would lock the first ones, then be refused at the last). One transaction, so a refusal met
    midway (data_rights.DataRightsError) undoes the locks and audit rows already written.
    data_rights.erasure_request writes each audit row (user.erase, by id only)."""
    users_manage_check(actor=actor, users=users)
    with transaction.atomic():
        only = user_only_admins_among(user_ids=[u.pk for u in users], lock=True)
        if only:
            raise OnlyAdmin(only)
        for user in users:
            data_rights.erasure_request(user=user, requested_by=actor, ip_address=ip_address)
    return len(users)


def user_password_set_by_admin(*, user_id: int, actor: User | None, ip_address: str | None = None) -> None:
    """After Django's admin form saved a new password for a user: the audit row (ids only), and
    their open chat sockets closed at once, since their sessions no longer sign them in."""
    audit_record(action="user.password_set_by_admin", actor=actor, target_type="accounts.user", target_id=str(user_id), ip_address=ip_address)
    sockets.user_sockets_close(user_id=user_id)


def user_roles_snapshot(*, user: User) -> dict:
    """What a user may do, as plain ids and flags, for comparing before and after an edit."""
    if user.pk is None:
        return {}
    snapshot = {name: getattr(user, name) for name in ROLE_FIELDS}
    snapshot["groups"] = sorted(user.groups.values_list("pk", flat=True))
    snapshot["permissions"] = sorted(user.user_permissions.values_list("pk", flat=True))
    return snapshot


def user_roles_audit(*, user: User, before: dict, actor: User | None, ip_address: str | None = None) -> None:
    """Write one `user.roles_changed` row listing [before, after] of what changed, if anything
    (`user.created` for a new account, with its roles).

    The second lock behind the form's read-only fields: a grant by someone who may not grant
    roles (a new account made staff, superuser, or given groups or permissions included) raises
    PermissionDenied, which undoes the admin's save transaction."""
    after = user_roles_snapshot(user=user)
    changes = {name: [before.get(name), value] for name, value in after.items() if before.get(name) != value}
    granted = [key for key in _GRANTING_KEYS if (key in changes if before else after.get(key))]
    if granted and not roles_grantable_by(actor=actor):
        raise PermissionDenied(_("Only a superuser may change staff or superuser status, groups or permissions."))
    if before and changes:
        audit_record(action="user.roles_changed", actor=actor, target=user, ip_address=ip_address, data=changes)
    elif not before:
        audit_record(action="user.created", actor=actor, target=user, ip_address=ip_address, data=after)


def group_permissions_audit(
    *, group: Group, before: Iterable[int], actor: User | None, ip_address: str | None = None
) -> None:
    """Write one `group.permissions_changed` row (permission ids added and removed) for an edit,
    if anything changed. The second lock behind GroupAdmin's permissions: a change by someone who
    may not grant roles raises PermissionDenied, which undoes the admin's save transaction."""
    before_ids = set(before)
    after_ids = set(group.permissions.values_list("pk", flat=True))
    if before_ids == after_ids:
        return
    if not roles_grantable_by(actor=actor):
        raise PermissionDenied(_("Only a superuser may change staff or superuser status, groups or permissions."))
    audit_record(
        action="group.permissions_changed", actor=actor, target=group, ip_address=ip_address,
        data={"added": sorted(after_ids - before_ids), "removed": sorted(before_ids - after_ids)},
    )  # fmt: skip


def team_members_audit(
    *, team: Team, before: Iterable[int], actor: User | None, ip_address: str | None = None
) -> None:
    """Write `team.member_added` / `team.member_removed` rows (user ids only) for an edit. The
    second lock behind the membership form: the operator adding or removing themselves, when they
    may not, raises ConstrainsOperator (team_membership_check), undoing the admin's save."""
    before_ids = set(before)
    after_ids = set(team.teammembership_set.values_list("user_id", flat=True))
    team_membership_check(actor=actor, user_ids=after_ids ^ before_ids)
    for user_id in sorted(after_ids - before_ids):
        audit_record(action="team.member_added", actor=actor, target=team, ip_address=ip_address, data={"user_id": user_id})
    for user_id in sorted(before_ids - after_ids):
        audit_record(action="team.member_removed", actor=actor, target=team, ip_address=ip_address, data={"user_id": user_id})
