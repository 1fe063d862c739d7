"""``liaison users …``: the parser of the local API's identity commands (``users_commands``
runs them, loaded only when one runs)."""

from __future__ import annotations

import argparse
from typing import Any

from liaison.client.cli_common import lazy
from liaison.client.passphrase import NEW_PASSPHRASE_VARIABLE

COMMANDS = "liaison.client.users_commands"
# The roles of server/access.py (a test keeps the two lists the same).
ROLES = ("operator", "system", "auditor", "admin")


def add_commands(
    commands: Any, common: argparse.ArgumentParser, as_json: argparse.ArgumentParser
) -> None:
    """Add ``liaison users …`` to the CLI's subcommands."""
    parser = commands.add_parser("users", help="the local API's named identities and roles")
    sub = parser.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    issuing = argparse.ArgumentParser(add_help=False)
    issuing.add_argument(
        "--expires", help="validity from now: 90d, 12w or 1y (default 1y, at most 5y)"
    )
    issuing.add_argument(
        "--new-passphrase-file",
        help=f"file holding the credential's passphrase (or ${NEW_PASSPHRASE_VARIABLE})",
    )

    p = sub.add_parser(
        "add", parents=[common, as_json, issuing], help="issue a credential to a new identity"
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", required=True, choices=ROLES)
    p.set_defaults(run=lazy(COMMANDS, "cmd_add"))

    p = sub.add_parser(
        "rotate", parents=[common, as_json, issuing], help="a new certificate and key"
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(run=lazy(COMMANDS, "cmd_rotate"))

    p = sub.add_parser("revoke", parents=[common, as_json], help="refuse the identity's calls")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--reason", required=True, help="why, for the audit trail (one line)")
    p.set_defaults(run=lazy(COMMANDS, "cmd_revoke"))

    p = sub.add_parser("list", parents=[common, as_json], help="every identity and its state")
    p.set_defaults(run=lazy(COMMANDS, "cmd_list"))

    p = sub.add_parser(
        "export",
        parents=[common, as_json],
        help="write a credential as a PKCS#12 file, for clients in other languages",
        description="Write the credential credentials/NAME as one PKCS#12 (.p12, PFX) file: "
        "its key and client certificate, and the local API's CA certificate. The "
        "credential's own passphrase (--passphrase-file or $LIAISON_PASSPHRASE) only opens "
        "its key: the file is encrypted under a fresh random export passphrase (192 bits, "
        "32 characters of A-Z a-z 0-9 - _), written alone to --passphrase-to and never "
        "shown. With PBES2 (PBKDF2-HMAC-SHA256, 600,000 rounds, AES-256-CBC) and an "
        "HMAC-SHA256 MAC whose key cryptography derives at 2,048 rounds: a guess can be "
        "checked at that cost, which is why the passphrase is random rather than chosen. "
        "For gRPC clients that cannot open Liaison's sealed key: Java (KeyStore type "
        "PKCS12), .NET (PFX), Go, Node.js. Both files are created with mode 0600 and never "
        "overwritten (both are checked before anything is asked); the export is audited, "
        "without the passphrase.",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", required=True, metavar="FILE", help="the .p12 file to create")
    p.add_argument(
        "--passphrase-to",
        required=True,
        metavar="FILE",
        help="the file to create with the .p12 file's passphrase (hand it over separately)",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_export"))
