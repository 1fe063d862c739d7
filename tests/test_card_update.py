"""Card updates: what a receiver accepts as a peer's next card, and ``liaison keys rotate``.

The update is the only way a pinned card changes without an operator: each
way to forge or bend one is refused, over the wire with its own reason and
nothing stored, and the CLI refuses what it cannot do with one line and
nothing changed on disk.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from liaison.keys.card import PeerCard, sign_card
from liaison.keys.content_types import CARD_UPDATE_CONTENT_TYPE
from liaison.keys.envelope import seal_content
from liaison.keys.errors import KeyStoreError
from liaison.keys.identity import NodeIdentity, generate_identity
from liaison.keys.keyring import KeyRing, Retirement, StaleKeyRing, retirement_change, rotation
from liaison.keys.rotation import CardUpdateError, make_card_update, verify_card_update
from liaison.server.store.audit import AuditKind
from liaison.server.store.store import Store
from liaison.v1 import envelope_pb2
from tests.cli_homes import CliHome, peers_add, run, run_json, snapshot
from tests.conftest import make_home, peer_link

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
# When the rotations happen: after the identities below are made (a fixed date in the
# past of a run made them "older than the pinned card" from that moment on).
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)


def next_card(identity: NodeIdentity, *kinds: str) -> tuple[NodeIdentity, bytes]:
    """``identity``'s next identity and the card update to it, as a rotation makes them."""
    plan = rotation(KeyRing(current=identity, generation="gen-test"), frozenset(kinds), now=NOW)
    return plan.current, plan.update


@pytest.fixture(scope="module")
def a() -> NodeIdentity:
    return generate_identity(A_ID, "A", "127.0.0.1:1")


@pytest.fixture(scope="module")
def a_pq() -> NodeIdentity:
    return generate_identity(A_ID, "A", "127.0.0.1:1", mldsa65=True)


def test_a_rotation_update_verifies_as_the_successor(a: NodeIdentity) -> None:
    new, update = next_card(a, "signing", "encryption", "tls")
    card = verify_card_update(update, pinned=a.card)
    assert card.signed_card == new.card.signed_card
    assert card.sequence == 1
    assert card.signing_key_id != a.card.signing_key_id
    assert card.encryption_key_id != a.card.encryption_key_id
    assert card.tls_fingerprint != a.card.tls_fingerprint


def test_a_post_quantum_update_is_signed_with_both_keys(a_pq: NodeIdentity) -> None:
    new, update = next_card(a_pq, "signing")
    card = verify_card_update(update, pinned=a_pq.card)
    assert card.post_quantum_signed
    assert card.mldsa65_key is not None
    assert a_pq.card.mldsa65_key is not None
    assert card.mldsa65_key.public_bytes_raw() != a_pq.card.mldsa65_key.public_bytes_raw()
    # Stripping the ML-DSA-65 signature must not pass as a classic update.
    stripped = envelope_pb2.SignedCardUpdate.FromString(update)
    stripped.ClearField("mldsa65_signature")
    with pytest.raises(CardUpdateError, match="ML-DSA-65"):
        verify_card_update(stripped.SerializeToString(), pinned=a_pq.card)
    del new


def _update(pinned: PeerCard, card: bytes, key: ed25519.Ed25519PrivateKey) -> bytes:
    return make_card_update(pinned, card, signing_key=key)


def _resigned(identity: NodeIdentity, **fields: object) -> bytes:
    """``identity``'s card with ``fields`` changed, self-signed again."""
    card = envelope_pb2.AgencyCard.FromString(
        envelope_pb2.SignedCard.FromString(identity.card.signed_card).card
    )
    for name, value in fields.items():
        setattr(card, name, value)
    return sign_card(card, identity.signing_key)


def test_each_bent_update_is_refused(a: NodeIdentity) -> None:
    new, good = next_card(a, "signing")
    other = generate_identity(B_ID, "B", "127.0.0.1:2")
    cases = {
        # Signed by the new key, not the pinned one: a stolen-card takeover.
        "not signed by": _update(a.card, new.card.signed_card, new.signing_key),
        # Names another predecessor than the pinned card.
        "does not replace": make_card_update(
            other.card, new.card.signed_card, signing_key=a.signing_key
        ),
        # Skips a sequence number, or goes back.
        "not the successor": _update(a.card, _resigned(new, sequence=5), a.signing_key),
        "holds a card of another agency": _update(
            a.card,
            dataclasses.replace(other, sequence=1).card.signed_card,
            a.signing_key,
        ),
        "does not parse": b"\xff\x00garbage",
    }
    for expected, update in cases.items():
        with pytest.raises(CardUpdateError, match=expected):
            verify_card_update(update, pinned=a.card)
    assert verify_card_update(good, pinned=a.card).sequence == 1


def test_an_update_may_not_drop_the_post_quantum_key(a_pq: NodeIdentity) -> None:
    classic = dataclasses.replace(a_pq, mldsa65_key=None, card_mldsa65_signature=b"", sequence=1)
    update = make_card_update(
        a_pq.card,
        classic.card.signed_card,
        signing_key=a_pq.signing_key,
        mldsa65_key=a_pq.mldsa65_key,
    )
    with pytest.raises(CardUpdateError, match="drops its ML-DSA-65 key"):
        verify_card_update(update, pinned=a_pq.card)


def test_an_older_card_is_refused(a: NodeIdentity) -> None:
    older = dataclasses.replace(a, sequence=1, created_at=a.created_at - dt.timedelta(days=1))
    with pytest.raises(CardUpdateError, match="older"):
        verify_card_update(_update(a.card, older.card.signed_card, a.signing_key), pinned=a.card)


# Over the wire ---------------------------------------------------------------------


def test_a_valid_update_over_the_wire_repins_and_a_bent_one_changes_nothing(
    tmp_path: Path,
) -> None:
    with peer_link(tmp_path, A_ID, B_ID) as link:
        new, good = next_card(link.a, "signing", "tls")
        bent = _update(link.a.card, new.card.signed_card, new.signing_key)
        seq = link.inspector.last_audit_seq()

        refused = seal_content(
            bent,
            content_type=CARD_UPDATE_CONTENT_TYPE,
            sender=link.a,
            recipient=link.b.card,
            ttl=dt.timedelta(hours=1),
        )
        receipt = link.deliver(refused.envelope)
        assert receipt.status == envelope_pb2.RECEIPT_STATUS_REJECTED
        assert receipt.reason == envelope_pb2.REJECT_REASON_INVALID_CARD_UPDATE
        assert link.inspector.count_messages() == 0
        assert _pinned(link.b.home.database_url(), A_ID) == link.a.card.signed_card
        rejected = [e for e in link.inspector.audit_since(seq) if e.event == "rejected"]
        assert [e.reason for e in rejected] == ["INVALID_CARD_UPDATE"]

        accepted = seal_content(
            good,
            content_type=CARD_UPDATE_CONTENT_TYPE,
            sender=link.a,
            recipient=link.b.card,
            ttl=dt.timedelta(hours=1),
        )
        receipt = link.deliver(accepted.envelope)
        assert receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
        assert _pinned(link.b.home.database_url(), A_ID) == new.card.signed_card
        kinds = [e.event for e in link.inspector.audit_since(seq)]
        assert AuditKind.PEER_CARD_UPDATED.value in kinds
        # The same update again is a replay: the original receipt, nothing repinned.
        assert link.deliver(accepted.envelope).status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
        assert link.inspector.count_messages() == 1


def _pinned(url: str, agency_id: str) -> bytes:
    store = Store(url)
    try:
        peer = store.pinned_peer(agency_id)
    finally:
        store.close()
    assert peer is not None
    return peer.card.signed_card


# The CLI -------------------------------------------------------------------------


def test_keys_rotate_from_the_cli(
    a_home: CliHome, b_home: CliHome, capsys: pytest.CaptureFixture[str]
) -> None:
    assert peers_add(capsys, a_home, b_home)[0] == 0
    assert peers_add(capsys, b_home, a_home)[0] == 0
    home = ("--home", str(a_home.path))

    code, _out, err = run(capsys, "keys", "rotate", *home)
    assert code == 2
    assert err.count("\n") == 1
    assert "--signing" in err

    rotated = run_json(capsys, "keys", "rotate", "--signing", "--tls", "--encryption", *home)
    assert isinstance(rotated, dict)
    assert rotated["card_sequence"] == 1
    assert rotated["announced_to"] == [B_ID]
    assert {r["role"] for r in rotated["rotated"]} == {
        "signing",
        "tls",
        "kem-mlkem768",
        "kem-x25519",
    }
    keys = run_json(capsys, "keys", "list", *home)
    assert isinstance(keys, list)
    # Each pair is one role's old key and its successor.
    for pair in rotated["rotated"]:
        (old,) = [k for k in keys if k["id"] == pair["old"] and k["role"] == pair["role"]]
        (new,) = [k for k in keys if k["id"] == pair["new"] and k["role"] == pair["role"]]
        assert (old["state"], new["state"]) == ("retiring", "active")

    states = sorted((k["role"], k["state"]) for k in keys if k["role"] in ("signing", "tls"))
    assert states == [
        ("signing", "active"),
        ("signing", "retiring"),
        ("tls", "active"),
        ("tls", "retiring"),
    ]
    exported = run_json(capsys, "card", "export", *home)
    assert isinstance(exported, dict)
    assert exported["card_sequence"] == "1"
    assert exported["fingerprint"] == rotated["fingerprint"]
    shown = run_json(capsys, "peers", "show", B_ID, *home)
    assert isinstance(shown, dict)
    assert shown["pins_our_card"] == 0
    assert shown["our_card_announced"] == 1

    # A second rotation waits for the first to reach every peer: one line, nothing changed.
    before = snapshot(a_home.path)
    code, _out, err = run(capsys, "keys", "rotate", "--encryption", *home)
    assert code == 2
    assert err.count("\n") == 1
    assert "still being announced" in err
    assert snapshot(a_home.path) == before

    # The operator hands B the new card out of band instead: recorded, and audited; the
    # queued announcement is moot, and the next rotation may go ahead.
    code, out, err = run(capsys, "peers", "has-our-card", B_ID, *home)
    assert (code, err) == (0, "")
    assert "pins our card 1" in out
    shown = run_json(capsys, "peers", "show", B_ID, *home)
    assert isinstance(shown, dict)
    assert (shown["pins_our_card"], shown["our_card_announced"]) == (1, None)
    code, out, _ = run(capsys, "peers", "has-our-card", B_ID, *home)
    assert "nothing changed" in out
    rotated = run_json(capsys, "keys", "rotate", "--encryption", *home)
    assert isinstance(rotated, dict)
    assert rotated["card_sequence"] == 2
    assert rotated["announced_to"] == [B_ID]


def test_a_wrong_passphrase_rotates_nothing(
    a_home: CliHome, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIAISON_PASSPHRASE", "not the passphrase at all, sorry")
    before = snapshot(a_home.path)
    code, _out, err = run(capsys, "keys", "rotate", "--signing", "--home", str(a_home.path))
    assert code == 2
    assert "passphrase" in err
    assert snapshot(a_home.path) == before


def test_rotation_refuses_unknown_kinds(a: NodeIdentity) -> None:
    ring = KeyRing(current=a, generation="gen-test")
    with pytest.raises(ValueError, match="unknown"):
        rotation(ring, frozenset({"storage"}), now=NOW)
    with pytest.raises(KeyStoreError, match="still being announced"):
        rotation(dataclasses.replace(ring, previous=a), frozenset({"tls"}), now=NOW)


def test_key_store_changes_planned_from_a_stale_ring_are_refused(tmp_path: Path) -> None:
    """Found in review: two rotations at once mixed their keys, and a retirement planned
    before a rotation deleted that rotation's previous card and update."""
    home = make_home(tmp_path, A_ID)
    assert home.unlocker is not None
    ring = home.keyring()
    first, second = (rotation(ring, frozenset({kind}), now=NOW) for kind in ("signing", "tls"))
    home.keys.change(home.unlocker, first.change)
    before = snapshot(home.path)
    with pytest.raises(StaleKeyRing):
        home.keys.change(home.unlocker, second.change)
    assert snapshot(home.path) == before
    # A retirement planned while card 1 was previous, applied once card 0 is (another
    # rotation in between): it must not forget the previous card it did not see.
    stale = retirement_change(
        Retirement([], []), forget_previous=True, previous_card=first.current.card.signed_card
    )
    with pytest.raises(StaleKeyRing):
        home.keys.change(home.unlocker, stale)
    assert home.keyring().previous is not None
    assert snapshot(home.path) == before
