"""``liaison users``: issue, rotate and revoke the local API's named credentials.

A credential is a folder (``credentials/<name>/``: the CA, the client certificate, its
key sealed under the credential's own passphrase, and the API's address) handed to one
person or system. Its certificate is registered to the name and a role in the node's
database; the node checks that registration on every call (server/access.py).
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from liaison.keys.certs import IssuedCertificate, certificate_sha256, issue_api_client_certificate
from liaison.keys.credentials import ClientCredential
from liaison.keys.identity import load_private_key
from liaison.keys.notice import IDENTITY_NAME
from liaison.keys.sealed import CREDENTIAL_LOG2_N, Unlocker
from liaison.server.access import Role
from liaison.server.config import api_target
from liaison.server.home import API_CA, NodeHome
from liaison.server.store import users
from liaison.server.store.store import Store

DEFAULT_DAYS = 365
MAX_DAYS = 5 * 365


class UsersError(Exception):
    """A ``liaison users`` request that cannot be carried out; nothing was changed."""


@dataclass(frozen=True)
class Issued:
    name: str
    role: str
    folder: Path
    certificate_sha256: str
    expires_at: dt.datetime


def expiry(text: str | None, now: dt.datetime) -> dt.datetime:
    """``90d``, ``12w`` or ``1y`` from now (default one year); at most five years."""
    if not text:
        return now + dt.timedelta(days=DEFAULT_DAYS)
    found = re.fullmatch(r"([1-9][0-9]{0,4})([dwy])", text)
    if found is None:
        raise UsersError(f"--expires must be like 90d, 12w or 1y, not {text!r}")
    days = int(found[1]) * {"d": 1, "w": 7, "y": 365}[found[2]]
    if days > MAX_DAYS:
        raise UsersError(f"--expires may be at most {MAX_DAYS} days (five years)")
    return now + dt.timedelta(days=days)


def check_name(name: str) -> None:
    if not IDENTITY_NAME.fullmatch(name):
        raise UsersError(
            f"invalid user name {name!r}: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 64 characters"
        )


def add_user(
    home: NodeHome,
    store: Store,
    *,
    name: str,
    role: str,
    expires_at: dt.datetime,
    credential: Unlocker,
    actor: str,
    now: dt.datetime,
    log2_n: int = CREDENTIAL_LOG2_N,
) -> Issued:
    """Issue ``name``'s credential folder, its key sealed under ``credential``'s
    passphrase, and register it. The folder appears only once the registration is
    committed; a name already used, even revoked, is refused."""
    check_name(name)
    if role not in {r.value for r in Role}:
        raise UsersError(f"unknown role {role!r}: one of {', '.join(r.value for r in Role)}")
    folder = home.credential_dir(name)
    if folder.exists():
        raise UsersError(f"{folder} exists already; nothing was changed")
    staged, issued = _stage(home, name, expires_at, credential, log2_n)
    try:
        with store.write() as session:
            users.add(
                session,
                name=name,
                role=role,
                certificate_sha256=issued,
                expires_at=expires_at,
                actor=actor,
                now=now,
            )
    except users.UserError as error:
        shutil.rmtree(staged.parent)
        raise UsersError(str(error)) from None
    staged.rename(folder)
    staged.parent.rmdir()
    return Issued(name, role, folder, issued, expires_at)


def rotate_user(
    home: NodeHome,
    store: Store,
    *,
    name: str,
    expires_at: dt.datetime,
    credential: Unlocker,
    actor: str,
    now: dt.datetime,
    log2_n: int = CREDENTIAL_LOG2_N,
) -> Issued:
    """A new certificate and key for ``name``; the old certificate stops working at once
    and the folder is replaced."""
    check_name(name)
    staged, issued = _stage(home, name, expires_at, credential, log2_n)
    try:
        with store.write() as session:
            users.rotate(
                session,
                name=name,
                certificate_sha256=issued,
                expires_at=expires_at,
                actor=actor,
                now=now,
            )
            role = next(u.role for u in users.listed(session) if u.name == name)
    except users.UserError as error:
        shutil.rmtree(staged.parent)
        raise UsersError(str(error)) from None
    folder = home.credential_dir(name)
    if folder.exists():
        old = folder.with_name(f".{name}.replaced")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        staged.rename(folder)
        shutil.rmtree(old)
    else:
        staged.rename(folder)
    staged.parent.rmdir()
    return Issued(name, role, folder, issued, expires_at)


def revoke_user(store: Store, *, name: str, reason: str, actor: str, now: dt.datetime) -> bool:
    """Revoke ``name`` (its next call is refused); False if it was revoked already."""
    check_name(name)
    reason = reason.strip()
    if not reason or len(reason) > 200 or any(ord(c) < 0x20 for c in reason):
        raise UsersError("--reason must be one line of 1 to 200 characters")
    try:
        with store.write() as session:
            return users.revoke(session, name=name, reason=reason, actor=actor, now=now)
    except users.UserError as error:
        raise UsersError(str(error)) from None


def _stage(
    home: NodeHome, name: str, expires_at: dt.datetime, credential: Unlocker, log2_n: int
) -> tuple[Path, str]:
    """Write the new credential into a hidden folder beside its final place."""
    ca_pem = (home.api_dir / "ca.crt").read_bytes()
    ca_key = load_private_key(home.open_keys().private(API_CA), ec.EllipticCurvePrivateKey, API_CA)
    ca = IssuedCertificate(ca_key, x509.load_pem_x509_certificate(ca_pem))
    issued = issue_api_client_certificate(ca, name, expires_at)
    (home.path / "credentials").mkdir(mode=0o700, exist_ok=True)
    # A folder of its own: two `users add` at once never share (or delete) a staging place.
    staged = Path(tempfile.mkdtemp(dir=home.path / "credentials", prefix=f".{name}.")) / name
    ClientCredential(
        ca_certificate=ca_pem,
        certificate=issued.certificate_pem(),
        private_key=issued.key_pem(),
        target=api_target(home.config().api_listen),
    ).save(staged, credential, log2_n=log2_n)
    der = issued.certificate.public_bytes(serialization.Encoding.DER)
    return staged, certificate_sha256(der)
