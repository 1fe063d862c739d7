"""The auditors' tools end to end: `liaison audit checkpoint | log | export | proof |
verify-proof | report | verify` on two running nodes that witness each other."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from liaison.client.audit_commands import _cell
from liaison.client.cli import main
from liaison.keys.card import armor_card, dearmor_card, parse_card
from liaison.keys.checkpoint import Checkpoint, origin_of, sign_checkpoint, verify_checkpoint
from liaison.keys.envelope import issue_receipt
from liaison.keys.evidence import EvidenceError, decode_bundle, encode_bundle, verify_bundle
from liaison.server.home import DATABASE_FILE, NodeHome
from liaison.server.store.auditlog import StoredTree
from liaison.server.store.store import Store, sqlite_url
from liaison.v1 import envelope_pb2, notice_pb2
from tests.cli_homes import run, run_json
from tests.conftest import RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"


@dataclass(frozen=True)
class Exchange:
    a: RunningNode
    b: RunningNode
    a_card: Path
    b_card: Path
    case_7: list[str]
    case_8: str

    @property
    def a_home(self) -> str:
        return str(self.a.home.path)


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    """A sent B three notices (two in case CASE-7); B read and acknowledged one; both
    signed checkpoints that the other cosigned."""
    root = tmp_path_factory.mktemp("audit-tools")
    a_home, b_home = make_home(root, A_ID), make_home(root, B_ID)
    pin_each_other(a_home, b_home)
    cards = []
    for home in (a_home, b_home):
        path = root / f"{home.path.name}.card"
        path.write_text(armor_card(home.identity().card.signed_card), encoding="utf-8")
        cards.append(path)
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        with a.client() as client:
            ids = [
                client.send_notice(B_ID, sample_notice(case), wait_seconds=60).message_id
                for case in ("CASE-7", "CASE-7", "CASE-8")
            ]
        with b.client() as client:
            client.get_message(ids[0])
            client.acknowledge(ids[0], notice_pb2.ACK_STATUS_ACTION_TAKEN)
        b.run(b.node.checkpointer.round(force=True))
        a.run(a.node.checkpointer.round(force=True))
        yield Exchange(a, b, cards[0], cards[1], ids[:2], ids[2])
    finally:
        a.stop()
        b.stop()


def test_checkpoint_through_the_local_api(
    exchange: Exchange, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = run_json(capsys, "audit", "checkpoint", "--home", exchange.a_home)
    assert isinstance(answer, dict)
    assert answer["cosigned_by"] == [B_ID]
    card = exchange.a.home.identity().card
    origin = origin_of(A_ID)
    checkpoint = verify_checkpoint(
        answer["note"].encode(), origin=origin, name=origin, ed25519_public=card.signing_key
    )
    assert (checkpoint.size, checkpoint.root.hex()) == (answer["size"], answer["root"])


@pytest.fixture(scope="module")
def bundle(exchange: Exchange, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("bundle") / "evidence.json"
    code = _main("audit", "proof", exchange.case_7[0], "--out", str(out), "--home", exchange.a_home)
    assert code == 0
    return out.read_bytes()


def _main(*argv: str) -> int:
    return main(list(argv))


def _cards(exchange: Exchange) -> list:
    return [
        parse_card(dearmor_card(path.read_text(encoding="utf-8")))
        for path in (exchange.a_card, exchange.b_card)
    ]


def test_an_evidence_bundle_verifies_offline(
    exchange: Exchange, bundle: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "evidence.json"
    path.write_bytes(bundle)
    cards = ("--card", str(exchange.a_card), "--card", str(exchange.b_card))
    result = run_json(capsys, "audit", "verify-proof", str(path), *cards)
    assert isinstance(result, dict)
    assert result["verified"] is True
    assert result["message_id"] == exchange.case_7[0]
    assert result["cosigned_by"] == [B_ID]
    events = [entry["event"] for entry in result["entries"]]
    assert events[:2] == ["sealed", "sent"]
    assert {"delivered", "acknowledged-by-peer"} <= set(events)
    assert result["receipt"]["status"] == "accepted"
    assert result["receiver_entry"]["event"] == "received"
    assert result["receiver_entry"]["index"] == result["receipt"]["log_index"]
    code, out, _ = run(capsys, "audit", "verify-proof", str(path), *cards)
    assert code == 0
    assert "in a checkpoint cosigned by the sender" in out
    # Without the peer's card, the cosignature cannot be checked: not verified.
    code, _, err = run(capsys, "audit", "verify-proof", str(path), "--card", str(exchange.a_card))
    assert code == 7
    assert "no valid cosignature by DE.BPOL.LO-RABAT" in err


def test_a_flipped_byte_anywhere_fails_with_a_reason(exchange: Exchange, bundle: bytes) -> None:
    cards = _cards(exchange)
    assert verify_bundle(bundle, cards).bundle.message_id == exchange.case_7[0]
    reasons = set()
    for position in range(len(bundle)):
        damaged = bytearray(bundle)
        damaged[position] ^= 0x01
        with pytest.raises(EvidenceError) as refused:
            verify_bundle(bytes(damaged), cards)
        reasons.add(str(refused.value).split(":")[0])
    assert len(reasons) > 3, reasons


def test_the_log_filters(exchange: Exchange, capsys: pytest.CaptureFixture[str]) -> None:
    home = ("--home", exchange.a_home)
    one = run_json(capsys, "audit", "log", *home, "--message", exchange.case_8)
    assert isinstance(one, list)
    assert {row["message_id"] for row in one} == {exchange.case_8}
    assert [row["event"] for row in one][:2] == ["sealed", "sent"]
    case = run_json(capsys, "audit", "log", *home, "--case", "CASE-7")
    assert isinstance(case, list)
    assert {row["message_id"] for row in case} == set(exchange.case_7)
    on_b = run_json(capsys, "audit", "log", "--home", str(exchange.b.home.path), "--event", "read")
    assert isinstance(on_b, list)
    assert [row["message_id"] for row in on_b] == [exchange.case_7[0]]
    assert on_b[0]["actor"] == "admin"
    assert run_json(capsys, "audit", "log", *home, "--since", "2999-01-01") == []
    code, out, err = run(capsys, "audit", "log", *home, "--peer", B_ID, "--limit", "3")
    assert code == 0
    assert len(out.splitlines()) == 3
    assert "3 events" in err


def test_export_with_its_checkpoint(
    exchange: Exchange, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ("--home", exchange.a_home)
    code, out, _ = run(capsys, "audit", "export", *home, "--case", "CASE-7")
    assert code == 0
    header, *rows = [json.loads(line) for line in out.splitlines()]
    card = exchange.a.home.identity().card
    origin = origin_of(A_ID)
    checkpoint = verify_checkpoint(
        header["checkpoint"]["note"].encode(),
        origin=origin,
        name=origin,
        ed25519_public=card.signing_key,
    )
    assert checkpoint.size == header["checkpoint"]["size"]
    assert {row["message_id"] for row in rows} == set(exchange.case_7)
    assert all(row["covered"] for row in rows)
    target = tmp_path / "events.csv"
    assert run(capsys, "audit", "export", *home, "--format", "csv", "--out", str(target))[0] == 0
    with target.open(newline="", encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table[0]["seq"] == "1"
    assert (tmp_path / "events.csv.checkpoint").read_text(encoding="utf-8").startswith(origin)
    code, _, err = run(capsys, "audit", "export", *home, "--format", "csv", "--out", str(target))
    assert code == 2
    assert "nothing was overwritten" in err


def test_a_spreadsheet_formula_is_not_exported_as_one() -> None:
    assert _cell('=HYPERLINK("x")') == '\'=HYPERLINK("x")'
    assert _cell("@SUM(A1)") == "'@SUM(A1)"
    assert _cell("plain") == "plain"


def test_the_report_of_a_case(
    exchange: Exchange, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "report.html"
    code, _, err = run(
        capsys,
        "audit",
        "report",
        "--home",
        exchange.a_home,
        "--case",
        "CASE-7",
        "--html",
        str(target),
    )
    assert code == 0, err
    page = target.read_text(encoding="utf-8")
    assert all(message_id in page for message_id in exchange.case_7)
    assert exchange.case_8 not in page
    assert "Audit log verified" in page
    assert "CASE-7" in page


# audit verify on a backup copy, with checkpoints and cosignatures ----------------------


def _copy(home: NodeHome, target: Path) -> Path:
    with sqlite3.connect(home.path / DATABASE_FILE) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    with sqlite3.connect(target) as db:
        for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            db.execute(f'DROP TRIGGER "{name}"')
    return target


def _forged_checkpoint(db: sqlite3.Connection, tmp_path: Path) -> None:
    """A checkpoint of a true size and root, signed by a key that is not ours."""
    (newest,) = db.execute("SELECT max(size) FROM audit_checkpoints").fetchone()
    size = newest - 1
    db.commit()
    store = Store(sqlite_url(Path(db.execute("PRAGMA database_list").fetchone()[2])))
    try:
        with store.read() as session:
            root = StoredTree(session).root(size)
    finally:
        store.close()
    stranger = make_home(tmp_path, "XX.FORGER").identity()
    checkpoint = Checkpoint(origin=origin_of(A_ID), size=size, root=root)
    note = sign_checkpoint(checkpoint, name=checkpoint.origin, ed25519_key=stranger.signing_key)
    db.execute(
        "INSERT INTO audit_checkpoints (size, root, note, signed_at) VALUES (?, ?, ?, ?)",
        (size, root, note, "2026-11-29 00:00:00.000000"),
    )


def _rolled_back(db: sqlite3.Connection, tmp_path: Path) -> None:
    (size,) = db.execute("SELECT max(size) FROM audit_checkpoints").fetchone()
    keep = size - 3
    db.execute(f"DELETE FROM audit_events WHERE seq > {keep}")
    db.execute(f"DELETE FROM audit_entries WHERE seq > {keep}")
    db.execute(f"DELETE FROM audit_tree WHERE ((idx + 1) << level) > {keep}")


def _root_changed(db: sqlite3.Connection, tmp_path: Path) -> None:
    db.execute(
        "UPDATE audit_checkpoints SET root = zeroblob(32) "
        "WHERE size = (SELECT min(size) FROM audit_checkpoints)"
    )


def _cosignature_changed(db: sqlite3.Connection, tmp_path: Path) -> None:
    (line,) = db.execute("SELECT line FROM checkpoint_cosignatures").fetchone()
    text = line.decode()
    flipped = text[:-6] + ("A" if text[-6] != "A" else "B") + text[-5:]
    db.execute("UPDATE checkpoint_cosignatures SET line = ?", (flipped.encode(),))


def _checkpoint_deleted(db: sqlite3.Connection, tmp_path: Path) -> None:
    db.execute("DELETE FROM checkpoint_cosignatures")
    db.execute("DELETE FROM audit_checkpoints")


CHECKPOINT_TAMPERING: dict[str, tuple[Callable[[sqlite3.Connection, Path], None], str]] = {
    "the checkpoints deleted": (_checkpoint_deleted, "is not kept (deleted)"),
    "a forged checkpoint": (_forged_checkpoint, "is not signed by a card of ours"),
    "the log rolled back": (_rolled_back, "the log was rolled back"),
    "a checkpoint's root changed": (_root_changed, "names a root the log does not have"),
    "a cosignature changed": (_cosignature_changed, "the cosignature by DE.BPOL.LO-RABAT"),
}


def test_verify_checks_checkpoints_and_cosignatures(
    exchange: Exchange, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = _copy(exchange.a.home, tmp_path / "copy.db")
    verdict = run_json(
        capsys, "audit", "verify", "--database", str(copy), "--card", str(exchange.a_card)
    )
    assert isinstance(verdict, dict)
    assert verdict["verified"] is True
    assert verdict["checkpoints"] >= 2
    assert verdict["newest_checkpoint"]["cosigned_by"] == [B_ID]


@pytest.mark.parametrize("case", list(CHECKPOINT_TAMPERING))
def test_checkpoint_tampering_is_found(
    exchange: Exchange, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    change, problem = CHECKPOINT_TAMPERING[case]
    copy = _copy(exchange.a.home, tmp_path / "copy.db")
    with sqlite3.connect(copy) as db:
        before = db.total_changes
        change(db, tmp_path)
        assert db.total_changes > before
    code, out, err = run(capsys, "audit", "verify", "--database", str(copy))
    assert code == 7, (out, err)
    assert problem in err
    assert "at checkpoint" in err


def test_a_receipt_from_a_third_agency_is_not_evidence(
    exchange: Exchange, bundle: bytes, tmp_path: Path
) -> None:
    """A receipt that a third agency signed for the same envelope bytes (its card given
    too) does not make the bundle verify: the receipt must be between the two agencies."""
    third = make_home(tmp_path, "FR.DCPJ.OCLTIC").identity()
    decoded = decode_bundle(bundle)
    original = envelope_pb2.Receipt.FromString(
        envelope_pb2.SignedReceipt.FromString(decoded.receipt).receipt
    )
    forged = issue_receipt(
        receiver=third,
        message_id=original.message_id,
        envelope_sha256=original.envelope_sha256,
        sender=A_ID,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
        now=dt.datetime.now(dt.UTC),
    )
    swapped = encode_bundle(dataclasses.replace(decoded, receipt=forged, peer_log=None))
    cards = [*_cards(exchange), third.card]
    with pytest.raises(EvidenceError, match="between other agencies"):
        verify_bundle(swapped, cards)
    honest = encode_bundle(dataclasses.replace(decoded, peer_log=None))
    assert verify_bundle(honest, cards).receipt is not None
