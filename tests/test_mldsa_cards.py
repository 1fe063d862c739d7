"""Post-quantum card signatures: a card may carry an ML-DSA-65 key beside Ed25519,
and is then self-signed with both and verified with both (PROTOCOL.md 4.2, 4.3)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa

from liaison.keys.card import parse_card, sign_card
from liaison.keys.errors import CardError
from liaison.keys.identity import NodeIdentity, generate_identity
from liaison.keys.labels import CARD_MLDSA65_CONTEXT, CARD_SIGNATURE_LABEL, signing_input
from liaison.server.home import NodeHome
from liaison.v1 import envelope_pb2
from tests.cli_homes import FINGERPRINT, run, run_init
from tests.conftest import RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID = "MA.DGSN.CCPI"
B_ID = "DE.BPOL.LO-RABAT"
MLDSA65_PUBLIC_KEY_BYTES = 1952
MLDSA65_SIGNATURE_BYTES = 3309


@pytest.fixture(scope="module")
def pq() -> NodeIdentity:
    return generate_identity(A_ID, "Agency A", "127.0.0.1:7001", mldsa65=True)


@pytest.fixture(scope="module")
def classic() -> NodeIdentity:
    return generate_identity(B_ID, "Agency B", "127.0.0.1:7002")


def _parts(signed_card: bytes) -> tuple[envelope_pb2.SignedCard, envelope_pb2.AgencyCard]:
    outer = envelope_pb2.SignedCard.FromString(signed_card)
    return outer, envelope_pb2.AgencyCard.FromString(outer.card)


def _mldsa65(key: mldsa.MLDSA65PrivateKey | None) -> bytes:
    return b"" if key is None else key.public_key().public_bytes_raw()


# Round trips -----------------------------------------------------------------------


def test_a_post_quantum_card_round_trips_with_both_signatures(pq: NodeIdentity) -> None:
    outer, card = _parts(pq.card.signed_card)
    assert len(card.mldsa65_key) == MLDSA65_PUBLIC_KEY_BYTES
    assert card.mldsa65_key == _mldsa65(pq.mldsa65_key)
    assert len(outer.mldsa65_signature) == MLDSA65_SIGNATURE_BYTES
    parsed = parse_card(pq.card.signed_card)
    assert parsed.post_quantum_signed
    assert parsed.mldsa65_key is not None
    assert parsed.mldsa65_key.public_bytes_raw() == card.mldsa65_key
    assert parsed.signed_card == pq.card.signed_card
    # The fingerprint is over the whole SignedCard: both signatures included.
    assert (
        parsed.fingerprint.replace(" ", "") == hashlib.sha256(outer.SerializeToString()).hexdigest()
    )


def test_a_card_without_mldsa65_is_exactly_as_before(classic: NodeIdentity) -> None:
    outer, card = _parts(classic.card.signed_card)
    assert not card.mldsa65_key
    assert not outer.mldsa65_signature
    # Neither field 10 of the card nor field 3 of the SignedCard appears on the wire.
    resigned = sign_card(card, classic.signing_key)
    assert resigned == classic.card.signed_card
    assert envelope_pb2.SignedCard(
        card=outer.card, signature=outer.signature
    ).SerializeToString() == (classic.card.signed_card)
    parsed = parse_card(classic.card.signed_card)
    assert not parsed.post_quantum_signed
    assert parsed.mldsa65_key is None


def test_mldsa65_signing_is_randomized_so_the_identity_keeps_its_first_signature(
    pq: NodeIdentity,
) -> None:
    assert pq.mldsa65_key is not None
    message = b"same input"
    assert pq.mldsa65_key.sign(message) != pq.mldsa65_key.sign(message)
    outer, _ = _parts(pq.card.signed_card)
    fresh = dataclasses.replace(pq)
    assert fresh.card.signed_card != pq.card.signed_card  # another signature, another card
    kept = dataclasses.replace(pq, card_mldsa65_signature=outer.mldsa65_signature)
    assert kept.card.signed_card == pq.card.signed_card
    assert kept.card.fingerprint == pq.card.fingerprint


def test_a_kept_signature_that_does_not_verify_is_replaced(pq: NodeIdentity) -> None:
    renamed = dataclasses.replace(pq, name="Agency A, renamed", card_mldsa65_signature=b"\x00" * 8)
    parsed = parse_card(renamed.card.signed_card)
    assert parsed.post_quantum_signed
    assert parsed.name == "Agency A, renamed"


# Refusals: each is accepted by a parser that knows nothing of ML-DSA -----------------


def _resigned(
    identity: NodeIdentity,
    *,
    key: bytes | None = None,
    signer: mldsa.MLDSA65PrivateKey | None = None,
    signature: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """``identity``'s card with ``key`` as its ML-DSA-65 key, correctly Ed25519-signed,
    and ``signature(signing input)`` (or ``signer``'s signature) as the second one."""
    _, card = _parts(identity.card.signed_card)
    if key is not None:
        card.mldsa65_key = key
    signed = sign_card(card, identity.signing_key, signer)
    if signature is not None:
        outer, _ = _parts(signed)
        outer.mldsa65_signature = signature(signing_input(CARD_SIGNATURE_LABEL, outer.card))
        signed = outer.SerializeToString()
    return signed


def test_an_mldsa65_signature_without_a_key_is_refused(
    classic: NodeIdentity, pq: NodeIdentity
) -> None:
    assert pq.mldsa65_key is not None
    signer = pq.mldsa65_key
    signed = _resigned(classic, signature=lambda m: signer.sign(m, CARD_MLDSA65_CONTEXT))
    with pytest.raises(CardError, match="carries an ML-DSA-65 signature but no ML-DSA-65 key"):
        parse_card(signed)


def test_an_mldsa65_key_without_a_signature_is_refused(pq: NodeIdentity) -> None:
    """Stripping the second signature from a post-quantum card does not downgrade it."""
    outer, _ = _parts(pq.card.signed_card)
    stripped = envelope_pb2.SignedCard(card=outer.card, signature=outer.signature)
    with pytest.raises(CardError, match="holds an ML-DSA-65 key but no ML-DSA-65 signature"):
        parse_card(stripped.SerializeToString())


@pytest.mark.parametrize(
    "length", [1, 32, MLDSA65_PUBLIC_KEY_BYTES - 1, MLDSA65_PUBLIC_KEY_BYTES + 1]
)
def test_an_mldsa65_key_of_the_wrong_length_is_refused(pq: NodeIdentity, length: int) -> None:
    key = (_mldsa65(pq.mldsa65_key) * 2)[:length]
    signed = _resigned(pq, key=key, signature=lambda _: b"\x01" * MLDSA65_SIGNATURE_BYTES)
    with pytest.raises(CardError, match="malformed ML-DSA-65 key"):
        parse_card(signed)


def _bad_signatures(pq: NodeIdentity) -> dict[str, Callable[[bytes], bytes]]:
    key = pq.mldsa65_key
    assert key is not None
    other = mldsa.MLDSA65PrivateKey.generate()

    def flipped(message: bytes) -> bytes:
        signature = bytearray(key.sign(message, CARD_MLDSA65_CONTEXT))
        signature[100] ^= 0x01
        return bytes(signature)

    return {
        "flipped": flipped,
        "other key": lambda m: other.sign(m, CARD_MLDSA65_CONTEXT),
        "no context": key.sign,
        "other context": lambda m: key.sign(m, CARD_SIGNATURE_LABEL),
        "other bytes": lambda m: key.sign(m + b"\x00", CARD_MLDSA65_CONTEXT),
        "truncated": lambda m: key.sign(m, CARD_MLDSA65_CONTEXT)[:-1],
        "zeros": lambda _: bytes(MLDSA65_SIGNATURE_BYTES),
    }


@pytest.mark.parametrize(
    "kind",
    ["flipped", "other key", "no context", "other context", "other bytes", "truncated", "zeros"],
)
def test_a_bad_mldsa65_signature_is_refused(pq: NodeIdentity, kind: str) -> None:
    signed = _resigned(pq, signature=_bad_signatures(pq)[kind])
    with pytest.raises(CardError, match="not signed by its own ML-DSA-65 key"):
        parse_card(signed)


def test_the_mldsa65_check_runs_before_the_key_and_certificate_parsers(pq: NodeIdentity) -> None:
    """A card whose TLS certificate and KEM key are junk, and whose ML-DSA-65 signature
    is bad: the refusal names the signature, so the junk never reached its parser."""
    _, card = _parts(pq.card.signed_card)
    card.tls_certificate = b"not a certificate"
    card.kem_x25519_key = b"short"
    signed = sign_card(card, pq.signing_key, mldsa.MLDSA65PrivateKey.generate())
    with pytest.raises(CardError, match="not signed by its own ML-DSA-65 key"):
        parse_card(signed)


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_a_flipped_byte_anywhere_in_a_post_quantum_card_is_refused(pq: NodeIdentity) -> None:
    """Every byte of the SignedCard (card, Ed25519 and ML-DSA-65 signatures, framing)."""
    signed = pq.card.signed_card
    accepted: list[int] = []
    wrong_error: list[tuple[int, str]] = []
    for index in range(len(signed)):
        flipped = bytearray(signed)
        flipped[index] ^= 0x01
        try:
            parse_card(bytes(flipped))
        except CardError:
            continue
        except Exception as error:
            wrong_error.append((index, repr(error)))
        else:
            accepted.append(index)
    assert accepted == []
    assert wrong_error == []


# The node's key store and the CLI --------------------------------------------------


def test_init_mldsa65_seals_the_key_and_shows_the_card_as_post_quantum(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "pq"
    code, out, err = run_init(capsys, path, A_ID, extra=("--mldsa65",))
    assert code == 0, err
    printed = out.split("card           ")[1].split("\n")[0]
    assert FINGERPRINT.fullmatch(printed)
    code, rows_text, _ = run(capsys, "keys", "list", "--home", str(path), "--json")
    assert code == 0
    rows = {row["role"]: row for row in json.loads(rows_text)}
    assert rows["signing-mldsa65"]["kind"] == "ML-DSA-65 card signing key"
    # The same card, bytes and fingerprint, at every load: its ML-DSA-65 signature is kept.
    code, armored, err = run(capsys, "card", "export", "--home", str(path))
    assert code == 0
    assert err.strip() == f"card fingerprint: {printed}"
    assert run(capsys, "card", "export", "--home", str(path))[1] == armored
    card_file = tmp_path / "pq.card"
    card_file.write_text(armored, encoding="utf-8")
    code, shown, _ = run(capsys, "card", "show", str(card_file), "--json")
    assert code == 0
    assert json.loads(shown)["post_quantum_card_signature"] == "ML-DSA-65"
    code, shown, _ = run(capsys, "card", "show", str(card_file))
    assert code == 0
    assert "post_quantum_card_signature ML-DSA-65" in shown


def test_init_without_mldsa65_makes_no_mldsa65_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "classic"
    assert run_init(capsys, path, A_ID)[0] == 0
    code, rows_text, _ = run(capsys, "keys", "list", "--home", str(path), "--json")
    assert code == 0
    assert "signing-mldsa65" not in {row["role"] for row in json.loads(rows_text)}
    code, exported, _ = run(capsys, "card", "export", "--home", str(path), "--json")
    assert code == 0
    assert json.loads(exported)["post_quantum_card_signature"] == "none"


# End to end --------------------------------------------------------------------------


def test_a_post_quantum_node_and_a_classic_node_pin_each_other_and_exchange_notices(
    tmp_path: Path,
    node_factory: Callable[[NodeHome], RunningNode],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pq_home = make_home(tmp_path, A_ID, mldsa65=True)
    classic_home = make_home(tmp_path, B_ID)
    pin_each_other(pq_home, classic_home)
    for home, other, post_quantum in ((classic_home, A_ID, "ML-DSA-65"), (pq_home, B_ID, "none")):
        code, shown, err = run(capsys, "peers", "show", other, "--home", str(home.path), "--json")
        assert code == 0, err
        assert json.loads(shown)["post_quantum_card_signature"] == post_quantum
    a, b = node_factory(pq_home), node_factory(classic_home)
    assert a.card.post_quantum_signed
    assert a.card.signed_card == pq_home.identity().card.signed_card
    with a.client() as client_a, b.client() as client_b:
        sent = client_a.send_notice(B_ID, sample_notice("PQ-1"), wait_seconds=30)
        assert sent.state == "delivered"
        reply = client_b.send_notice(A_ID, sample_notice("PQ-2"), wait_seconds=30)
        assert reply.state == "delivered"
        assert client_b.get_message(sent.message_id).notice.case_reference == "PQ-1"
        assert client_a.get_message(reply.message_id).notice.case_reference == "PQ-2"
