"""``liaison users …``: the local API's named identities (admin, on the node's machine).

``add`` and ``rotate`` issue a credential folder under ``credentials/NAME/`` (the CA,
a client certificate, its key sealed under the *credential's* own passphrase, and the
API's address) to hand to its holder; ``revoke`` takes effect on the holder's next
call, without a restart. They need the home's passphrase (the CA's key is sealed in
the key store); ``list`` does not. ``export`` writes a credential as a PKCS#12 file for
clients in other languages, encrypted under a fresh random passphrase that it writes to
a second file; it needs the *credential's* passphrase, to open the key.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liaison.client import render
from liaison.client.cli_common import home_path, print_json, unlocked_home
from liaison.client.errors import UsageError
from liaison.client.passphrase import NEW_PASSPHRASE_VARIABLE, new_passphrase, passphrase
from liaison.keys.certs import certificate_sha256, pem_to_der
from liaison.keys.credentials import (
    EXPORT_PASSPHRASE_BITS,
    PKCS12_KDF_ROUNDS,
    PKCS12_MAC_ROUNDS,
    ClientCredential,
    export_passphrase,
)
from liaison.keys.keystore import write_private_file
from liaison.keys.notice import IDENTITY_NAME
from liaison.keys.sealed import Unlocker
from liaison.server.home import NodeHome
from liaison.server.store import users as registry
from liaison.server.store.audit import AuditKind, append
from liaison.server.users import (
    Issued,
    UsersError,
    add_user,
    expiry,
    revoke_user,
    rotate_user,
)


def _credential_passphrase(args: argparse.Namespace, name: str) -> Unlocker:
    secret = new_passphrase(
        args.new_passphrase_file,
        variable=NEW_PASSPHRASE_VARIABLE,
        what=f"the credential of {name} (tell its holder, apart from the folder)",
    )
    return Unlocker(secret)


def _issued(args: argparse.Namespace, issued: Issued, verb: str) -> int:
    if args.json:
        print_json(
            {
                "name": issued.name,
                "role": issued.role,
                "folder": str(issued.folder),
                "certificate_sha256": issued.certificate_sha256,
                "expires_at": render.iso_datetime(issued.expires_at),
            }
        )
        return 0
    print(f"{verb} {issued.name} ({issued.role}), valid until {issued.expires_at.date()}")
    print(f"  credential folder  {issued.folder}")
    print(f"  certificate        {issued.certificate_sha256}")
    print(
        "Hand the folder to its holder, and the credential's passphrase separately; they "
        f"use it with `liaison --home HOME --identity {issued.name} …` or "
        "LiaisonClient.from_credential_dir(folder)."
    )
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """Issue and register a new identity's credential."""
    return _issue(args, "Added", functools.partial(add_user, name=args.name, role=args.role))


def cmd_rotate(args: argparse.Namespace) -> int:
    """A new certificate and key for an identity; the old one stops working at once."""
    return _issue(args, "Rotated", functools.partial(rotate_user, name=args.name))


def _issue(args: argparse.Namespace, verb: str, issue: Callable[..., Issued]) -> int:
    """Open the home (its passphrase), ask the credential's, and issue with ``issue``."""
    home = unlocked_home(args)
    now = dt.datetime.now(dt.UTC)
    try:
        expires_at = expiry(args.expires, now)
        store = home.open_store()
        try:
            issued = issue(
                home,
                store,
                expires_at=expires_at,
                credential=_credential_passphrase(args, args.name),
                actor="admin",
                now=now,
            )
        finally:
            store.close()
    except UsersError as error:
        raise UsageError(str(error)) from None
    return _issued(args, issued, verb)


def cmd_revoke(args: argparse.Namespace) -> int:
    """Revoke an identity: its next call is refused."""
    store = NodeHome(home_path(args)).open_store()
    try:
        changed = revoke_user(
            store,
            name=args.name,
            reason=args.reason,
            actor="admin",
            now=dt.datetime.now(dt.UTC),
        )
    except UsersError as error:
        raise UsageError(str(error)) from None
    finally:
        store.close()
    if args.json:
        print_json({"name": args.name, "revoked": True, "changed": changed})
    elif changed:
        print(f"Revoked {args.name}: its next call is refused")
    else:
        print(f"{args.name} was revoked already; nothing changed")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Every identity with its role, state and expiry."""
    store = NodeHome(home_path(args)).open_store()
    try:
        with store.read() as session:
            rows = registry.listed(session)
    finally:
        store.close()
    now = dt.datetime.now(dt.UTC)
    listed: list[dict[str, Any]] = [
        {
            "name": row.name,
            "role": row.role,
            "state": "revoked"
            if row.revoked_at is not None
            else ("expired" if row.expires_at <= now else "active"),
            "created_at": render.iso_datetime(row.created_at),
            "expires_at": render.iso_datetime(row.expires_at),
            "revoked_at": render.iso_datetime(row.revoked_at) if row.revoked_at else None,
            "revoke_reason": row.revoke_reason,
            "certificate_sha256": row.certificate_sha256,
        }
        for row in rows
    ]
    if args.json:
        print_json(listed)
        return 0
    for one in listed:
        line = f"{one['name']:<24} {one['role']:<9} {one['state']:<8} until {one['expires_at']}"
        if one["revoke_reason"]:
            line += f"  ({render.safe(one['revoke_reason'])})"
        print(line)
    print(f"{len(listed)} identities", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the credential ``credentials/NAME`` as a PKCS#12 file (key, client
    certificate, CA), for gRPC clients in other languages, under a fresh random
    passphrase written to a second file (``--passphrase-to``) and shown nowhere else.

    Both files are created with mode 0600 and never replace one; both paths are checked
    before the credential's passphrase is asked. Either both are written and the export
    is audited (with the certificate's digest, never the passphrase), or neither and
    nothing is: if the key does not open, a file cannot be created, or the audit fails.
    """
    if not IDENTITY_NAME.fullmatch(args.name):
        raise UsageError(f"{render.safe(args.name)!r} is not an identity name")
    home = home_path(args)
    target = Path(args.to).expanduser()
    passphrase_file = Path(args.passphrase_to).expanduser()
    if target.resolve() == passphrase_file.resolve():
        raise UsageError("--to and --passphrase-to name the same file; nothing was written")
    for path in (target, passphrase_file):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} exists already; nothing was written")
    secret = passphrase(args.passphrase_file, what=f"the credential of {args.name}")
    credential = ClientCredential.load(home / "credentials" / args.name, Unlocker(secret))
    # Not the credential's passphrase: the file's MAC lets a guess be checked at 2,048
    # rounds, harmless against 192 random bits and not against a passphrase a person chose.
    export_secret = export_passphrase()
    bundle = credential.pkcs12(export_secret, name=args.name)
    digest = certificate_sha256(pem_to_der(credential.certificate))
    settings = (
        f"random export passphrase, {EXPORT_PASSPHRASE_BITS} bits; "
        f"PBKDF2-HMAC-SHA256 at {PKCS12_KDF_ROUNDS:,} rounds, AES-256-CBC; "
        f"HMAC-SHA256 MAC at {PKCS12_MAC_ROUNDS:,} rounds"
    )
    # Audited if and only if written: the files are created inside the audit's
    # transaction, and removed again if either cannot be or that transaction does not
    # commit.
    created: list[Path] = []
    store = NodeHome(home).open_store()
    try:
        with store.write() as session:
            append(
                session,
                AuditKind.CREDENTIAL_EXPORTED,
                at=dt.datetime.now(dt.UTC),
                actor="admin",
                detail=f"user {args.name}, certificate {digest}, as PKCS#12 ({settings})",
            )
            for path, data in ((target, bundle), (passphrase_file, export_secret.reveal())):
                _create(path, data)
                created.append(path)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    finally:
        store.close()
    if args.json:
        print_json(
            {
                "name": args.name,
                "file": str(target),
                "passphrase_file": str(passphrase_file),
                "certificate_sha256": digest,
            }
        )
    else:
        print(f"Wrote the credential of {args.name} to {render.safe(str(target))}")
        print(f"  and its export passphrase to {render.safe(str(passphrase_file))}")
        print("  PKCS#12 (key, client.crt, ca.crt), both files mode 0600")
        print(f"  {settings}")
        print("Hand the passphrase file over apart from the .p12 file.")
    return 0


def _create(path: Path, data: bytes) -> None:
    try:
        write_private_file(path, data)
    except FileExistsError:
        raise UsageError(f"{path} exists already; nothing was written") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}; nothing was written") from exc
