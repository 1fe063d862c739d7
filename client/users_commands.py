"""``liaison users …``: the local API's named identities (admin, on the node's machine).

``add`` and ``rotate`` issue a credential folder under ``credentials/NAME/`` (the CA,
a client certificate, its key sealed under the *credential's* own passphrase, and the
API's address) to hand to its holder; ``revoke`` takes effect on the holder's next
call, without a restart. They need the home's passphrase (the CA's key is sealed in
the key store); ``list`` does not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
from collections.abc import Callable
from typing import Any

from liaison.client import render
from liaison.client.cli_common import home_path, print_json, unlocked_home
from liaison.client.errors import UsageError
from liaison.client.passphrase import NEW_PASSPHRASE_VARIABLE, new_passphrase
from liaison.keys.sealed import Unlocker
from liaison.server.home import NodeHome
from liaison.server.store import users as registry
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
