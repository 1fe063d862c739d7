"""Named identities of the local API: who holds which client certificate, in which role.

A call is attributed to the identity whose *registered* certificate the caller presented:
a certificate the node's CA issued but that is not registered here (revoked, rotated
away, or never issued through ``liaison users``) is refused. Every change is audited.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from liaison.server.store import audit
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import ApiCertificate, ApiUser


class UserError(Exception):
    """A user change that cannot be made (unknown name, a name taken, the last admin)."""


@dataclass(frozen=True)
class Identity:
    """Who a call comes from: the identity's name and role, and when its credential ends."""

    name: str
    role: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class UserRow:
    name: str
    role: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None
    revoke_reason: str | None
    certificate_sha256: str | None


# Built once: building a joined select costs more than running it (SQLAlchemy derives a
# cache key from the statement on every call); this runs on every local API call.
_IDENTIFY = (
    select(
        ApiUser.name,
        ApiUser.role,
        ApiUser.revoked_at,
        ApiUser.expires_at,
        ApiCertificate.revoked_at,
        ApiCertificate.expires_at,
    )
    .join(ApiUser, ApiUser.name == ApiCertificate.user)
    .where(ApiCertificate.sha256 == bindparam("sha256"))
)


def identify(
    session: Session | Connection, certificate_sha256: str, now: dt.datetime
) -> Identity | str:
    """The identity holding this certificate, or why the certificate is refused."""
    row = session.execute(_IDENTIFY, {"sha256": certificate_sha256}).first()
    if row is None:
        return "the credential is not registered at this node (never issued by `liaison users`)"
    name, role, user_revoked, user_expires, certificate_revoked, certificate_expires = row
    if user_revoked is not None:
        return f"the credential of {name} was revoked"
    if certificate_revoked is not None:
        return f"this certificate of {name} was replaced (`liaison users rotate`)"
    expires = min(user_expires, certificate_expires)
    if expires <= now:
        return f"the credential of {name} expired at {expires.isoformat()}"
    return Identity(name, role, expires)


def add(
    session: Session,
    *,
    name: str,
    role: str,
    certificate_sha256: str,
    expires_at: dt.datetime,
    actor: str,
    now: dt.datetime,
) -> None:
    """Register ``name`` in ``role`` holding one certificate; raises ``UserError`` if the
    name is taken (revoked names too: a name is never reused, so the log stays clear)."""
    if session.get(ApiUser, name) is not None:
        raise UserError(f"there is already a user {name} (names are never reused)")
    session.add(ApiUser(name=name, role=role, created_at=now, expires_at=expires_at))
    session.flush()  # the user before its certificate (a foreign key, and no relationship)
    session.add(
        ApiCertificate(sha256=certificate_sha256, user=name, issued_at=now, expires_at=expires_at)
    )
    audit.append(
        session,
        AuditKind.USER_ADDED,
        at=now,
        actor=actor,
        detail=f"user {name}, role {role}, expires {expires_at.date().isoformat()}, "
        f"certificate {certificate_sha256}",
    )


def rotate(
    session: Session,
    *,
    name: str,
    certificate_sha256: str,
    expires_at: dt.datetime,
    actor: str,
    now: dt.datetime,
) -> None:
    """Give ``name`` a new certificate; its old ones stop working at once."""
    user = _active(session, name)
    for old in session.scalars(
        select(ApiCertificate).where(
            ApiCertificate.user == name, ApiCertificate.revoked_at.is_(None)
        )
    ):
        old.revoked_at = now
    session.add(
        ApiCertificate(sha256=certificate_sha256, user=name, issued_at=now, expires_at=expires_at)
    )
    user.expires_at = expires_at
    audit.append(
        session,
        AuditKind.USER_ROTATED,
        at=now,
        actor=actor,
        detail=f"user {name}, certificate {certificate_sha256}, "
        f"expires {expires_at.date().isoformat()}",
    )


def revoke(session: Session, *, name: str, reason: str, actor: str, now: dt.datetime) -> bool:
    """Revoke ``name``: its next call is refused. False if it was revoked already.

    Refuses (``UserError``) to revoke the last active admin: nobody could manage the node.
    """
    user = session.get(ApiUser, name)
    if user is None:
        raise UserError(f"there is no user {name}")
    if user.revoked_at is not None:
        return False
    if user.role == "admin":
        admins = session.scalars(
            select(ApiUser.name).where(ApiUser.role == "admin", ApiUser.revoked_at.is_(None))
        ).all()
        if admins == [name]:
            raise UserError(f"{name} is the last admin; add another admin first")
    user.revoked_at, user.revoke_reason = now, reason
    audit.append(
        session, AuditKind.USER_REVOKED, at=now, actor=actor, detail=f"user {name}: {reason}"
    )
    return True


def listed(session: Session) -> list[UserRow]:
    rows = []
    for user in session.scalars(select(ApiUser).order_by(ApiUser.name)):
        current = session.scalars(
            select(ApiCertificate.sha256)
            .where(ApiCertificate.user == user.name, ApiCertificate.revoked_at.is_(None))
            .order_by(ApiCertificate.issued_at.desc())
        ).first()
        rows.append(
            UserRow(
                user.name,
                user.role,
                user.created_at,
                user.expires_at,
                user.revoked_at,
                user.revoke_reason,
                current,
            )
        )
    return rows


def exists(session: Session, name: str) -> bool:
    """Whether an identity ``name`` was ever registered (revoked ones too)."""
    return session.get(ApiUser, name) is not None


def _active(session: Session, name: str) -> ApiUser:
    user = session.get(ApiUser, name)
    if user is None:
        raise UserError(f"there is no user {name}")
    if user.revoked_at is not None:
        raise UserError(f"{name} is revoked; add a new user instead")
    return user
