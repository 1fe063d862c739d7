"""The ``liaison`` command: its parser. Each command's work is in ``commands.py`` (and
``audit_commands.py``, ``users_commands.py``), imported only when it runs, so that
``liaison --help`` and a usage error load neither gRPC nor the server.

Operator commands (send, inbox, show, status) talk to the running node
through its local API with a named credential (``--identity``, ``admin`` by
default); init, keys, card, peers, users, audit and serve read the node's home
directly.

Exit codes: 0 success, 1 other error, 2 usage or configuration error,
3 node unreachable, 4 request refused by the node, 5 message not found,
6 not delivered, 7 an audit log or evidence does not verify, 8 refused for this
identity.
"""

from __future__ import annotations

import os

# gRPC core reads its log verbosity once, when it is first imported, and by
# default logs every refused TLS handshake: anyone on the network could fill a
# node's log. Its errors still show; GRPC_VERBOSITY=info brings the rest back.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import difflib
import json
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from liaison.client import audit_cli, render, users_cli
from liaison.client.choices import (
    ACK_STATUSES,
    ASSESSMENT,
    CATEGORIES,
    LISTED_STATES,
    PRIORITIES,
    RELIABILITY,
    TLPS,
)
from liaison.client.cli_common import count, home_path, lazy, log_level
from liaison.client.errors import ClientError, NodeUnavailable, UsageError
from liaison.client.passphrase import NEW_PASSPHRASE_VARIABLE
from liaison.keys.sealed import MIN_LOG2_N, NODE_KEYS_LOG2_N, PASSPHRASE_VARIABLE

COMMANDS = "liaison.client.commands"
MIN_KDF_COST = 10


class _Version(argparse.Action):
    """``--version``; the package metadata is read only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> NoReturn:
        import importlib.metadata  # noqa: PLC0415 - 40 ms every start otherwise

        try:
            version = importlib.metadata.version("liaison-exchange")
        except importlib.metadata.PackageNotFoundError:
            version = "(not installed)"
        sys.stdout.write(f"liaison {version}\n")
        parser.exit(0)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows an option's default when it says something (not None, False or
    empty, and not already in the text), and keeps the lines of the examples."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default in ([], "", argparse.SUPPRESS)
        if quiet or not action.option_strings or "default" in text or action.help is None:
            return action.help
        return f"{text} (default: %(default)s)"


class OneLineParser(argparse.ArgumentParser):
    """A usage error is one line on standard error and exit 2 (subcommands inherit it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    # With --json anywhere on the command line, a usage error is JSON too.
    json_errors = False

    def error(self, message: str) -> NoReturn:
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice is not None:
            offered = re.findall(r"'([^']*)'", choice[2])
            close = difflib.get_close_matches(choice[1], offered, n=1)
            message = f"{render.safe(choice[1])!r} is not one of {', '.join(offered)}"
            if close:
                message += f"; did you mean {close[0]!r}?"
        if OneLineParser.json_errors:
            line = json.dumps(
                {"error": f"{self.prog}: {message}", "exit_code": 2, "kind": "UsageError"},
                ensure_ascii=True,
            )
            self.exit(2, line + "\n")
        self.exit(2, f"{self.prog}: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one flat list of commands
    common = OneLineParser(add_help=False)
    common.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
    common.add_argument(
        "--passphrase-file",
        help="file holding the passphrase of the keys (mode 0600; default: "
        f"${PASSPHRASE_VARIABLE}, else asked on the terminal)",
    )
    as_json = OneLineParser(add_help=False)
    as_json.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP)
    api = OneLineParser(add_help=False, parents=[common])
    api.add_argument("--identity", default="admin", help="local API credential to use")

    parser = OneLineParser(
        prog="liaison",
        description="Liaison Exchange: sealed case notices between agencies.",
        epilog="Exit codes: 0 success, 1 other error, 2 usage or configuration error, "
        "3 node unreachable, 4 request refused by the node, 5 message not found, "
        "6 not delivered, 7 an audit log or evidence does not verify, 8 refused for "
        "this identity.",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version")
    _global_options(parser, None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("init", parents=[common], help="create a node home")
    p.add_argument("--agency", required=True, help="agency id, e.g. MA.DGSN.CCPI")
    p.add_argument("--name", required=True, help="human-readable agency name")
    p.add_argument("--endpoint", required=True, help="HOST:PORT peers dial")
    p.add_argument("--listen", help="HOST:PORT the peer listener binds (default 0.0.0.0:PORT)")
    p.add_argument(
        "--api",
        help="HOST:PORT of the local API (default 127.0.0.1:7700, or a free port if that is taken)",
    )
    p.add_argument(
        "--api-public",
        action="store_true",
        help="allow the local API on an address other than loopback (reachable beyond "
        "this machine)",
    )
    p.add_argument(
        "--api-name",
        action="append",
        default=[],
        help="a host name clients dial the local API by (its certificate names it); repeat",
    )
    p.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the home)")
    p.add_argument(
        "--kdf-cost",
        type=_kdf_cost,
        default=NODE_KEYS_LOG2_N,
        help=f"scrypt cost of the passphrase, as log2 N (default {NODE_KEYS_LOG2_N}: 64 MiB)",
    )
    p.add_argument(
        "--mldsa65",
        action="store_true",
        help="also sign the agency card with a post-quantum ML-DSA-65 key (default: Ed25519 only)",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_init"))

    keys = commands.add_parser("keys", help="this node's private keys").add_subparsers(
        dest="keys_command", required=True, metavar="COMMAND"
    )
    p = keys.add_parser("list", parents=[common, as_json], help="list the keys and their state")
    p.set_defaults(run=lazy(COMMANDS, "cmd_keys_list"))
    p = keys.add_parser(
        "passphrase", parents=[common], help="seal every key under a new passphrase"
    )
    p.add_argument(
        "--new-passphrase-file",
        help=f"file holding the new passphrase (default: ${NEW_PASSPHRASE_VARIABLE}, else asked)",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_keys_passphrase"))
    p = keys.add_parser(
        "seal", parents=[common], help="seal the keys of a home made before keys were sealed"
    )
    p.add_argument("--kdf-cost", type=_kdf_cost, default=NODE_KEYS_LOG2_N, help="as for init")
    p.set_defaults(run=lazy(COMMANDS, "cmd_keys_seal"))
    p = keys.add_parser(
        "rotate",
        parents=[common, as_json],
        help="replace keys, and announce the new card to every pinned peer",
    )
    p.add_argument("--signing", action="store_true", help="the signing key (and ML-DSA-65 key)")
    p.add_argument("--encryption", action="store_true", help="the decryption key (HPKE)")
    p.add_argument("--tls", action="store_true", help="the peer listener's TLS key")
    p.set_defaults(run=lazy(COMMANDS, "cmd_keys_rotate"))

    card = commands.add_parser("card", help="this node's public card").add_subparsers(
        dest="card_command", required=True, metavar="COMMAND"
    )
    p = card.add_parser("export", parents=[common, as_json], help="print this node's card")
    p.set_defaults(run=lazy(COMMANDS, "cmd_card_export"))
    p = card.add_parser("show", parents=[as_json], help="verify and describe a card file")
    p.add_argument("card", metavar="CARD-FILE", help="card file, or - for standard input")
    p.set_defaults(run=lazy(COMMANDS, "cmd_card_show"))

    peers = commands.add_parser("peers", help="pinned peers").add_subparsers(
        dest="peers_command", required=True, metavar="COMMAND"
    )
    p = peers.add_parser(
        "add",
        parents=[common],
        help="pin a peer's card",
        description="Pin a peer's card after comparing its fingerprint with the peer over a "
        "separate channel: give it with --fingerprint (required unless standard input is a "
        "terminal, where the card is shown and you confirm by typing yes).",
    )
    p.add_argument("card", metavar="CARD-FILE", help="card file, or - for standard input")
    p.add_argument(
        "--fingerprint",
        help="refuse the card unless it has this fingerprint (spaces, colons, dashes or none)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace the card pinned for the same agency (its keys have changed)",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_peers_add"))
    p = peers.add_parser("list", parents=[common, as_json], help="list pinned peers")
    p.set_defaults(run=lazy(COMMANDS, "cmd_peers_list"))
    p = peers.add_parser("show", parents=[common, as_json], help="a pinned peer and its state")
    p.add_argument("agency_id", metavar="AGENCY-ID")
    p.set_defaults(run=lazy(COMMANDS, "cmd_peers_show"))
    p = peers.add_parser("remove", parents=[common], help="unpin a peer")
    p.add_argument("agency_id", metavar="AGENCY-ID")
    p.set_defaults(run=lazy(COMMANDS, "cmd_peers_remove"))
    p = peers.add_parser(
        "revoke",
        parents=[common],
        help="refuse a peer's envelopes and hold notices to it",
        description="Revoke a pinned peer: its envelopes are refused (SENDER_REVOKED) and "
        "notices waiting for it are held until `liaison peers reinstate`.",
    )
    p.add_argument("agency_id", metavar="AGENCY-ID")
    p.add_argument(
        "--reason", required=True, help="why, for the audit trail (one line, at most 200 chars)"
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_peers_revoke"))
    p = peers.add_parser("reinstate", parents=[common], help="end a peer's revocation")
    p.add_argument("agency_id", metavar="AGENCY-ID")
    p.set_defaults(run=lazy(COMMANDS, "cmd_peers_reinstate"))
    p = peers.add_parser(
        "has-our-card",
        parents=[common],
        help="record that a peer pinned our current card, handed over out of band",
    )
    p.add_argument("agency_id", metavar="AGENCY-ID")
    p.set_defaults(run=lazy(COMMANDS, "cmd_peers_has_our_card"))

    config = commands.add_parser("config", help="the node's settings (config.toml)")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    p = config_commands.add_parser("show", parents=[common, as_json], help="every setting")
    p.set_defaults(run=lazy(COMMANDS, "cmd_config_show"))
    p = config_commands.add_parser(
        "check", parents=[common, as_json], help="read config.toml as the node will"
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_config_check"))
    p = config_commands.add_parser(
        "set",
        parents=[common, as_json],
        help="change one setting (listen.api, listen.peer, database.url, limits.NAME, …)",
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p.set_defaults(run=lazy(COMMANDS, "cmd_config_set"))

    db = commands.add_parser("db", help="the node's database")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = db_commands.add_parser(
        "upgrade",
        parents=[common, as_json],
        help="bring the database's schema to this version's (back it up first)",
        description="Apply this version's migrations to the node's database (SQLite or "
        "PostgreSQL). A node refuses to start on a schema that is behind or ahead. With "
        "several replicas, stop them all, back the database up, upgrade once, then start "
        "them with the new version.",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_db_upgrade"))

    audit_cli.add_commands(commands, common, as_json, api)
    users_cli.add_commands(commands, common, as_json)

    p = commands.add_parser("serve", parents=[common], help="run the node")
    p.set_defaults(run=lazy("liaison.client.serve_command", "cmd_serve"))

    p = commands.add_parser(
        "send",
        parents=[api, as_json],
        help="seal and send a notice",
        description="Seal a notice to a pinned peer and queue it. Prefer --notice FILE: "
        "options are visible to other users of the machine and stay in shell history.",
    )
    p.add_argument(
        "--to",
        required=True,
        action="append",
        help="recipient agency id; repeat for several (one envelope each, one notice id)",
    )
    _notice_options(p)
    p.add_argument(
        "--wait",
        type=count(0, 86_400),
        default=10,
        help="seconds to wait for delivery (0: none)",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_send"))

    p = commands.add_parser(
        "ack",
        parents=[api, as_json],
        help="acknowledge a received notice to its sender",
    )
    p.add_argument("message_id")
    p.add_argument("--status", required=True, help=f"one of {', '.join(ACK_STATUSES)}")
    _comment_options(p, "the sender")
    p.set_defaults(run=lazy(COMMANDS, "cmd_ack"))

    p = commands.add_parser(
        "reply",
        parents=[api, as_json],
        help="answer a received notice with a notice to its sender",
        description="Case reference, category, priority, handling, evaluation and subject "
        "(as 'Re: ...') are those of the notice answered unless given; handling may only "
        "stay or get stricter.",
    )
    p.add_argument("message_id")
    _notice_options(p)
    p.set_defaults(run=lazy(COMMANDS, "cmd_reply"))

    p = commands.add_parser(
        "forward",
        parents=[api, as_json],
        help="forward a received notice to a third agency, if its handling allows",
        description="The notice goes whole, under its originator's signature, and its "
        "originator is told. TLP:CLEAR, GREEN and AMBER may go to any pinned agency; "
        "TLP:AMBER+STRICT and RED only to one the originator named (send --may-forward-to).",
        epilog="example: liaison forward 0194c3e0-... --to FR.DGPN.SCCOPOL --comment-file note",
    )
    p.add_argument("message_id")
    p.add_argument("--to", required=True, metavar="AGENCY", help="the third agency's id")
    p.add_argument(
        "--reader",
        action="append",
        default=[],
        help="TLP:RED: an identity at the third agency who may read it (at least one; repeat)",
    )
    _comment_options(p, "the recipient")
    _ttl_option(p)
    p.set_defaults(run=lazy(COMMANDS, "cmd_forward"))

    for name, text in (
        ("cancel", "do not send a queued notice"),
        ("retry", "try a queued notice now instead of at its next backoff"),
    ):
        p = commands.add_parser(name, parents=[api, as_json], help=text)
        p.add_argument("message_id")
        p.set_defaults(run=lazy(COMMANDS, "cmd_cancel"), cancel=name == "cancel")

    p = commands.add_parser(
        "watch",
        parents=[api, as_json],
        help="print message events as they happen (resume with --after SEQ)",
    )
    p.add_argument(
        "--after", type=count(0, 2**63 - 1), default=0, help="events after this sequence number"
    )
    p.add_argument(
        "--event", action="append", default=[], help="only this kind, e.g. received (repeat)"
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_watch"))

    p = commands.add_parser(
        "thread", parents=[api, as_json], help="a notice with its acknowledgements and replies"
    )
    p.add_argument("message_id")
    p.set_defaults(run=lazy(COMMANDS, "cmd_thread"))

    for name, box, text in (
        ("inbox", "inbox", "list received notices"),
        ("outbox", "outbox", "list sent notices"),
        ("messages", "all", "list notices both ways"),
    ):
        p = commands.add_parser(name, parents=[api, as_json], help=text)
        _listing_options(p)
        p.set_defaults(run=lazy(COMMANDS, "cmd_inbox"), box=box)
    p = commands.add_parser(
        "search", parents=[api, as_json], help="messages whose subject or case reference holds TEXT"
    )
    p.add_argument("text", metavar="TEXT")
    _listing_options(p)
    p.set_defaults(run=lazy(COMMANDS, "cmd_inbox"), box="all")

    p = commands.add_parser("show", parents=[api, as_json], help="read one notice")
    p.add_argument("message_id")
    p.add_argument(
        "--save-attachments",
        metavar="DIR",
        help="also write its attachments into DIR (names made safe, nothing overwritten)",
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_show"))
    attachment = commands.add_parser("attachment", help="a notice's attachments")
    sub = attachment.add_subparsers(dest="attachment_command", required=True, metavar="COMMAND")
    p = sub.add_parser("save", parents=[api], help="write attachment N of a notice into a folder")
    p.add_argument("message_id")
    p.add_argument("number", type=count(1, 10_000), help="1 for the first attachment")
    p.add_argument("--to", default=".", metavar="DIR", help="folder to write into (default: here)")
    p.set_defaults(run=lazy(COMMANDS, "cmd_attachment_save"))
    p = commands.add_parser("status", parents=[api, as_json], help="state and timeline")
    p.add_argument("message_id")
    p.add_argument(
        "--wait", type=count(0, 86_400), default=0, help="seconds to wait for a final state"
    )
    p.set_defaults(run=lazy(COMMANDS, "cmd_status"))

    p = commands.add_parser("demo", help="two nodes on loopback exchange notices")
    p.add_argument("--keep", metavar="DIR", help="keep the demo's node homes in this folder")
    p.set_defaults(run=lazy(COMMANDS, "cmd_demo"))

    p = commands.add_parser(
        "bench",
        parents=[as_json],
        help="measure two real nodes on loopback against the transport and crypto ceilings",
        description="Starts two nodes in a temporary folder, sends notices from one to the "
        "other through the local API and times them until delivered with a verified receipt; "
        "in the same run, a bare gRPC echo over mutual TLS and the per-notice cryptography "
        "alone. bench/README.md explains the figures and keeps the results.",
    )
    p.add_argument("--quick", action="store_true", help="a short run (under 90 s)")
    p.add_argument("-n", type=count(10, 1_000_000), default=0, help="2 KiB notices to send")
    p.add_argument(
        "--keep",
        metavar="DIR",
        help="keep the node homes, their logs and their passphrase (DIR/passphrase) here",
    )
    p.add_argument(
        "--database-url",
        metavar="URL",
        help="the sending node's database (an empty PostgreSQL database, say); the "
        "receiving node keeps a SQLite file",
    )
    p.add_argument(
        "--replicas",
        type=count(1, 8),
        default=1,
        help="replicas of the sending node sharing its database (needs --database-url); "
        "the senders are spread over their local APIs",
    )
    p.set_defaults(run=lazy("liaison.client.bench", "cmd_bench"))

    p = commands.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Print a completion script: in ~/.bashrc, source <(liaison completion bash); "
        "in ~/.zshrc after compinit, source <(liaison completion zsh).",
    )
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(run=lazy("liaison.client.completion", "cmd_completion"))
    for leaf in _leaves(parser):
        _global_options(leaf, argparse.SUPPRESS)
        examples = EXAMPLES.get(leaf.prog.removeprefix("liaison "))
        if examples and not leaf.epilog:
            leaf.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return parser


# What `liaison COMMAND --help` shows under "examples:".
EXAMPLES: dict[str, tuple[str, ...]] = {
    "init": (
        "liaison init --home ~/liaison --agency MA.DGSN.CCPI --name 'DGSN CCPI' \\",
        "    --endpoint ccpi.example.ma:7443",
    ),
    "peers add": ("liaison peers add their.card --endpoint lo-rabat.example.de:7443",),
    "send": (
        "liaison send --to DE.BPOL.LO-RABAT --notice notice.toml",
        "liaison send --to DE.BPOL.LO-RABAT --case-ref CCPI-2026-0412 --category cybercrime \\",
        "    --tlp amber --subject 'Phishing kit' --body-file body.txt --attach kit.zip",
        "liaison send --to DE.BPOL.LO-RABAT --tlp red --reader amrani --notice notice.toml",
    ),
    "inbox": ("liaison inbox --new", "liaison inbox --tlp red --since 2026-11-01 --json"),
    "show": ("liaison show 0194c3e0-... --save-attachments ~/cases/0412",),
    "ack": ("liaison ack 0194c3e0-... --status action-taken --comment-file note.txt",),
    "reply": ("liaison reply 0194c3e0-... --body-file answer.txt",),
    "watch": ("liaison watch --event received --json", "liaison watch --after 1207"),
    "status": ("liaison status 0194c3e0-... --wait 30",),
    "search": ("liaison search 'job offers' --since 2026-11-01",),
    "users add": (
        "liaison users add amrani --role operator --expires 180d",
        "liaison users add inspection --role auditor",
    ),
    "audit verify": ("liaison audit verify --card our.card",),
    "audit log": (
        "liaison audit log --case CCPI-2026-0412",
        "liaison audit log --identity inspection --event access-denied --since 2026-11-01",
    ),
    "completion": ("source <(liaison completion bash)   # in ~/.bashrc",),
    "bench": ("liaison bench --quick", "liaison bench --json | tail -1 | jq .notices_per_s"),
}


HOME_HELP = "node home folder (default: $LIAISON_HOME, else ~/.liaison)"
JSON_HELP = "print JSON (errors too, on standard error)"


def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """--home, --json, -q and -v, accepted before the command (``default`` None: the
    top level's defaults) and after it (``default`` SUPPRESS, so that an option given
    before is not overwritten by the command's default), as git and gh accept them."""
    have = parser._option_string_actions
    top = default is None
    if "--home" not in have:
        parser.add_argument("--home", default=None if top else default, help=HOME_HELP)
    if "--json" not in have:
        parser.add_argument(
            "--json",
            action="store_true",
            default=False if top else default,
            help=JSON_HELP if top else argparse.SUPPRESS,
        )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=False if top else default,
        help="print only results and errors",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0 if top else default,
        help="log more (-vv: everything)",
    )


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every (sub)command parser that runs a command: those without subcommands."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += _leaves(sub) or [sub]
    return found


def _listing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", type=count(0, 1_000_000), default=0, help="messages per page (default 50)"
    )
    p.add_argument("--cursor", default="", help="the next page, as the last one said")
    p.add_argument("--new", action="store_true", help="received and not yet opened")
    p.add_argument(
        "--state", action="append", default=[], help=f"one of {', '.join(LISTED_STATES)}"
    )
    p.add_argument("--peer", help="to or from this agency")
    p.add_argument("--case", help="exactly this case reference")
    p.add_argument("--category", help=f"one of {', '.join(sorted(CATEGORIES))}")
    p.add_argument("--tlp", help=f"one of {', '.join(TLPS)}")
    p.add_argument("--priority", help=f"one of {', '.join(PRIORITIES)}")
    p.add_argument("--since", help="created at or after (ISO date or date-time, UTC)")
    p.add_argument("--until", help="created before")
    p.add_argument(
        "--newest-first", action="store_true", help="by time only (default: flash and urgent first)"
    )


def _notice_options(p: argparse.ArgumentParser) -> None:
    """The options that describe a notice (``send``, ``reply``)."""
    p.add_argument(
        "--notice",
        metavar="FILE",
        help="TOML file with the notice's fields, or - for standard input",
    )
    p.add_argument("--category", help=f"one of {', '.join(sorted(CATEGORIES))}")
    p.add_argument("--tlp", help=f"one of {', '.join(TLPS)}")
    p.add_argument("--case-ref", help="case reference")
    p.add_argument("--subject", help="one-line subject")
    p.add_argument("--body-file", help="body text file, or - for standard input")
    p.add_argument("--priority", help=f"one of {', '.join(PRIORITIES)} (default routine)")
    p.add_argument("--source-reliability", help=f"one of {', '.join(RELIABILITY)} (default x)")
    p.add_argument("--information", help=f"one of {', '.join(ASSESSMENT)} (default 4)")
    p.add_argument("--reference", action="append", default=[], help="earlier message id")
    p.add_argument(
        "--reader",
        action="append",
        default=[],
        help="TLP:RED: an identity at the receiving node who may read it (at least one; repeat)",
    )
    p.add_argument(
        "--may-forward-to",
        action="append",
        default=[],
        metavar="AGENCY",
        help="consent: the recipient may forward it to this agency (needed for "
        "TLP:AMBER+STRICT and RED; repeat)",
    )
    p.add_argument(
        "--attach", action="append", default=[], metavar="FILE", help="file to attach (repeat)"
    )
    p.add_argument("--unit", help="originating unit")
    p.add_argument("--officer", help="originating officer")
    _ttl_option(p)


def _comment_options(p: argparse.ArgumentParser, whom: str) -> None:
    p.add_argument("--comment", help=f"a few words for {whom} (visible in ps: prefer a file)")
    p.add_argument("--comment-file", help="file holding the comment, or - for standard input")


def _ttl_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ttl",
        type=count(0, 366 * 86_400),
        default=0,
        help="envelope lifetime in seconds (default: the node's, 7 days unless configured)",
    )


def _kdf_cost(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not max(MIN_LOG2_N, MIN_KDF_COST) <= value <= 22:
        raise argparse.ArgumentTypeError(f"choose from {MIN_KDF_COST} to 22, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    OneLineParser.json_errors = "--json" in words
    args = parser.parse_args(words)
    if args.command != "serve":  # serve sets up its own log, with timestamps
        logging.basicConfig(
            level=log_level(args), format="liaison: %(levelname)s %(name)s: %(message)s"
        )
    try:
        return int(args.run(args))
    except ClientError as error:
        message = str(error)
        if isinstance(error, NodeUnavailable):
            home = home_path(args, new=True)
            message += f" Start it with: liaison serve --home {render.safe(str(home))}"
        return _failed(args, message, error.exit_code, type(error).__name__)
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        code = _exit_code_of(error)
        if code is None:
            raise
        return _failed(args, str(error), code, type(error).__name__)


def _exit_code_of(error: Exception) -> int | None:
    """The exit code of an error the commands may raise past the client library: a
    configuration or key problem is a usage error; a node or store problem is 1."""
    from liaison.keys.errors import KeysError  # noqa: PLC0415 - only on the error path
    from liaison.server.config import ConfigError  # noqa: PLC0415
    from liaison.server.errors import ServerError  # noqa: PLC0415
    from liaison.server.store.store import StoreError  # noqa: PLC0415

    if isinstance(error, ConfigError | KeysError):
        return UsageError.exit_code
    if isinstance(error, ServerError | StoreError):
        return ClientError.exit_code
    return None


def _failed(args: argparse.Namespace, message: str, code: int, kind: str) -> int:
    """One line on standard error: text, or with --json a JSON object with the code."""
    if getattr(args, "json", False):
        print(
            json.dumps({"error": message, "exit_code": code, "kind": kind}, ensure_ascii=True),
            file=sys.stderr,
        )
    else:
        # The node's words may carry a peer's (ids, reasons): escaped like all peer text.
        print(f"liaison: {render.safe(message, multiline=True)}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
