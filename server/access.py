"""Who may call what on the local API: named identities in roles, checked on every call.

The TLS layer only says that a client certificate was issued by the node's CA. Here the
certificate must also be *registered* to an identity that is neither revoked nor expired
(``liaison users``), and the identity's role must allow the method. The registry is
read on every call, so a revocation written by ``liaison users revoke`` in another
process holds from the next call on, resumed TLS session or not.

Roles (docs/ARCHITECTURE.md, "Identities and roles"):

- ``operator`` and ``system``: send, read, acknowledge and answer notices, watch.
- ``auditor``: message metadata, the audit trail and checkpoints; never a body or an
  attachment (listings reach an auditor without subjects).
- ``admin``: all of the above, and manages users and peers (on the node's machine).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from liaison.keys.certs import pem_to_der
from liaison.server.committer import GroupCommitter
from liaison.server.store import audit, users
from liaison.server.store.audit import AuditKind
from liaison.server.store.store import Store
from liaison.server.store.users import Identity

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
# A refused call is audited at most this often per identity (or certificate) and method.
DENIAL_AUDIT_SECONDS = 60.0


class Role(enum.StrEnum):
    OPERATOR = "operator"
    SYSTEM = "system"
    AUDITOR = "auditor"
    ADMIN = "admin"


_WORKERS = frozenset({Role.OPERATOR, Role.SYSTEM, Role.ADMIN})
_READERS = _WORKERS | {Role.AUDITOR}

# Every NodeService method, and the roles that may call it. A method missing here is
# refused to everyone (the test of this table walks the service's descriptor).
POLICY: dict[str, frozenset[Role]] = {
    "SendNotice": _WORKERS,
    "Acknowledge": _WORKERS,
    "Reply": _WORKERS,
    "Cancel": _WORKERS,
    "Retry": _WORKERS,
    "GetMessage": _WORKERS,
    "GetAttachment": _WORKERS,
    "Forward": _WORKERS,
    "ListMessages": _READERS,
    "GetStatus": _READERS,
    "GetThread": _READERS,
    "Watch": _READERS,
    "SignCheckpoint": frozenset({Role.AUDITOR, Role.ADMIN}),
    "ListAuditEvents": frozenset({Role.AUDITOR, Role.ADMIN}),
}


def sees_content(identity: Identity) -> bool:
    """Whether ``identity`` may see what notices say (subjects too), not only metadata."""
    return identity.role != Role.AUDITOR


def certificate_sha256(context: Context) -> str | None:
    """SHA-256 of the client certificate the caller presented (hex), if any."""
    pem = next(iter(context.auth_context().get("x509_pem_cert", ())), None)
    return _pem_sha256(pem) if pem else None


@functools.lru_cache(maxsize=1024)
def _pem_sha256(pem: bytes) -> str:
    # Remembered: the same few certificates call again and again (the digest is a function
    # of the certificate alone; whether it is registered is read on every call).
    return hashlib.sha256(pem_to_der(pem)).hexdigest()


class AccessControl:
    """``require`` answers who is calling, or ends the call."""

    def __init__(
        self,
        store: Store,
        committer: GroupCommitter,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._store = store
        self._committer = committer
        self._clock = clock
        self._denials: dict[tuple[str, str], float] = {}

    async def require(self, context: Context, method: str) -> Identity:
        """The identity calling ``method``, if its role may; otherwise the call ends with
        ``UNAUTHENTICATED`` (no registered, valid credential) or ``PERMISSION_DENIED``
        (a role that may not), audited."""
        fingerprint = certificate_sha256(context)
        now = self._clock()
        found = (
            await asyncio.to_thread(self._identify, fingerprint, now)
            if fingerprint is not None
            else "no client certificate"
        )
        if isinstance(found, str):
            await self._denied(fingerprint or "-", "", method, found)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{found}")
            raise AssertionError("abort raises")  # pragma: no cover
        allowed = POLICY.get(method, frozenset())
        if found.role not in allowed:
            needed = " or ".join(sorted(allowed)) or "a role no identity has"
            message = f"{method} needs the role {needed}; {found.name} is {found.role}"
            await self._denied(found.name, found.name, method, message)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)
        return found

    def _identify(self, fingerprint: str, now: dt.datetime) -> Identity | str:
        with self._store.lookup() as connection:
            return users.identify(connection, fingerprint, now)

    async def _denied(self, key: str, actor: str, method: str, why: str) -> None:
        """Log every refusal; audit one per minute per identity and method."""
        log.warning("local API: %s refused for %s: %s", method, actor or key[:16], why)
        moment, last = time.monotonic(), self._denials.get((key, method))
        if last is not None and moment - last < DENIAL_AUDIT_SECONDS:
            return
        self._denials[(key, method)] = moment
        at = self._clock()
        await self._committer.submit(
            lambda session: audit.append(
                session,
                AuditKind.ACCESS_DENIED,
                at=at,
                actor=actor or None,
                detail=f"local API {method}: {why}" + ("" if actor else f" (certificate {key})"),
            )
        )
