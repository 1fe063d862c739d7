"""``liaison audit …``: the parser of the auditors' commands (``audit_commands`` runs them,
loaded only when one runs).

``verify``, ``log``, ``export``, ``report`` and ``proof`` read a node's database: the
home's (beside a running node, or of a stopped one) or, for ``verify``, ``log``,
``export`` and ``report``, a backup copy given with ``--database``. ``checkpoint`` asks
the running node through its local API. ``verify-proof`` needs only the bundle and the
agencies' public cards. Exit 7 when a log or an evidence bundle does not verify.
"""

from __future__ import annotations

import argparse
from typing import Any

from liaison.client.cli_common import count, lazy

COMMANDS = "liaison.client.audit_commands"


# The parser --------------------------------------------------------------------------


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--message", action="append", default=[], help="this message id")
    p.add_argument("--case", help="this case reference (needs the passphrase)")
    p.add_argument("--peer", help="events about this agency")
    p.add_argument("--actor", help="events by this actor (operator, system, admin, node)")
    p.add_argument("--event", action="append", default=[], help="events of this kind")
    p.add_argument("--since", help="at or after (ISO date or date-time, UTC)")
    p.add_argument("--until", help="before (ISO date or date-time, UTC)")


def add_commands(
    commands: Any,
    common: argparse.ArgumentParser,
    as_json: argparse.ArgumentParser,
    api: argparse.ArgumentParser,
) -> None:
    """Add ``liaison audit …`` to the CLI's subcommands."""
    audit = commands.add_parser("audit", help="the verifiable audit log").add_subparsers(
        dest="audit_command", required=True, metavar="COMMAND"
    )
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database", metavar="FILE", help="a backup copy of node.db to read instead"
    )

    p = audit.add_parser(
        "verify",
        parents=[common, as_json, database],
        help="recompute the log, check every checkpoint and cosignature (exit 7 if not)",
    )
    p.add_argument(
        "--card",
        metavar="CARD-FILE",
        help="our card (armored), to anchor the checkpoint signatures",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_verify"))

    p = audit.add_parser("log", parents=[common, as_json, database], help="the events, filtered")
    _filters(p)
    p.add_argument(
        "--identity",
        help="read through the running node's local API with this credential (an auditor's "
        "or an admin's) instead of from its database",
    )
    p.add_argument("--limit", type=count(0, 10_000_000), default=0, help="at most this many events")
    p.set_defaults(run=lazy(COMMANDS, "cmd_log"))

    p = audit.add_parser(
        "export",
        parents=[common, database],
        help="the events as JSON lines or CSV, with the checkpoint that covers them",
    )
    _filters(p)
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--out", help="file to write (not overwritten); default standard output")
    p.set_defaults(run=lazy(COMMANDS, "cmd_export"))

    p = audit.add_parser(
        "checkpoint",
        parents=[api, as_json],
        help="have the running node sign a checkpoint now and its peers cosign it",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_checkpoint"))

    p = audit.add_parser("proof", parents=[common], help="write one message's evidence bundle")
    p.add_argument("message_id", metavar="MESSAGE-ID")
    p.add_argument("--out", required=True, help="the bundle file to write (not overwritten)")
    p.add_argument(
        "--no-peer", action="store_true", help="do not ask the receiver for its log's proof"
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_proof"))

    p = audit.add_parser(
        "verify-proof",
        parents=[as_json],
        help="check an evidence bundle offline with the agencies' public cards (exit 7 if not)",
    )
    p.add_argument("bundle", metavar="FILE")
    p.add_argument(
        "--card", action="append", required=True, help="an agency's card (armored); repeat"
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_verify_proof"))

    p = audit.add_parser(
        "report",
        parents=[common, database],
        help="one self-contained HTML report for a case or a time range",
    )
    _filters(p)
    p.add_argument("--html", required=True, metavar="FILE", help="the report to write")
    p.set_defaults(run=lazy(COMMANDS, "cmd_report"))
