"""What each ``liaison`` command does (``cli.py`` is the parser; this module, with gRPC
and the server behind it, loads only when a command runs)."""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import mimetypes
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from liaison.client import render
from liaison.client.api import SendResult
from liaison.client.attachments import save_attachments
from liaison.client.choices import (
    ACK_STATUSES,
    ASSESSMENT,
    CATEGORIES,
    LISTED_STATES,
    PRIORITIES,
    RELIABILITY,
    TLPS,
)
from liaison.client.cli_common import api_client as _client
from liaison.client.cli_common import home_path as _home
from liaison.client.cli_common import note, paged, progress
from liaison.client.cli_common import print_json as _print_json
from liaison.client.cli_common import unlocked_home as _unlocked_home
from liaison.client.demo import run_demo
from liaison.client.errors import NotDelivered, UsageError
from liaison.client.notice_file import NoticeFile, load_notice_file
from liaison.client.passphrase import NEW_PASSPHRASE_VARIABLE, new_passphrase
from liaison.client.render import state_name
from liaison.keys.card import PeerCard, armor_card, dearmor_card, parse_card
from liaison.keys.ids import is_agency_id
from liaison.keys.keyring import ROTATABLE
from liaison.keys.sealed import PASSPHRASE_VARIABLE
from liaison.server.config import (
    CONFIG_FILE,
    NodeConfig,
    api_target,
    load_config,
    with_setting,
    write_config,
)
from liaison.server.home import NodeHome, change_passphrase, init_home, seal_unsealed_home
from liaison.server.rotation import rotate_keys
from liaison.server.store.audit import AuditKind, append
from liaison.server.store.store import (
    PinConflict,
    PinnedPeer,
    PinOutcome,
    Store,
    known_revisions,
    revoke_reason_problem,
)
from liaison.v1 import node_pb2, notice_pb2

T = TypeVar("T")
MIN_KDF_COST = 10

# Commands that read the home folder ---------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    secret = new_passphrase(
        args.passphrase_file, variable=PASSPHRASE_VARIABLE, what="the node's keys"
    )
    home = init_home(
        _home(args, new=True),
        agency_id=args.agency,
        name=args.name,
        endpoint=args.endpoint,
        peer_listen=args.listen,
        api_listen=args.api,
        database_url=args.database_url or "",
        passphrase=secret,
        kdf_log2_n=args.kdf_cost,
        credential_log2_n=max(MIN_KDF_COST, args.kdf_cost - 1),
        mldsa65=args.mldsa65,
        api_public=args.api_public,
        api_names=tuple(args.api_name),
    )
    card = home.identity().card
    print(f"Initialised node {card.agency_id} in {home.path}")
    print(f"  peer endpoint  {card.endpoint}")
    print(f"  local API      {home.config().api_listen}")
    print(f"  card           {card.fingerprint}")
    note(
        args,
        "Next: `liaison card export > card.txt`, exchange cards with your peer, "
        "`liaison peers add THEIR-CARD`, then `liaison serve`.",
    )
    return 0


def cmd_card_export(args: argparse.Namespace) -> int:
    card = _unlocked_home(args).identity().card
    if args.json:
        _print_json(_card_json(card) | {"card": armor_card(card.signed_card)})
    else:
        sys.stdout.write(armor_card(card.signed_card))
        print(f"card fingerprint: {card.fingerprint}", file=sys.stderr)
    return 0


def cmd_card_show(args: argparse.Namespace) -> int:
    card = parse_card(dearmor_card(_read_text(args.card)))
    if args.json:
        _print_json(_card_json(card))
    else:
        for key, value in _card_json(card).items():
            print(f"{key:<20} {render.safe(value)}")
    return 0


def _card_json(card: Any) -> dict[str, str]:
    return {
        "agency_id": card.agency_id,
        "name": card.name,
        "endpoint": card.endpoint,
        "fingerprint": card.fingerprint,
        "signing_key_id": card.signing_key_id,
        "encryption_key_id": card.encryption_key_id,
        "tls_certificate_sha256": card.tls_fingerprint,
        "created_at": card.created_at.isoformat().replace("+00:00", "Z"),
        "post_quantum_card_signature": "ML-DSA-65" if card.post_quantum_signed else "none",
        "card_sequence": str(card.sequence),
    }


_FINGERPRINT_REQUIRED = (
    "--fingerprint is required when standard input is not a terminal: compare the card's "
    "fingerprint (`liaison card show CARD`) with the peer over a separate channel and give "
    "it; not pinned"
)


def _fingerprint_digits(text: str) -> str:
    """A fingerprint as the card's 64 hex digits: spaces, colons and dashes dropped, any case."""
    digits = re.sub(r"[\s:-]", "", text).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise UsageError(
            "--fingerprint is not a card fingerprint (64 hex digits, in groups separated by "
            "spaces, colons or dashes, or none): not pinned"
        )
    return digits


def _agency(text: str) -> str:
    if not is_agency_id(text):
        raise UsageError(f"{render.safe(text)!r} is not an agency id, e.g. MA.DGSN.CCPI")
    return text


def _card_changed(pinned: PinnedPeer, offered: PeerCard) -> str:
    """The refusal of a card that would replace another, old and new side by side (as ssh)."""
    agency = offered.agency_id
    return (
        f"WARNING: the card of {agency} has changed. This node has pinned another card for it:\n"
        f"  pinned card   {pinned.card.fingerprint}  endpoint {render.safe(pinned.card.endpoint)}"
        f", pinned {_iso(pinned.pinned_at)}\n"
        f"  offered card  {offered.fingerprint}  endpoint {render.safe(offered.endpoint)}\n"
        f"Someone may be impersonating {agency}, or {agency} has replaced its keys. "
        f"Nothing was changed. Compare the offered fingerprint with {agency} over a separate "
        "channel; if it is theirs, pin it with `liaison peers add CARD --replace --fingerprint "
        "FINGERPRINT`."
    )


def _confirmed(card: PeerCard, pinned: PinnedPeer | None) -> bool:
    """Show ``card`` on the terminal and ask the operator to type yes."""
    print(f"Agency card of {card.agency_id}:")
    for key, value in _card_json(card).items():
        print(f"  {key:<24} {render.safe(value)}")
    if pinned is not None:
        print(f"  {'replaces pinned card':<24} {pinned.card.fingerprint}")
    print("Compare the fingerprint with the peer over a separate channel (by phone, not by")
    print("the way the card came).")
    sys.stdout.write("Pin this card? Type yes to confirm: ")
    sys.stdout.flush()
    return sys.stdin.readline().strip().lower() == "yes"


def _pin(
    store: Store,
    card: PeerCard,
    pinned: PinnedPeer | None,
    *,
    confirm: bool,
    replace: bool,
    our_card: int,
) -> PinOutcome:
    if pinned is not None and pinned.card.signed_card == card.signed_card:
        return PinOutcome.UNCHANGED
    if pinned is not None and not replace:
        raise UsageError(_card_changed(pinned, card))
    if confirm and not _confirmed(card, pinned):
        raise UsageError("not confirmed: not pinned")
    try:
        return store.pin_peer(
            card, actor="admin", now=dt.datetime.now(dt.UTC), replace=replace, our_card=our_card
        )
    except PinConflict as conflict:  # another card was pinned meanwhile
        raise UsageError(_card_changed(conflict.pinned, card)) from None


def cmd_peers_add(args: argparse.Namespace) -> int:
    # On a terminal the operator confirms the fingerprint shown; elsewhere it must be given.
    confirm = args.fingerprint is None
    interactive = args.card != "-" and sys.stdin.isatty()
    if confirm and args.card == "-":
        raise UsageError(_FINGERPRINT_REQUIRED)
    card = parse_card(dearmor_card(_read_text(args.card)))
    if args.fingerprint is not None and _fingerprint_digits(args.fingerprint) != (
        card.fingerprint.replace(" ", "")
    ):
        raise UsageError(
            f"the card's fingerprint is {card.fingerprint}, not the one given: not pinned"
        )
    home = NodeHome(_home(args))
    config = home.config()
    if card.agency_id == config.agency_id:
        raise UsageError("that is this node's own card")
    if confirm and not interactive:
        raise UsageError(_FINGERPRINT_REQUIRED)
    store = home.open_store(config)
    try:
        pinned = store.pinned_peer(card.agency_id)
        outcome = _pin(
            store,
            card,
            pinned,
            confirm=confirm,
            replace=args.replace,
            # The peer was handed our current card, as we were handed theirs.
            our_card=home.card_sequence(),
        )
    finally:
        store.close()
    if outcome is PinOutcome.UNCHANGED:
        print(f"{card.agency_id} is already pinned with this card; nothing changed")
        print(f"  card fingerprint {card.fingerprint}")
        return 0
    verb = "Replaced the card of" if outcome is PinOutcome.REPLACED else "Pinned"
    print(f"{verb} {card.agency_id} ({render.safe(card.name)}) at {render.safe(card.endpoint)}")
    if pinned is not None and outcome is PinOutcome.REPLACED:
        print(f"  old card fingerprint {pinned.card.fingerprint}")
    print(f"  card fingerprint {card.fingerprint}")
    if pinned is not None and pinned.revoked:
        print(f"  {card.agency_id} stays revoked; `liaison peers reinstate` ends that")
    return 0


def _peer_json(peer: PinnedPeer, pending: int) -> dict[str, Any]:
    return _card_json(peer.card) | {
        "state": peer.state.value,
        "pinned_at": _iso(peer.pinned_at),
        "revoked_at": _iso(peer.revoked_at) if peer.revoked_at else None,
        "revoke_reason": peer.revoke_reason,
        "pending_notices": pending,
        "held_notices": pending if peer.revoked else 0,
        # Rotation: the card the peer replaced, while still trusted; the card of ours it pins.
        "previous_card": peer.previous.fingerprint if peer.previous else None,
        "previous_card_trusted_until": _iso(peer.previous_until)
        if peer.previous and peer.previous_until
        else None,
        "pins_our_card": peer.our_card,
        "our_card_announced": peer.announcing,
    }


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def cmd_peers_list(args: argparse.Namespace) -> int:
    store = NodeHome(_home(args)).open_store()
    try:
        peers = store.pinned_peers()
        pending = store.pending_by_recipient()
    finally:
        store.close()
    if args.json:
        _print_json([_peer_json(peer, pending.get(peer.card.agency_id, 0)) for peer in peers])
    else:
        for peer in peers:
            card = peer.card
            print(
                f"{card.agency_id:<24} {peer.state.value:<8} "
                f"{render.safe(card.endpoint):<24} {card.fingerprint}"
            )
    return 0


def _on_peer(args: argparse.Namespace, work: Callable[[Store, str], T]) -> tuple[str, T, int]:
    """Run ``work`` on the home's store for the peer ``args`` names.

    Returns the agency id, what ``work`` returned, and the notices still
    waiting for that peer afterwards.
    """
    agency_id = _agency(args.agency_id)
    store = NodeHome(_home(args)).open_store()
    try:
        result = work(store, agency_id)
        pending = store.pending_by_recipient().get(agency_id, 0)
    finally:
        store.close()
    return agency_id, result, pending


def cmd_peers_show(args: argparse.Namespace) -> int:
    agency_id, found, pending = _on_peer(
        args, lambda store, agency: (store.pinned_peer(agency), store.delivery_health(agency))
    )
    peer, health = found
    if peer is None:
        raise UsageError(f"{agency_id} is not a pinned peer")
    shown = _peer_json(peer, pending) | {
        "last_delivered_at": _iso(health.last_delivered_at) if health.last_delivered_at else None,
        "last_delivery_error": health.last_error,
        "last_delivery_error_at": _iso(health.last_error_at) if health.last_error_at else None,
    }
    if args.json:
        _print_json(shown)
    else:
        for key, value in shown.items():
            if value is not None:
                print(f"{key:<24} {render.safe(str(value))}")
    return 0


def cmd_peers_remove(args: argparse.Namespace) -> int:
    agency_id, removed, pending = _on_peer(
        args,
        lambda store, agency: store.remove_peer(agency, actor="admin", now=dt.datetime.now(dt.UTC)),
    )
    if removed is None:
        raise UsageError(f"{agency_id} is not a pinned peer; nothing removed")
    print(f"Removed {agency_id}: card {removed.card.fingerprint} is no longer trusted")
    if pending:
        print(f"  notices waiting for it, not sent unless it is pinned again: {pending}")
    return 0


def cmd_peers_revoke(args: argparse.Namespace) -> int:
    problem = revoke_reason_problem(args.reason)
    if problem:
        raise UsageError(f"{problem}: not revoked")
    agency_id, change, pending = _on_peer(
        args,
        lambda store, agency: store.revoke_peer(
            agency, args.reason, actor="admin", now=dt.datetime.now(dt.UTC)
        ),
    )
    if change is None:
        raise UsageError(f"{agency_id} is not a pinned peer; nothing revoked")
    peer = change.peer
    if not change.changed:
        assert peer.revoked_at is not None
        print(
            f"{agency_id} is already revoked, since {_iso(peer.revoked_at)} "
            f"({render.safe(peer.revoke_reason or '')}); nothing changed"
        )
        return 0
    print(f"Revoked {agency_id}: its envelopes are refused (SENDER_REVOKED)")
    print(f"  notices waiting for it, held until `liaison peers reinstate`: {pending}")
    return 0


def cmd_peers_reinstate(args: argparse.Namespace) -> int:
    agency_id, change, pending = _on_peer(
        args,
        lambda store, agency: store.reinstate_peer(
            agency, actor="admin", now=dt.datetime.now(dt.UTC)
        ),
    )
    if change is None:
        raise UsageError(f"{agency_id} is not a pinned peer; nothing reinstated")
    if not change.changed:
        print(f"{agency_id} is not revoked; nothing changed")
        return 0
    print(f"Reinstated {agency_id}: its envelopes are accepted again")
    print(f"  held notices, sent now: {pending}")
    return 0


def cmd_peers_has_our_card(args: argparse.Namespace) -> int:
    sequence = NodeHome(_home(args)).card_sequence()
    agency_id, change, _pending = _on_peer(
        args,
        lambda store, agency: store.handed_our_card(
            agency, sequence, actor="admin", now=dt.datetime.now(dt.UTC)
        ),
    )
    if change is None:
        raise UsageError(f"{agency_id} is not a pinned peer")
    if not change.changed:
        print(f"{agency_id} already pins our card {sequence}; nothing changed")
        return 0
    print(f"Recorded: {agency_id} pins our card {sequence} (handed over out of band)")
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    entries = NodeHome(_home(args)).keys.entries()
    rows = [
        {
            "id": entry.key_id,
            "role": entry.role,
            "kind": entry.kind,
            "state": entry.state,
            "created": render.iso_datetime(entry.created),
            "retire_after": render.iso_datetime(entry.retire_after) if entry.retire_after else None,
        }
        for entry in entries
    ]
    if args.json:
        _print_json(rows)
    else:
        for row in rows:
            print(
                f"{row['role']:<14} {row['state']:<9} {row['created']}  "
                f"{row['retire_after'] or '-':<20}  {row['id']}  {row['kind']}"
            )
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    kinds = frozenset(kind for kind in ROTATABLE if getattr(args, kind))
    if not kinds:
        raise UsageError("say what to rotate: --signing, --encryption and/or --tls")
    home = _unlocked_home(args)
    config = home.config()
    store = home.open_store(config)
    try:
        rotated = rotate_keys(
            home,
            store,
            kinds,
            storage=home.storage_key(),
            limits=config.limits,
            actor="admin",
        )
    finally:
        store.close()
    if args.json:
        _print_json(
            {
                "card_sequence": rotated.sequence,
                "fingerprint": rotated.fingerprint,
                "rotated": [
                    {"role": old.role, "old": old.key_id, "new": new.key_id}
                    for old, new in zip(rotated.replaced, rotated.created, strict=True)
                ],
                "announced_to": rotated.announced,
                "needs_card_out_of_band": rotated.behind,
            }
        )
        return 0
    print(f"Rotated {', '.join(sorted(kinds))}: this node's card is now card {rotated.sequence}")
    for old, new in zip(rotated.replaced, rotated.created, strict=True):
        print(f"  {old.role:<14} {old.key_id} -> {new.key_id}")
    print(f"  card fingerprint {rotated.fingerprint}")
    if rotated.announced:
        print(f"Announced to {', '.join(rotated.announced)}; delivered by the node when it runs.")
    for agency_id in rotated.behind:
        print(f"  {agency_id} pins an older card of ours: give it the new card out of band")
    print("The old keys are destroyed once every peer has the new card (`liaison keys list`).")
    return 0


def cmd_keys_seal(args: argparse.Namespace) -> int:
    secret = new_passphrase(
        args.passphrase_file, variable=PASSPHRASE_VARIABLE, what="the node's keys"
    )
    home = seal_unsealed_home(_home(args), secret, log2_n=args.kdf_cost)
    print(f"The keys of {home.path} are sealed; the files in clear are deleted.")
    return 0


def cmd_keys_passphrase(args: argparse.Namespace) -> int:
    home = _unlocked_home(args)
    new = new_passphrase(
        args.new_passphrase_file, variable=NEW_PASSPHRASE_VARIABLE, what="the node's keys"
    )
    change_passphrase(home, new)
    print(f"The keys of {home.path} are now sealed under the new passphrase.")
    return 0


# Commands that use the local API -------------------------------------------------


def _read_text(path: str) -> str:
    try:
        return sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc


def _choice(name: str, value: str, choices: dict[str, Any]) -> Any:
    if not value:
        return 0  # unset: a reply carries its original's over
    key = value.lower().removeprefix("tlp:") if name == "TLP" else value.lower()
    if key not in choices:
        raise UsageError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
    return choices[key]


def build_notice(args: argparse.Namespace, *, reply: bool = False) -> notice_pb2.CaseNotice:
    """The notice from ``--notice FILE`` and the options; options win over the file.

    For a ``reply`` only the body is needed: what is left unset is carried over
    by the node from the message answered.
    """
    given = load_notice_file(args.notice) if args.notice else NoticeFile()

    def text(option: str, key: str, default: str | None = None) -> str:
        value = getattr(args, option)
        value = value if value is not None else given.text.get(key, default)
        if value is None and reply and option != "body_file":
            return ""
        if value is None:
            raise UsageError(
                f"the notice needs {key.replace('_', ' ')}: give --{option.replace('_', '-')} "
                "or put it in the --notice file"
            )
        return value

    # Keyword arguments are evaluated in order: errors name the first missing field.
    notice = notice_pb2.CaseNotice(
        case_reference=text("case_ref", "case_reference"),
        category=_choice("category", text("category", "category"), CATEGORIES),
        priority=_choice(
            "priority", text("priority", "priority", None if reply else "routine"), PRIORITIES
        ),
        handling=_choice("TLP", text("tlp", "tlp"), TLPS),
        subject=text("subject", "subject"),
        body=_read_text(args.body_file) if args.body_file else text("body_file", "body"),
        references=[*given.references, *args.reference],
        readers=[*given.readers, *args.reader],
        forwardable_to=[*given.forwardable_to, *map(_agency, args.may_forward_to)],
        originator=notice_pb2.Originator(
            unit=text("unit", "unit", ""), officer=text("officer", "officer", "")
        ),
    )
    reliability = text("source_reliability", "source_reliability", None if reply else "x")
    information = text("information", "information", None if reply else "4")
    if reliability or information:  # a reply without either keeps its original's
        notice.evaluation.CopyFrom(
            notice_pb2.Evaluation(
                source_reliability=_choice("source reliability", reliability or "x", RELIABILITY),
                information_assessment=_choice(
                    "information assessment", information or "4", ASSESSMENT
                ),
            )
        )
    for path in [*given.attachments, *map(Path, args.attach)]:
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read attachment {path}: {exc}") from exc
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        notice.attachments.add(
            name=path.name,
            media_type=media_type,
            content=content,
            sha256=hashlib.sha256(content).digest(),
        )
    return notice


def cmd_send(args: argparse.Namespace) -> int:
    notice = build_notice(args)
    recipients = [_agency(name) for name in args.to]
    size = notice.ByteSize()
    with _client(args) as client, progress(args, "sending the notice to the node", size=size):
        result = client.send_notice(
            recipients if len(recipients) > 1 else recipients[0],
            notice,
            ttl_seconds=args.ttl,
            wait_seconds=args.wait,
        )
    if not result.recipients:
        if args.json:
            _print_json(
                {"message_id": result.message_id, "state": result.state, "reason": result.reason}
            )
        else:
            print(f"{render.safe(result.message_id)} {result.state}")
        return _delivery_verdict(result.state, result.reason, recipients[0], args.wait)
    if args.json:
        _print_json(
            {
                "notice_id": result.notice_id,
                "recipients": [
                    {
                        "recipient": one.recipient,
                        "message_id": one.message_id,
                        "state": one.state,
                        "reason": one.reason,
                    }
                    for one in result.recipients
                ],
            }
        )
    else:
        print(f"notice {render.safe(result.notice_id)}")
        for one in result.recipients:
            print(f"  {render.safe(one.recipient):<24} {render.safe(one.message_id)} {one.state}")
    verdicts = [
        _delivery_verdict(one.state, one.reason, one.recipient, args.wait)
        for one in result.recipients
    ]
    return max(verdicts)


def _delivery_verdict(state: str, reason: str, peer: str, waited: int) -> int:
    """The exit code of a state reached within ``--wait``: NotDelivered's for failed or
    expired (with why on standard error), 0 otherwise; a notice still on its way says so."""
    if state == "failed":
        why = "a duplicate of a message it holds" if reason == "DUPLICATE" else render.safe(reason)
        print(f"liaison: rejected by {render.safe(peer)}: {why}", file=sys.stderr)
        return NotDelivered.exit_code
    if state == "expired":
        print(f"liaison: expired before {render.safe(peer)} could be reached", file=sys.stderr)
        return NotDelivered.exit_code
    if state in ("queued", "sent") and waited:
        print(
            f"liaison: not delivered within {waited} s; the node keeps trying until the "
            "notice expires (`liaison status ID --wait N`)",
            file=sys.stderr,
        )
    return 0


def cmd_ack(args: argparse.Namespace) -> int:
    comment = _comment(args)
    with _client(args) as client:
        result = client.acknowledge(
            args.message_id, _choice("status", args.status, ACK_STATUSES), comment=comment
        )
    _print_sent(args, result)
    return 0


def _print_sent(args: argparse.Namespace, result: SendResult) -> None:
    """The message a command queued (or changed): its id and state, or as JSON."""
    if args.json:
        _print_json({"message_id": result.message_id, "state": result.state})
    else:
        print(f"{render.safe(result.message_id)} {result.state}")


def _comment(args: argparse.Namespace) -> str:
    """``--comment-file`` (or - for standard input), else ``--comment``, else none."""
    return _read_text(args.comment_file) if args.comment_file else (args.comment or "")


def cmd_forward(args: argparse.Namespace) -> int:
    comment = _comment(args)
    with _client(args) as client:
        result = client.forward(
            args.message_id,
            _agency(args.to),
            readers=args.reader,
            comment=comment,
            ttl_seconds=args.ttl,
        )
    _print_sent(args, result)
    return 0


def cmd_reply(args: argparse.Namespace) -> int:
    notice = build_notice(args, reply=True)
    with _client(args) as client:
        result = client.reply(args.message_id, notice, ttl_seconds=args.ttl)
    _print_sent(args, result)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.cancel(args.message_id) if args.cancel else client.retry(args.message_id)
    _print_sent(args, result)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Print message events as they happen, until interrupted."""
    with _client(args) as client:
        try:
            for event in client.watch(args.after, events=args.event):
                if args.json:
                    _print_json(_watch_json(event))
                else:
                    print(_watch_line(event), flush=True)
        except KeyboardInterrupt:
            return 0
    return 0


def _watch_json(event: node_pb2.WatchEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": render.iso(event.at),
        "event": event.event,
        "message_id": event.message_id,
        "peer": event.peer,
        "detail": event.detail,
        "reason": event.reason,
    }


def _watch_line(event: node_pb2.WatchEvent) -> str:
    return (
        f"{event.seq:>8}  {render.iso(event.at)}  {render.safe(event.event):<22} "
        f"{render.safe(event.message_id)}  {render.safe(event.peer)}  "
        f"{render.safe(event.reason or event.detail)}"
    ).rstrip()


def cmd_thread(args: argparse.Namespace) -> int:
    with _client(args) as client:
        messages = client.thread(args.message_id)
    if args.json:
        _print_json([render.summary_json(m) for m in messages])
    else:
        with paged(args):
            for message in messages:
                print(render.summary_line(message))
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    direction = {
        "inbox": node_pb2.DIRECTION_INBOUND,
        "outbox": node_pb2.DIRECTION_OUTBOUND,
        "all": node_pb2.DIRECTION_UNSPECIFIED,
    }[args.box]
    with _client(args) as client:
        page = client.list_page(direction, args.limit, cursor=args.cursor, **_filters(args))
    if args.json:
        _print_json([render.summary_json(m) for m in page.messages])
    elif not page.messages:
        print("no messages")
    else:
        with paged(args):
            for message in page.messages:
                print(render.summary_line(message))
    if page.next_cursor:
        print(
            f"liaison: more messages match; the next page: --cursor {page.next_cursor}",
            file=sys.stderr,
        )
    return 0


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The listing filters the options give, as ``ListMessagesRequest`` fields."""
    filters: dict[str, Any] = {"newest_first": args.newest_first}
    states = [_choice("state", state, LISTED_STATES) for state in args.state]
    if args.new:
        states.append(node_pb2.MESSAGE_STATE_RECEIVED)
    if states:
        filters["states"] = states
    if args.peer:
        filters["peer"] = _agency(args.peer)
    if args.case:
        filters["case_reference"] = args.case
    if getattr(args, "text", None):
        filters["text"] = args.text
    for option, field, choices in (
        ("category", "category", CATEGORIES),
        ("tlp", "handling", TLPS),
        ("priority", "priority", PRIORITIES),
    ):
        value = getattr(args, option)
        if value:
            filters[field] = _choice(option, value, choices)
    for option in ("since", "until"):
        value = getattr(args, option)
        if value:
            stamp = Timestamp()
            stamp.FromDatetime(_when(option, value))
            filters[option] = stamp
    return filters


def _when(option: str, text: str) -> dt.datetime:
    """``--since``/``--until``: an ISO date or date-time; without a zone, UTC."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--{option} must be a date or date-time, e.g. 2026-11-29") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        detail = client.get_message(args.message_id)
    if args.json:
        _print_json(render.detail_json(detail))
    else:
        with paged(args):
            color = render.color_wanted(sys.stdout)
            print("\n".join(render.detail_lines(detail, color=color)))
    if args.save_attachments:
        _save(detail, Path(args.save_attachments), None)
    return 0


def cmd_attachment_save(args: argparse.Namespace) -> int:
    """Stream attachment N into a folder (the other attachments are not fetched)."""
    with _client(args) as client:
        paths = client.save_attachments(args.message_id, args.to, only=args.number)
    for path in paths:
        print(f"saved {render.safe(str(path))}", file=sys.stderr)
    return 0


def _save(detail: node_pb2.MessageDetail, folder: Path, only: int | None) -> None:
    """Write the notice's attachments (their SHA-256 checked, names made safe, nothing
    overwritten) and say where each went, on standard error."""
    if not detail.HasField("notice"):
        raise UsageError("this message holds no notice with attachments")
    for path in save_attachments(detail.notice, folder, only=only):
        print(f"saved {render.safe(str(path))}", file=sys.stderr)


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.get_status(args.message_id, wait_seconds=args.wait)
    state = state_name(status.state)
    if args.json:
        _print_json(
            {
                "message_id": status.message_id,
                "state": state,
                "reason": status.reason,
                "recipients": [
                    {
                        "recipient": one.recipient,
                        "message_id": one.message_id,
                        "state": state_name(one.state),
                        "reason": one.reason,
                    }
                    for one in status.recipients
                ],
                "timeline": render.timeline_json(status.timeline),
            }
        )
    else:
        print(f"{render.safe(status.message_id)} {state}")
        for one in status.recipients:
            print(
                f"  {render.safe(one.recipient):<24} {render.safe(one.message_id)} "
                f"{state_name(one.state)}"
            )
        print("\n".join(render.timeline_lines(status.timeline)))
    if args.wait and status.peer and state in ("failed", "expired"):
        return _delivery_verdict(state, status.reason, status.peer, 0)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(keep=Path(args.keep) if args.keep else None)


# Parser ---------------------------------------------------------------------------


# config ------------------------------------------------------------------------------


def _settings(config: NodeConfig) -> dict[str, Any]:
    """Every setting by its key; a database password is masked."""
    url = config.database_url
    if url:
        try:
            url = make_url(url).render_as_string(hide_password=True)
        except (ArgumentError, ValueError):
            url = "(malformed)"
    settings: dict[str, Any] = {
        "node.agency_id": config.agency_id,
        "node.name": config.name,
        "node.endpoint": config.endpoint,
        "listen.peer": config.peer_listen,
        "listen.api": config.api_listen,
        "listen.api_public": config.api_public,
        "database.url": url,
        "policy.disclose_reads": config.disclose_reads,
    }
    for name, value in vars(config.limits).items():
        settings[f"limits.{name}"] = value
    return settings


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    """Migrate the node's database to this version's schema; say from which revision."""
    home = NodeHome(_home(args))
    store = Store(home.database_url())
    try:
        before = store.schema_revision()
        if before is not None and before not in known_revisions():
            store.check_schema()  # ahead: says so, changes nothing
        store.migrate()
        after = store.schema_revision()
    finally:
        store.close()
    if args.json:
        _print_json({"from": before, "to": after, "changed": before != after})
    elif before == after:
        print(f"the database schema is at revision {after}: nothing to do")
    else:
        print(f"the database schema went from revision {before or 'none'} to {after}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    settings = _settings(load_config(_home(args)))
    if args.json:
        _print_json(settings)
        return 0
    for key, value in settings.items():
        print(f"{key} = {render.safe(str(value))}")
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Read and check config.toml as the node will; exit 2 naming the first problem."""
    config = load_config(_home(args))
    if args.json:
        _print_json({"valid": True, "agency_id": config.agency_id})
    else:
        print(f"{_home(args) / CONFIG_FILE} is valid")
    return 0


def cmd_config_set(args: argparse.Namespace) -> int:
    """Change one setting; a new local API address is written into every credential."""
    home = _home(args)
    before = load_config(home)
    after = with_setting(before, args.key, args.value)
    write_config(home, after)
    moved: list[str] = []
    if after.api_listen != before.api_listen:
        target = api_target(after.api_listen)
        for folder in sorted((home / "credentials").glob("*/target")):
            folder.write_text(target + "\n", encoding="utf-8")
            moved.append(folder.parent.name)
    store = NodeHome(home).open_store()
    try:
        with store.write() as session:
            append(
                session,
                AuditKind.CONFIG_CHANGED,
                at=dt.datetime.now(dt.UTC),
                actor="admin",
                detail=f"{args.key} changed",
            )
    finally:
        store.close()
    if args.json:
        _print_json({"key": args.key, "credentials_updated": moved})
    else:
        print(f"{args.key} set; it takes effect when the node next starts")
        if moved:
            target = api_target(after.api_listen)
            print(f"credentials now pointing at {target}: {', '.join(moved)}")
    return 0
