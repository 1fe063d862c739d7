"""``liaison audit …``: the auditors' commands.

``verify``, ``log``, ``export``, ``report`` and ``proof`` read a node's database: the
home's (beside a running node, or of a stopped one) or, for ``verify``, ``log``,
``export`` and ``report``, a backup copy given with ``--database``. They never write to
it and need no passphrase, except a ``--case`` filter (case references are sealed at
rest) and ``proof``'s request to the peer (it speaks mutual TLS with the node's key).
``checkpoint`` asks the running node through its local API. ``verify-proof`` needs only
the bundle and the agencies' public cards.

Exit codes as the rest of ``liaison``; 7 when a log or an evidence bundle does not verify.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.orm import Session

from liaison.client import render
from liaison.client.cli_common import api_client, home_path, paged, print_json, unlocked_home
from liaison.client.errors import NotVerified, UsageError
from liaison.client.report import (
    ReportCheckpoint,
    ReportData,
    ReportEvent,
    ReportMessage,
    ReportVerification,
    render_html,
)
from liaison.keys.card import PeerCard, dearmor_card, parse_card
from liaison.keys.certs import der_to_pem
from liaison.keys.checkpoint import parse_body, parse_note
from liaison.keys.errors import CheckpointError
from liaison.keys.evidence import (
    EvidenceError,
    check_peer_log,
    decode_bundle,
    encode_bundle,
    verify_bundle,
)
from liaison.keys.merkle import leaf_hash, verify_inclusion
from liaison.server import auditing
from liaison.server.auditing import AuditScope, LogVerdict, NoEvidence
from liaison.server.checkpoints import cosigned_note
from liaison.server.home import NodeHome
from liaison.server.peers import PeerDirectory
from liaison.server.store import checkpoints
from liaison.server.store.models import AuditEvent, Peer
from liaison.server.store.store import Store, sqlite_url
from liaison.v1 import audit_pb2, envelope_pb2, peer_pb2, peer_pb2_grpc

# A spreadsheet runs a cell that starts with one of these as a formula; peer text may.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
PEER_TIMEOUT = 30.0
EXPORT_COLUMNS = (
    "seq",
    "at",
    "event",
    "actor",
    "peer",
    "message_id",
    "envelope_sha256",
    "reason",
    "detail",
    "covered",
)


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[Store]:
    """The database to read: ``--database`` (a copy, as it is) or the home's."""
    database = getattr(args, "database", None)
    if database:
        path = Path(database)
        if not path.is_file():
            raise UsageError(f"{path} is not a database file")
        store = Store(sqlite_url(path))
    else:
        store = NodeHome(home_path(args)).open_store()
    try:
        yield store
    finally:
        store.close()


def _when(option: str, text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--{option} must be a date or date-time, e.g. 2026-11-29") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _scope(args: argparse.Namespace, store: Store) -> AuditScope:
    """The filters given; a case reference is looked up in the sealed summaries."""
    ids: set[str] | None = None
    if args.message:
        ids = set(args.message)
    if args.case:
        if getattr(args, "database", None):
            raise UsageError("--case needs the home (case references are sealed at rest)")
        home = unlocked_home(args)
        storage = home.storage_key()
        scan_max = home.config().limits.list_scan_max
        with store.read() as session:
            found = auditing.case_message_ids(session, storage, args.case, scan_max=scan_max)
        ids = set(found) if ids is None else ids & found
    return AuditScope(
        message_ids=frozenset(ids) if ids is not None else None,
        peer=args.peer,
        actor=args.actor,
        events=frozenset(args.event),
        since=_when("since", args.since),
        until=_when("until", args.until),
    )


def _event_json(event: AuditEvent, covered: int | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": event.seq,
        "at": render.iso_datetime(event.at),
        "event": event.event,
        "actor": event.actor or "",
        "peer": event.peer or "",
        "message_id": event.message_id or "",
        "envelope_sha256": event.envelope_sha256 or "",
        "reason": event.reason or "",
        "detail": event.detail or "",
    }
    if covered is not None:
        row["covered"] = event.seq <= covered
    return row


# verify ------------------------------------------------------------------------------


def _verdict_json(verdict: LogVerdict) -> dict[str, Any]:
    tree = verdict.tree
    return {
        "verified": verdict.ok,
        "size": tree.size,
        "root": tree.root.hex(),
        "problem": tree.problem or verdict.problem,
        "seq": tree.seq,
        "checkpoints": verdict.checkpoints,
        "checkpoint_size": verdict.checkpoint_size,
        "newest_checkpoint": (
            {"size": verdict.newest[0], "cosigned_by": list(verdict.newest[1])}
            if verdict.newest
            else None
        ),
        "cosignatures": len(verdict.cosignatures),
        "cosignatures_not_checkable": [
            {"size": size, "peer": peer} for size, peer in verdict.unchecked
        ],
        "signed_by_card": verdict.anchor_fingerprint,
        "split_view_alarms": list(verdict.alarms),
    }


def cmd_verify(args: argparse.Namespace) -> int:
    """Recompute the log, check every checkpoint and cosignature; exit 7 naming the
    first thing that disagrees."""
    anchor = _read_card(args.card) if args.card else None
    with _store(args) as store, store.read() as session:
        verdict = auditing.verify_log(session, anchor)
    tree = verdict.tree
    if args.json:
        print_json(_verdict_json(verdict))
    elif verdict.ok:
        print(f"audit log verified: {tree.size} events, root {tree.root.hex()}")
        if verdict.newest is not None:
            size, cosigners = verdict.newest
            by = ", ".join(cosigners) or "no peer yet"
            print(
                f"{verdict.checkpoints} checkpoints, signatures checked; the newest, "
                f"size {size}, cosigned by {render.safe(by)}"
            )
            print(f"checkpoints signed by our card {verdict.anchor_fingerprint}")
        else:
            print("no checkpoint signed yet")
        for size, peer in verdict.unchecked:
            print(
                f"note: the cosignature of checkpoint {size} by {render.safe(peer)} is by a "
                "card no longer pinned, not checked",
                file=sys.stderr,
            )
    for alarm in verdict.alarms:
        print(
            f"ALARM: a peer presented a rewritten history of its log: {render.safe(alarm)}",
            file=sys.stderr,
        )
    if not verdict.ok:
        if tree.problem is not None:
            where = f" at event {tree.seq}" if tree.seq is not None else ""
            problem = tree.problem
        else:
            where = f" at checkpoint {verdict.checkpoint_size}" if verdict.checkpoint_size else ""
            problem = verdict.problem or ""
        print(f"liaison: the audit log does not verify{where}: {problem}", file=sys.stderr)
        return NotVerified.exit_code
    return 0


def _read_card(path: str) -> PeerCard:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read the card {path}: {error}") from None
    return parse_card(dearmor_card(text))


# log and export ----------------------------------------------------------------------


def cmd_log(args: argparse.Namespace) -> int:
    """The events matching the filters, oldest first, as a table or JSON."""
    if args.identity:
        rows = _events_through_api(args)
    else:
        with _store(args) as store:
            scope = _scope(args, store)
            with store.read() as session:
                rows = auditing.events(session, scope, limit=args.limit or None)
    if args.json:
        print_json([_event_json(event) for event in rows])
        return 0
    with paged(args):
        for event in rows:
            parts = [
                f"{event.seq:>7}",
                render.iso_datetime(event.at),
                f"{event.event:<28}",
                render.safe(event.actor or "-"),
                render.safe(event.peer or "-"),
                event.message_id or "-",
            ]
            extra = " ".join(x for x in (event.reason, event.detail) if x)
            print("  ".join(parts) + (f"  {render.safe(extra)}" if extra else ""))
    print(f"{len(rows)} events", file=sys.stderr)
    return 0


def _events_through_api(args: argparse.Namespace) -> list[AuditEvent]:
    """The events, read with the credential ``--identity`` from the running node."""
    if args.case or args.database or len(args.message) > 1:
        raise UsageError(
            "through the local API (--identity), filter by at most one --message, and "
            "neither --case nor --database"
        )
    filters: dict[str, Any] = {
        "events": args.event,
        "message_id": args.message[0] if args.message else "",
        "peer": args.peer or "",
        "actor": args.actor or "",
    }
    for name in ("since", "until"):
        moment = _when(name, getattr(args, name))
        if moment is not None:
            filters[name] = Timestamp(seconds=int(moment.timestamp()))
    rows = []
    with api_client(args) as client:
        for record in client.audit_events(**filters):
            rows.append(
                AuditEvent(
                    seq=record.seq,
                    at=record.at.ToDatetime(tzinfo=dt.UTC),
                    event=record.event,
                    actor=record.actor or None,
                    peer=record.peer or None,
                    message_id=record.message_id or None,
                    envelope_sha256=record.envelope_sha256 or None,
                    reason=record.reason or None,
                    detail=record.detail or None,
                )
            )
            if args.limit and len(rows) >= args.limit:
                break
    return rows


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def cmd_export(args: argparse.Namespace) -> int:
    """Events as JSON lines or CSV, with the checkpoint that covers them."""
    if args.format == "csv" and not args.out:
        raise UsageError("--format csv needs --out FILE (the checkpoint goes beside it)")
    with _store(args) as store:
        scope = _scope(args, store)
        with store.read() as session:
            rows = auditing.events(session, scope)
            newest = checkpoints.latest(session)
            note = cosigned_note(session, newest) if newest is not None else b""
    covered = newest.size if newest is not None else 0
    header = {
        "checkpoint": {
            "size": covered,
            "root": newest.root.hex() if newest is not None else "",
            "note": note.decode("utf-8"),
        }
    }
    if args.format == "jsonl":
        lines = [json.dumps(header, sort_keys=True)]
        lines += [json.dumps(_event_json(e, covered), sort_keys=True) for e in rows]
        text = "\n".join(lines) + "\n"
        _write(args.out, text)
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(EXPORT_COLUMNS)
        for event in rows:
            row = _event_json(event, covered)
            writer.writerow([_cell(row[column]) for column in EXPORT_COLUMNS])
        _write(args.out, buffer.getvalue())
        _write(f"{args.out}.checkpoint", note.decode("utf-8"))
    late = sum(1 for event in rows if event.seq > covered)
    print(f"exported {len(rows)} events; checkpoint size {covered}", file=sys.stderr)
    if late:
        print(
            f"note: {late} events are newer than the newest checkpoint; "
            "`liaison audit checkpoint` signs one that covers them",
            file=sys.stderr,
        )
    return 0


def _write(out: str | None, text: str) -> None:
    if not out:
        sys.stdout.write(text)
        return
    try:
        with open(out, "x", encoding="utf-8", newline="") as handle:
            handle.write(text)
    except FileExistsError:
        raise UsageError(f"{out} exists; nothing was overwritten") from None
    except OSError as error:
        raise UsageError(f"cannot write {out}: {error.strerror}") from None


# checkpoint --------------------------------------------------------------------------


def cmd_checkpoint(args: argparse.Namespace) -> int:
    """Have the running node sign a checkpoint now and its peers cosign it."""
    with api_client(args) as client:
        response = client.sign_checkpoint()
    if args.json:
        print_json(
            {
                "size": response.size,
                "root": response.root.hex(),
                "cosigned_by": list(response.cosigners),
                "signed_at": render.iso(response.signed_at),
                "note": response.note.decode("utf-8"),
            }
        )
        return 0
    sys.stdout.write(render.safe(response.note.decode("utf-8"), multiline=True))
    by = ", ".join(response.cosigners) or "no peer yet"
    print(f"checkpoint size {response.size}, cosigned by {render.safe(by)}", file=sys.stderr)
    return 0


# proof and verify-proof --------------------------------------------------------------


def cmd_proof(args: argparse.Namespace) -> int:
    """Write the evidence bundle of one message."""
    home = NodeHome(home_path(args))
    agency = home.config().agency_id
    with _store(args) as store, store.read() as session:
        try:
            plan = auditing.evidence_plan(session, args.message_id, agency)
        except NoEvidence as error:
            raise UsageError(str(error)) from None
        peer = plan.bundle.peer
        card, previous = _pinned_cards(session, peer)
    bundle = encode_bundle(plan.bundle)
    note = ""
    if args.no_peer or plan.peer_index is None:
        pass
    elif plan.peer_checkpoint is None:
        note = (
            f"no checkpoint of {peer}'s log that this node cosigned covers the delivery yet; "
            "the bundle holds our log's side only"
        )
    elif card is None:
        note = f"{peer} is no longer pinned; the bundle holds our log's side only"
    else:
        try:
            entry, proof, ours = _ask_peer(
                args, card, previous, plan.peer_index, plan.peer_checkpoint[0]
            )
        except grpc.RpcError as error:
            note = (
                f"{peer} did not answer the inclusion proof ({error.code().name}); "
                "the bundle holds our log's side only"
            )
        else:
            candidate = auditing.with_peer_proof(plan, entry, proof)
            problem = _peer_part_problem(candidate, [card, *ours])
            if problem is None:
                bundle = candidate
            else:
                note = (
                    f"{peer}'s answer does not prove its entry ({problem}); "
                    "the bundle holds our log's side only"
                )
    problem = _own_part_problem(bundle)
    if problem is not None:
        raise UsageError(f"the evidence for {args.message_id} does not verify: {problem}")
    _write_bytes(args.out, bundle)
    receiver = "" if note or bundle == encode_bundle(plan.bundle) else " and the receiver's entry"
    print(
        f"evidence for {args.message_id}: {len(plan.bundle.entries)} entries of our log"
        f"{receiver} written to {args.out}",
        file=sys.stderr,
    )
    if note:
        print(f"note: {render.safe(note)}", file=sys.stderr)
    return 0


def _own_part_problem(bundle: bytes) -> str | None:
    """Why our side of ``bundle`` (entries, proofs, checkpoint form) does not hold up;
    the signatures are the auditor's to check with the published cards."""
    decoded = decode_bundle(bundle)
    try:
        checkpoint = parse_body(parse_note(decoded.checkpoint).body)
        for proven in decoded.entries:
            if not verify_inclusion(
                leaf_hash(proven.entry),
                proven.index,
                checkpoint.size,
                list(proven.proof),
                checkpoint.root,
            ):
                return f"entry {proven.index} is not proven in the checkpoint"
    except CheckpointError as error:
        return str(error)
    return None


def _peer_part_problem(bundle: bytes, cards: list[PeerCard]) -> str | None:
    """Why the receiver's part of ``bundle`` does not verify, if it does not."""
    decoded = decode_bundle(bundle)
    signed = envelope_pb2.SignedReceipt.FromString(decoded.receipt)
    try:
        check_peer_log(decoded, cards, envelope_pb2.Receipt.FromString(signed.receipt))
    except EvidenceError as error:
        return str(error)
    return None


def _pinned_cards(session: Session, peer: str) -> tuple[PeerCard | None, PeerCard | None]:
    """The peer's pinned card, and the one it replaced while that is still trusted."""
    row = session.get(Peer, peer)
    if row is None:
        return None, None
    trusted = row.previous_until is not None and row.previous_until > dt.datetime.now(dt.UTC)
    previous = parse_card(row.previous_card) if row.previous_card and trusted else None
    return parse_card(row.signed_card), previous


def _ask_peer(
    args: argparse.Namespace,
    card: PeerCard,
    previous: PeerCard | None,
    index: int,
    size: int,
) -> tuple[bytes, list[bytes], list[PeerCard]]:
    """The receiver's entry ``index`` and its inclusion proof in its tree of ``size``,
    asked over mutual TLS with the certificate of ours that the peer pins; and our cards
    (whose keys cosigned the receiver's checkpoints)."""
    unlocked = unlocked_home(args)
    store = unlocked.open_store()
    try:
        sequence = PeerDirectory(store).our_card(card.agency_id)
    finally:
        store.close()
    ring = unlocked.keyring()
    ours = ring.for_sequence(sequence).tls
    our_cards = [ring.current.card, *([ring.previous.card] if ring.previous else [])]
    # During the peer's rotation its listener presents the certificate of the card it
    # replaced, until all its peers know the new one.
    roots = [card.tls_certificate, *([previous.tls_certificate] if previous else [])]
    credentials = grpc.ssl_channel_credentials(
        root_certificates=b"".join(der_to_pem(der) for der in roots),
        private_key=ours.key_pem(),
        certificate_chain=ours.certificate_pem(),
    )
    options = [("grpc.ssl_target_name_override", card.tls_name)]
    with grpc.secure_channel(card.endpoint, credentials, options=options) as channel:
        answer = peer_pb2_grpc.PeerExchangeStub(channel).ProveInclusion(
            peer_pb2.InclusionRequest(index=index, tree_size=size), timeout=PEER_TIMEOUT
        )
    return answer.entry, list(answer.proof), our_cards


def _write_bytes(out: str, data: bytes) -> None:
    try:
        with open(out, "xb") as handle:
            handle.write(data)
    except FileExistsError:
        raise UsageError(f"{out} exists; nothing was overwritten") from None
    except OSError as error:
        raise UsageError(f"cannot write {out}: {error.strerror}") from None


def cmd_verify_proof(args: argparse.Namespace) -> int:
    """Check an evidence bundle offline with the agencies' public cards."""
    try:
        data = Path(args.bundle).read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {args.bundle}: {error.strerror}") from None
    cards = [_read_card(path) for path in args.card]
    try:
        verified = verify_bundle(data, cards)
    except EvidenceError as error:
        if args.json:
            print_json({"verified": False, "problem": str(error)})
        print(f"liaison: the evidence does not verify: {render.safe(str(error))}", file=sys.stderr)
        return NotVerified.exit_code
    bundle = verified.bundle
    entries = [entry.parsed() for entry in bundle.entries]
    summary: dict[str, Any] = {
        "verified": True,
        "message_id": bundle.message_id,
        "log": bundle.log,
        "peer": bundle.peer,
        "checkpoint_size": verified.checkpoint.size,
        "checkpoint_root": verified.checkpoint.root.hex(),
        "cosigned_by": list(verified.cosigners),
        "entries": [_entry_json(entry) for entry in entries],
        "receipt": _receipt_json(verified.receipt),
        "receiver_entry": _entry_json(verified.peer_entry) if verified.peer_entry else None,
    }
    if args.json:
        print_json(summary)
        return 0
    print(f"evidence verified: message {render.safe(bundle.message_id)}")
    print(
        f"  {len(entries)} entries of {render.safe(bundle.log)}'s audit log, in its checkpoint "
        f"of size {verified.checkpoint.size}, cosigned by "
        f"{render.safe(', '.join(verified.cosigners))}"
    )
    for entry in entries:
        print(f"    {entry.index:>7}  {entry.at.ToJsonString()}  {render.safe(entry.event)}")
    if verified.receipt is not None:
        receipt = verified.receipt
        status = render.enum_label(envelope_pb2.ReceiptStatus, receipt.status, "RECEIPT_STATUS_")
        print(f"  receipt: {status} by {render.safe(receipt.receiver)}, signature checked")
    if verified.peer_entry is not None:
        entry = verified.peer_entry
        print(
            f"  the receiver's own log, entry {entry.index}: {render.safe(entry.event)} at "
            f"{entry.at.ToJsonString()}, in a checkpoint cosigned by the sender"
        )
    return 0


def _entry_json(entry: audit_pb2.AuditEntry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "at": entry.at.ToJsonString(),
        "event": entry.event,
        "actor": entry.actor,
        "peer": entry.peer,
        "envelope_sha256": entry.envelope_sha256.hex(),
        "reason": entry.reason,
    }


def _receipt_json(receipt: envelope_pb2.Receipt | None) -> dict[str, Any] | None:
    if receipt is None:
        return None
    return render.receipt_json(receipt) | (
        {"log_index": receipt.log_index} if receipt.HasField("log_index") else {}
    )


# report ------------------------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """One self-contained HTML file: timelines, readers, verification, charts."""
    agency = ""
    if not args.database:
        agency = NodeHome(home_path(args)).config().agency_id
    with _store(args) as store:
        scope = _scope(args, store)
        with store.read() as session:
            verdict = auditing.verify_log(session)
            newest = checkpoints.latest(session)
            facts = auditing.message_facts(session, scope.message_ids, scope)
            in_scope = {fact.message_id for fact in facts}
            others = (
                [
                    event
                    for event in auditing.events(
                        session, AuditScope(since=scope.since, until=scope.until)
                    )
                    if event.message_id is None or event.message_id not in in_scope
                ]
                if scope.message_ids is None
                else []
            )
    data = ReportData(
        agency_id=agency or "(backup copy)",
        generated_at=dt.datetime.now(dt.UTC),
        scope=_scope_words(args),
        messages=tuple(_report_message(fact, args.case) for fact in facts),
        verification=_report_verification(verdict, newest),
        other_events=tuple(_report_event(event) for event in others),
    )
    _write(args.html, render_html(data))
    print(
        f"report of {len(facts)} messages written to {args.html} "
        f"(audit log {'verified' if verdict.ok else 'DOES NOT VERIFY'})",
        file=sys.stderr,
    )
    return 0 if verdict.ok else NotVerified.exit_code


def _scope_words(args: argparse.Namespace) -> str:
    parts = []
    if args.case:
        parts.append(f"case {args.case}")
    if args.message:
        parts.append("messages " + ", ".join(args.message))
    if args.peer:
        parts.append(f"with {args.peer}")
    if args.since or args.until:
        parts.append(f"{args.since or 'the start'} to {args.until or 'now'}")
    return "; ".join(parts) or "the whole log"


def _report_event(event: AuditEvent) -> ReportEvent:
    return ReportEvent(
        seq=event.seq,
        at=event.at,
        event=event.event,
        actor=event.actor or "",
        peer=event.peer or "",
        reason=event.reason or "",
        detail=event.detail or "",
    )


def _report_message(fact: auditing.MessageFacts, case: str | None) -> ReportMessage:
    return ReportMessage(
        message_id=fact.message_id,
        direction=fact.direction,
        peer=fact.peer,
        case_reference=case or fact.case_reference,
        category=render.category(fact.category) if fact.category else None,
        tlp=render.tlp(fact.handling) if fact.handling else None,
        priority=render.priority(fact.priority) if fact.priority else None,
        state=fact.state,
        envelope_sha256=fact.envelope_sha256,
        events=tuple(_report_event(event) for event in fact.events),
    )


def _report_verification(verdict: LogVerdict, newest: Any) -> ReportVerification:
    checkpoint = None
    if newest is not None and verdict.newest is not None:
        checkpoint = ReportCheckpoint(
            size=newest.size,
            root_hex=newest.root.hex(),
            signed_at=newest.signed_at,
            cosigners=verdict.newest[1],
        )
    return ReportVerification(
        verified=verdict.ok,
        size=verdict.tree.size,
        root_hex=verdict.tree.root.hex(),
        problem=verdict.tree.problem or verdict.problem,
        seq=verdict.tree.seq,
        checkpoint=checkpoint,
    )
