"""Pinning peers: no silent re-pinning, fingerprints checked or confirmed on a
terminal, and an operator's remove, revoke and reinstate, down to the
receiver's check 5a and the outbox that holds a revoked peer's notices."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import select as sql_select
from sqlalchemy import text

from liaison.client.api import state_name
from liaison.keys.card import armor_card, dearmor_card, parse_card, sign_card
from liaison.keys.envelope import EnvelopeLimits, check_envelope, seal_notice
from liaison.keys.errors import EnvelopeRejected
from liaison.keys.identity import NodeIdentity, generate_identity
from liaison.keys.ids import new_message_id
from liaison.keys.trust import TrustStore
from liaison.server.config import load_config
from liaison.server.home import NodeHome
from liaison.server.store.models import AuditEvent, Direction, Peer, PeerState
from liaison.server.store.store import MIGRATIONS, Store, sqlite_url
from liaison.v1 import envelope_pb2
from tests.cli_homes import CliHome, cli_init, peers_add, run, snapshot
from tests.conftest import Inspector, RunningNode, deliver_checked, make_home, peer_channel, pin
from tests.forge import Forge
from tests.notices import complete, sample_notice

R = envelope_pb2.RejectReason
A_ID = "MA.DGSN.CCPI"
B_ID = "DE.BPOL.LO-RABAT"
C_ID = "FR.DGPN.SCCOPOL"
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
REASON = "signing key reported stolen (ticket SEC-4471)"
PROMPT = b"Type yes to confirm: "
TERMINAL_TIMEOUT_SECONDS = 60
PICKUP_TIMEOUT_SECONDS = 10
HOLD_OBSERVED_SECONDS = 3
NOTICE_TOML = """
case_reference = "CCPI-2026-0412"
category = "migrant-smuggling"
tlp = "amber"
subject = "Crossing network"
body = "Text of the notice."
"""


# The trust decision and check 5a ----------------------------------------------------


@pytest.fixture(scope="module")
def identities() -> dict[str, NodeIdentity]:
    return {
        agency_id: generate_identity(agency_id, f"Agency {agency_id}", f"127.0.0.1:{port}")
        for agency_id, port in ((A_ID, 7001), (B_ID, 7002), (C_ID, 7003))
    }


def test_a_revoked_agency_stays_pinned_and_is_known_as_revoked(
    identities: dict[str, NodeIdentity],
) -> None:
    a, c = identities[A_ID].card, identities[C_ID].card
    trust = TrustStore.of([a, c], revoked=[A_ID, "XX.NOT.PINNED"])
    assert trust.peer(A_ID) is a
    assert trust.peer_by_tls_fingerprint(a.tls_fingerprint) is a
    assert trust.is_revoked(A_ID)
    assert not trust.is_revoked(C_ID)
    assert not trust.is_revoked("XX.NOT.PINNED")


def _check(
    identities: dict[str, NodeIdentity], trust: TrustStore, *, sender: str, peer: str
) -> None:
    notice = complete(sample_notice(), sender)
    sealed = seal_notice(
        notice,
        sender=identities[sender],
        recipient=identities[B_ID].card,
        ttl=dt.timedelta(hours=1),
        now=NOW,
    )
    check_envelope(
        sealed.envelope,
        receiver=identities[B_ID],
        trust=trust,
        authenticated_peer=peer,
        now=NOW,
        limits=EnvelopeLimits(),
    )


@pytest.mark.parametrize(
    ("revoked", "sender", "peer", "reason"),
    [
        pytest.param([A_ID], A_ID, A_ID, R.REJECT_REASON_SENDER_REVOKED, id="revoked"),
        # 5a runs before 6: a revoked sender is refused as such whoever connects.
        pytest.param([A_ID], A_ID, C_ID, R.REJECT_REASON_SENDER_REVOKED, id="before-mismatch"),
        # ... and after 5: an agency never pinned is unknown, revoked or not.
        pytest.param([A_ID], "XX.UNKNOWN", A_ID, R.REJECT_REASON_UNKNOWN_SENDER, id="after-known"),
        pytest.param([C_ID], A_ID, C_ID, R.REJECT_REASON_SENDER_MISMATCH, id="other-revoked"),
    ],
)
def test_check_5a_refuses_a_revoked_sender_right_after_the_known_sender_check(
    identities: dict[str, NodeIdentity],
    revoked: list[str],
    sender: str,
    peer: str,
    reason: int,
) -> None:
    if sender not in identities:
        identities = {**identities, sender: generate_identity(sender, "X", "127.0.0.1:7009")}
    trust = TrustStore.of([identities[A_ID].card, identities[C_ID].card], revoked=revoked)
    with pytest.raises(EnvelopeRejected) as refused:
        _check(identities, trust, sender=sender, peer=peer)
    assert refused.value.reason == reason
    assert refused.value.sender == sender


def test_an_unrevoked_sender_passes(identities: dict[str, NodeIdentity]) -> None:
    trust = TrustStore.of([identities[A_ID].card], revoked=[C_ID])
    _check(identities, trust, sender=A_ID, peer=A_ID)


# Storage ------------------------------------------------------------------------------


def test_migration_0002_keeps_every_pinned_peer_active(
    tmp_path: Path, identities: dict[str, NodeIdentity]
) -> None:
    store = Store(sqlite_url(tmp_path / "node.db"))
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
        card = identities[B_ID].card
        with store.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO peers (agency_id, name, endpoint, signed_card, tls_fingerprint,"
                    " added_at) VALUES (:a, :n, :e, :c, :t, :at)"
                ),
                {
                    "a": card.agency_id,
                    "n": card.name,
                    "e": card.endpoint,
                    "c": card.signed_card,
                    "t": card.tls_fingerprint,
                    "at": NOW.replace(tzinfo=None),
                },
            )
        store.migrate()
        [peer] = store.pinned_peers()
        assert peer.card.signed_card == card.signed_card
        assert peer.state is PeerState.ACTIVE
        assert (peer.revoked_at, peer.revoke_reason) == (None, None)
    finally:
        store.close()


# The CLI --------------------------------------------------------------------------------


@pytest.fixture
def impostor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> CliHome:
    """Another node claiming B's agency id: new keys, another endpoint."""
    return cli_init(capsys, tmp_path / "impostor", B_ID)


def peers(capsys: pytest.CaptureFixture[str], home: CliHome) -> list[dict[str, Any]]:
    code, out, err = run(capsys, "peers", "list", "--home", str(home.path), "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert isinstance(listed, list)
    return listed


def show(capsys: pytest.CaptureFixture[str], home: CliHome, agency_id: str) -> dict[str, Any]:
    code, out, err = run(capsys, "peers", "show", agency_id, "--home", str(home.path), "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert isinstance(shown, dict)
    return shown


def audit_events(home: CliHome | NodeHome, after: int = 0) -> list[AuditEvent]:
    with Inspector(home if isinstance(home, NodeHome) else home.home) as inspector:
        return inspector.audit_since(after)


def last_seq(home: CliHome | NodeHome) -> int:
    with Inspector(home if isinstance(home, NodeHome) else home.home) as inspector:
        return inspector.last_audit_seq()


def bare(fingerprint: str) -> str:
    return fingerprint.replace(" ", "")


def test_a_repinning_attack_is_refused_and_changes_nothing_on_disk(
    a_home: CliHome, b_home: CliHome, impostor: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    assert load_config(impostor.path).endpoint != load_config(b_home.path).endpoint
    before = snapshot(a_home.path)

    code, out, err = peers_add(capsys, a_home, impostor)

    assert code == 2
    assert out == ""
    assert err.startswith(f"liaison: WARNING: the card of {B_ID} has changed.")
    # Old and new fingerprints side by side, each on its own line, then what to do.
    lines = err.splitlines()
    assert lines[1].startswith(f"  pinned card   {b_home.fingerprint}")
    assert lines[2].startswith(f"  offered card  {impostor.fingerprint}")
    assert "--replace" in lines[3]
    assert len(lines) == 4
    assert snapshot(a_home.path) == before
    assert [p["fingerprint"] for p in peers(capsys, a_home)] == [b_home.fingerprint]


def test_the_same_card_again_changes_nothing_and_says_so(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    before = snapshot(a_home.path)
    for extra in [(), ("--replace",)]:
        code, out, err = peers_add(capsys, a_home, b_home, *extra)
        assert code == 0, err
        assert out.startswith(f"{B_ID} is already pinned with this card; nothing changed")
        assert snapshot(a_home.path) == before


def test_replace_audits_both_fingerprints_and_the_next_notice_goes_to_the_new_endpoint(
    a_home: CliHome,
    b_home: CliHome,
    impostor: CliHome,
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    assert peers_add(capsys, impostor, a_home)[0] == 0
    seq = last_seq(a_home)

    code, out, err = peers_add(capsys, a_home, impostor, "--replace")

    assert code == 0, err
    assert out.startswith(f"Replaced the card of {B_ID}")
    assert f"old card fingerprint {b_home.fingerprint}" in out
    assert f"card fingerprint {impostor.fingerprint}" in out
    [event] = audit_events(a_home, seq)
    assert (event.event, event.peer, event.actor) == ("peer-replaced", B_ID, "admin")
    assert event.detail == (
        f"card {bare(b_home.fingerprint)} replaced by card {bare(impostor.fingerprint)}"
    )
    [listed] = peers(capsys, a_home)
    assert (listed["fingerprint"], listed["endpoint"]) == (
        impostor.fingerprint,
        load_config(impostor.path).endpoint,
    )

    a = node_factory(a_home.home)
    node_factory(impostor.home)
    with a.client() as client:
        sent = client.send_notice(B_ID, sample_notice(), wait_seconds=30)
    assert sent.state == "delivered"
    with Inspector(impostor.home) as inspector:
        assert inspector.count_messages(Direction.INBOUND) == 1
    with Inspector(b_home.home) as inspector:
        assert inspector.count_messages() == 0


def test_a_fingerprint_is_accepted_with_spaces_colons_dashes_or_none_in_either_case(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    groups = b_home.fingerprint.split()
    notations = [
        " ".join(groups),
        ":".join(groups).upper(),
        "-".join(groups),
        "".join(groups).upper(),
        "".join(groups),
        " : ".join(group.upper() if i % 2 else group for i, group in enumerate(groups)),
    ]
    for notation in notations:
        code, _, err = peers_add(
            capsys,
            a_home,
            b_home.card_file,
            "--fingerprint",
            notation,
        )
        assert code == 0, (notation, err)
    assert [p["fingerprint"] for p in peers(capsys, a_home)] == [b_home.fingerprint]
    code, _, err = peers_add(
        capsys,
        a_home,
        b_home.card_file,
        "--fingerprint",
        "".join(groups)[:-1] + "g",
    )
    assert code == 2
    assert "is not a card fingerprint" in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("card", ["file", "-"])
def test_without_fingerprint_off_a_terminal_nothing_is_pinned(
    a_home: CliHome,
    b_home: CliHome,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    card: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(b_home.card_file.read_text()))
    before = snapshot(a_home.path)
    argument = str(b_home.card_file) if card == "file" else "-"
    code, out, err = run(capsys, "peers", "add", "--home", str(a_home.path), argument)
    assert code == 2
    assert out == ""
    assert err.startswith("liaison: --fingerprint is required when standard input is not a ")
    assert len(err.splitlines()) == 1
    assert snapshot(a_home.path) == before


def _terminal_session(argv: list[str], answer: bytes) -> tuple[int, str, bool]:
    """Run ``argv`` on a pseudo-terminal, type ``answer`` at the prompt.

    Returns the exit code, everything the terminal showed, and whether a prompt came.
    """
    master, slave = os.openpty()
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    shown, answered = b"", False
    deadline = time.monotonic() + TERMINAL_TIMEOUT_SECONDS
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command has exited and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
            if not answered and PROMPT in shown:
                os.write(master, answer + b"\n")
                answered = True
        code = process.wait(TERMINAL_TIMEOUT_SECONDS)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return code, shown.decode(errors="replace"), answered


@pytest.mark.parametrize(("answer", "pinned"), [(b"yes", True), (b"no", False), (b"", False)])
def test_on_a_terminal_the_card_is_shown_escaped_and_the_operator_must_type_yes(
    a_home: CliHome, b_home: CliHome, answer: bytes, pinned: bool
) -> None:
    # A peer's card names itself: the terminal must show its escape sequence, not obey it.
    outer = envelope_pb2.SignedCard.FromString(dearmor_card(b_home.card_file.read_text()))
    fields = envelope_pb2.AgencyCard.FromString(outer.card)
    fields.name = "Agency \x1b[2J\x1b[31mB\u202e"
    signed = sign_card(fields, b_home.home.identity().signing_key)
    card_file = b_home.path.parent / "hostile-name.card"
    card_file.write_text(armor_card(signed))
    fingerprint = parse_card(signed).fingerprint
    before = snapshot(a_home.path)
    liaison = Path(sys.executable).parent / "liaison"

    code, shown, answered = _terminal_session(
        [str(liaison), "peers", "add", "--home", str(a_home.path), str(card_file)], answer
    )

    assert answered, shown
    assert f"\n  {'fingerprint':<24} {fingerprint}\r\n" in shown
    assert "Agency \\x1b[2J\\x1b[31mB\\u202e" in shown
    assert "\x1b" not in shown
    assert "\u202e" not in shown
    if pinned:
        assert code == 0, shown
        assert f"Pinned {B_ID}" in shown
        with Inspector(a_home.home) as inspector, inspector.store.read() as session:
            [row] = session.scalars(sql_select(Peer)).all()
        assert row.signed_card == signed
    else:
        assert code == 2, shown
        assert "liaison: not confirmed: not pinned" in shown
        assert snapshot(a_home.path) == before


def test_remove_unpins_and_is_audited(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    seq = last_seq(a_home)
    code, out, err = run(capsys, "peers", "remove", B_ID, "--home", str(a_home.path))
    assert code == 0, err
    assert out.startswith(f"Removed {B_ID}: card {b_home.fingerprint} is no longer trusted")
    assert peers(capsys, a_home) == []
    [event] = audit_events(a_home, seq)
    assert (event.event, event.peer, event.actor) == ("peer-removed", B_ID, "admin")
    assert event.detail == f"card {bare(b_home.fingerprint)}, active"

    before = snapshot(a_home.path)
    code, out, err = run(capsys, "peers", "remove", B_ID, "--home", str(a_home.path))
    assert code == 2
    assert (out, err) == ("", f"liaison: {B_ID} is not a pinned peer; nothing removed\n")
    code, out, err = run(capsys, "peers", "remove", "not-an-id", "--home", str(a_home.path))
    assert code == 2
    assert "is not an agency id" in err
    assert snapshot(a_home.path) == before


@pytest.mark.parametrize(
    ("reason", "problem"),
    [
        ("", "the reason is empty"),
        ("   ", "the reason is empty"),
        ("x" * 201, "the reason is 201 characters long; at most 200"),
        ("key leaked\x1b[2J", "the reason contains control character U+001B"),
        ("line one\nline two", "the reason contains control character U+000A"),
        ("mark \u202e", "the reason contains control character U+202E"),
    ],
)
def test_a_revocation_reason_is_one_line_of_at_most_200_characters(
    a_home: CliHome,
    b_home: CliHome,
    capsys: pytest.CaptureFixture[str],
    reason: str,
    problem: str,
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    before = snapshot(a_home.path)
    code, out, err = run(
        capsys, "peers", "revoke", B_ID, "--reason", reason, "--home", str(a_home.path)
    )
    assert code == 2
    assert (out, err) == ("", f"liaison: {problem}: not revoked\n")
    assert snapshot(a_home.path) == before


def revoke(
    capsys: pytest.CaptureFixture[str], home: CliHome, agency_id: str, reason: str = REASON
) -> str:
    code, out, err = run(
        capsys, "peers", "revoke", agency_id, "--reason", reason, "--home", str(home.path)
    )
    assert code == 0, err
    return out


def reinstate(capsys: pytest.CaptureFixture[str], home: CliHome, agency_id: str) -> str:
    code, out, err = run(capsys, "peers", "reinstate", agency_id, "--home", str(home.path))
    assert code == 0, err
    return out


def test_revoke_and_reinstate_are_audited_and_shown(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    pinned_at = show(capsys, a_home, B_ID)["pinned_at"]
    seq = last_seq(a_home)

    out = revoke(capsys, a_home, B_ID)
    assert out.startswith(f"Revoked {B_ID}: its envelopes are refused (SENDER_REVOKED)")
    shown = show(capsys, a_home, B_ID)
    assert shown["state"] == "revoked"
    assert shown["revoke_reason"] == REASON
    assert shown["pinned_at"] == pinned_at
    assert shown["revoked_at"] >= pinned_at
    assert (shown["held_notices"], shown["fingerprint"]) == (0, b_home.fingerprint)
    [listed] = peers(capsys, a_home)
    # `show` adds how deliveries to the peer went lately; `list` does not.
    assert listed == {
        k: v for k, v in shown.items() if not k.startswith(("last_delivered", "last_delivery"))
    }
    code, text_out, _ = run(capsys, "peers", "list", "--home", str(a_home.path))
    assert text_out.split()[:2] == [B_ID, "revoked"]
    code, text_out, _ = run(capsys, "peers", "show", B_ID, "--home", str(a_home.path))
    assert f"revoke_reason            {REASON}" in text_out

    before = snapshot(a_home.path)
    out = revoke(capsys, a_home, B_ID, "another reason")
    assert out.startswith(f"{B_ID} is already revoked, since {shown['revoked_at']} ({REASON})")
    assert snapshot(a_home.path) == before

    out = reinstate(capsys, a_home, B_ID)
    assert out.startswith(f"Reinstated {B_ID}")
    shown = show(capsys, a_home, B_ID)
    assert (shown["state"], shown["revoked_at"], shown["revoke_reason"]) == ("active", None, None)
    assert "not revoked; nothing changed" in reinstate(capsys, a_home, B_ID)

    events = audit_events(a_home, seq)
    assert [(e.event, e.peer, e.actor) for e in events] == [
        ("peer-revoked", B_ID, "admin"),
        ("peer-reinstated", B_ID, "admin"),
    ]
    assert events[0].detail == f"card {bare(b_home.fingerprint)}; reason: {REASON}"

    code, out, err = run(capsys, "peers", "show", C_ID, "--home", str(a_home.path))
    assert (code, out, err) == (2, "", f"liaison: {C_ID} is not a pinned peer\n")


# A revoked peer, against real running nodes ---------------------------------------------


def _picked_up(node: RunningNode) -> threading.Event:
    """Set when the running node next finds the pinned set changed (its housekeeping)."""
    changed = threading.Event()
    assert node.node is not None
    node.node.peers.subscribe(changed.set)
    return changed


def test_a_revoked_peers_envelope_is_refused_with_sender_revoked_over_mtls(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin(b_home, a_home.identity().card)
    a = a_home.identity()
    b = node_factory(b_home)
    b_cli = CliHome(B_ID, b_home.path, "", tmp_path / "unused", b.card.fingerprint)
    changed = _picked_up(b)
    revoke(capsys, b_cli, A_ID)
    assert changed.wait(PICKUP_TIMEOUT_SECONDS)

    seq = last_seq(b_home)
    forge = Forge(
        sender=a,
        recipient=b.card,
        notice=complete(sample_notice(), A_ID),
        now=dt.datetime.now(dt.UTC),
        message_id=new_message_id(),
    )
    envelope = forge.build()
    with peer_channel(a, b.card) as channel:
        receipt = deliver_checked(channel, envelope, b.card)
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
    assert receipt.reason == R.REJECT_REASON_SENDER_REVOKED
    assert (receipt.message_id, receipt.sender) == (forge.message_id, A_ID)
    assert receipt.envelope_sha256 == hashlib.sha256(envelope).digest()
    [event] = audit_events(b_home, seq)
    assert (event.event, event.reason, event.peer) == ("rejected", "SENDER_REVOKED", A_ID)
    assert event.envelope_sha256 == hashlib.sha256(envelope).hexdigest()
    with Inspector(b_home) as inspector:
        assert inspector.count_messages() == 0

    # Reinstated, the same peer is heard again, without a restart.
    changed = _picked_up(b)
    reinstate(capsys, b_cli, A_ID)
    assert changed.wait(PICKUP_TIMEOUT_SECONDS)
    with peer_channel(a, b.card) as channel:
        receipt = deliver_checked(channel, forge.but(message_id=new_message_id()).build(), b.card)
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED


@pytest.fixture
def pinned_pair(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> tuple[CliHome, CliHome]:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    assert peers_add(capsys, b_home, a_home)[0] == 0
    return a_home, b_home


def test_notices_to_a_revoked_peer_are_held_until_it_is_reinstated(
    pinned_pair: tuple[CliHome, CliHome],
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    a_home, b_home = pinned_pair
    a = node_factory(a_home.home)  # B is not running yet: the notice stays queued
    with a.client() as client:
        sent = client.send_notice(B_ID, sample_notice(), wait_seconds=0)
        assert sent.state == "queued"
        out = revoke(capsys, a_home, B_ID)
        assert "notices waiting for it, held until `liaison peers reinstate`: 1" in out
        revoked_seq = last_seq(a_home)
        node_factory(b_home.home)
        # A notice held cannot be awaited: watch it for longer than its next retry was due
        # (at most a second after its first attempt) and the node's pickup (a second).
        status = client.get_status(sent.message_id, wait_seconds=HOLD_OBSERVED_SECONDS)
        assert state_name(status.state) == "queued"
        claims = [
            e
            for e in audit_events(a_home, revoked_seq)
            if e.event == "sent" and e.message_id == sent.message_id
        ]
        assert claims == []
        with Inspector(b_home.home) as inspector:
            assert inspector.count_messages() == 0
        shown = show(capsys, a_home, B_ID)
        assert (shown["state"], shown["held_notices"]) == ("revoked", 1)

        out = reinstate(capsys, a_home, B_ID)
        assert "held notices, sent now: 1" in out
        status = client.get_status(sent.message_id, wait_seconds=30)
        assert state_name(status.state) == "delivered"
    with Inspector(b_home.home) as inspector:
        assert inspector.count_messages(Direction.INBOUND) == 1
    assert show(capsys, a_home, B_ID)["held_notices"] == 0


def test_notices_to_a_removed_peer_are_held_not_retried_and_go_out_if_it_is_pinned_again(
    pinned_pair: tuple[CliHome, CliHome],
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    a_home, b_home = pinned_pair
    a = node_factory(a_home.home)  # B is not running yet: the notice stays queued
    with a.client() as client:
        sent = client.send_notice(B_ID, sample_notice(), wait_seconds=0)
        code, out, err = run(capsys, "peers", "remove", B_ID, "--home", str(a_home.path))
        assert code == 0, err
        assert "notices waiting for it, not sent unless it is pinned again: 1" in out
        removed_seq = last_seq(a_home)
        node_factory(b_home.home)
        # Held cannot be awaited: watch for longer than a retry would take to come due.
        status = client.get_status(sent.message_id, wait_seconds=HOLD_OBSERVED_SECONDS)
        assert state_name(status.state) == "queued"
        attempts = [
            e.event for e in audit_events(a_home, removed_seq) if e.message_id == sent.message_id
        ]
        assert attempts == []  # neither claimed nor retried, so no audit noise either
        assert peers_add(capsys, a_home, b_home)[0] == 0
        status = client.get_status(sent.message_id, wait_seconds=30)
        assert state_name(status.state) == "delivered"
    with Inspector(b_home.home) as inspector:
        assert inspector.count_messages(Direction.INBOUND) == 1


def test_a_new_notice_to_a_revoked_peer_is_refused(
    pinned_pair: tuple[CliHome, CliHome],
    capsys: pytest.CaptureFixture[str],
    node_factory: Callable[[NodeHome], RunningNode],
    tmp_path: Path,
) -> None:
    a_home, _ = pinned_pair
    node_factory(a_home.home)
    revoke(capsys, a_home, B_ID)
    seq = last_seq(a_home)
    notice_file = tmp_path / "notice.toml"
    notice_file.write_text(NOTICE_TOML, encoding="utf-8")
    code, out, err = run(
        capsys, "send", "--to", B_ID, "--notice", str(notice_file), "--home", str(a_home.path)
    )
    assert code == 4
    assert out == ""
    assert err == (
        f"liaison: {B_ID} is revoked on this node: nothing is sent to it until an operator "
        f"runs `liaison peers reinstate {B_ID}`\n"
    )
    assert last_seq(a_home) == seq
    with Inspector(a_home.home) as inspector:
        assert inspector.count_messages() == 0
