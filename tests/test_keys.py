"""Pure functions of ``liaison.keys``: ids, labels, cards, the key store, and
sealing, opening and receipts in-process (no node, no network)."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
import uuid

import pytest
from cryptography.hazmat.primitives import serialization

from liaison.keys import labels
from liaison.keys.card import armor_card, dearmor_card, parse_card, sign_card
from liaison.keys.envelope import (
    EnvelopeLimits,
    check_envelope,
    issue_receipt,
    open_checked,
    seal_notice,
    verify_receipt,
)
from liaison.keys.errors import CardError, EnvelopeRejected, ReceiptError
from liaison.keys.identity import NodeIdentity, generate_identity
from liaison.keys.ids import MAX_AGENCY_ID_LENGTH, is_agency_id, is_message_id, new_message_id
from liaison.keys.notice import notice_problems
from liaison.keys.trust import TrustStore
from liaison.v1 import envelope_pb2
from liaison.v1 import notice_pb2 as N
from tests.notices import complete, sample_notice

A_ID = "MA.DGSN.CCPI"
B_ID = "DE.BPOL.LO-RABAT"
RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
FINGERPRINT = re.compile(r"[0-9a-f]{4}( [0-9a-f]{4}){15}")


@pytest.fixture(scope="module")
def a() -> NodeIdentity:
    return generate_identity(A_ID, "Agency A", "127.0.0.1:7001")


@pytest.fixture(scope="module")
def b() -> NodeIdentity:
    return generate_identity(B_ID, "Agency B", "127.0.0.1:7002")


@pytest.fixture(scope="module")
def b_impostor() -> NodeIdentity:
    """Same agency id and endpoint as ``b``, other keys."""
    return generate_identity(B_ID, "Agency B", "127.0.0.1:7002")


# Message ids -------------------------------------------------------------------


def test_new_message_id_is_a_canonical_uuidv7_stamped_with_the_current_ms() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_message_id() for _ in range(200)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text  # canonical: lowercase, hyphenated
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert text[19] in "89ab"
        assert before_ms <= int(text[:8] + text[9:13], 16) <= after_ms
        assert is_message_id(text)
    # The 74 random bits differ between ids made in the same millisecond.
    assert len({text[14:] for text in ids}) == len(ids)


def _with_nibble(text: str, index: int, nibble: str) -> str:
    return text[:index] + nibble + text[index + 1 :]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not-a-uuid",
        "01a22488-44ca-7885-9083-b9635c2e491",  # one digit short
        "01A22488-44CA-7885-9083-B9635C2E4917",  # uppercase
        "{01a22488-44ca-7885-9083-b9635c2e4917}",  # braces
        "urn:uuid:01a22488-44ca-7885-9083-b9635c2e4917",
        "01a2248844ca78859083b9635c2e4917",  # no hyphens
        " 01a22488-44ca-7885-9083-b9635c2e4917",
        "01a22488-44ca-7885-9083-b9635c2e4917\n",
        _with_nibble("01a22488-44ca-7885-9083-b9635c2e4917", 14, "4"),  # version 4
        _with_nibble("01a22488-44ca-7885-9083-b9635c2e4917", 14, "1"),  # version 1
        _with_nibble("01a22488-44ca-7885-9083-b9635c2e4917", 14, "8"),  # version 8
        _with_nibble("01a22488-44ca-7885-9083-b9635c2e4917", 19, "1"),  # NCS variant
        _with_nibble("01a22488-44ca-7885-9083-b9635c2e4917", 19, "c"),  # Microsoft variant
        _with_nibble("01a22488-44ca-7885-9083-b9635c2e4917", 19, "f"),  # future variant
        str(uuid.uuid4()),
        "00000000-0000-0000-0000-000000000000",
    ],
)
def test_is_message_id_rejects(text: str) -> None:
    assert not is_message_id(text)


def test_is_message_id_accepts_a_known_uuidv7() -> None:
    assert is_message_id("01a22488-44ca-7885-9083-b9635c2e4917")


# Agency ids --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", [A_ID, B_ID, "FR.DGPN.SCCOPOL", "X", "A1-B2.C3", "A" * MAX_AGENCY_ID_LENGTH]
)
def test_is_agency_id_accepts(text: str) -> None:
    assert MAX_AGENCY_ID_LENGTH == 63
    assert is_agency_id(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ma.dgsn.ccpi",
        "Ma.DGSN.CCPI",
        ".MA.DGSN",
        "MA.DGSN.",
        "-MA",
        "MA-",
        "MA..DGSN",
        "MA.-DGSN",
        "MA DGSN",
        "MA_DGSN",
        "MA/DGSN",
        "MA.DGSN\n",
        "MA.DGSN.CÇPI",
        "A" * 64,
        "AB." * 21 + "A",  # 64 characters in valid parts
    ],
)
def test_is_agency_id_rejects(text: str) -> None:
    assert not is_agency_id(text)


# Labels ------------------------------------------------------------------------


def test_signing_input_is_label_zero_byte_and_concatenated_digests() -> None:
    label = labels.ENVELOPE_SIGNATURE_LABEL
    got = labels.signing_input(label, b"header", b"", b"ciphertext" * 1000)
    expected = (
        label
        + b"\x00"
        + hashlib.sha256(b"header").digest()
        + hashlib.sha256(b"").digest()
        + hashlib.sha256(b"ciphertext" * 1000).digest()
    )
    assert got == expected
    assert len(got) == len(label) + 1 + 3 * 32
    assert labels.signing_input(label) == label + b"\x00"
    assert labels.labelled(label, b"data") == label + b"\x00data"


def test_signing_input_separates_labels_and_part_boundaries() -> None:
    all_labels = [
        labels.ENVELOPE_SIGNATURE_LABEL,
        labels.CONTENT_SIGNATURE_LABEL,
        labels.RECEIPT_SIGNATURE_LABEL,
        labels.CARD_SIGNATURE_LABEL,
        labels.HPKE_INFO_LABEL,
        labels.KEY_ID_LABEL_SIGNING,
        labels.KEY_ID_LABEL_ENCRYPTION,
    ]
    inputs = {labels.signing_input(label, b"same", b"parts") for label in all_labels}
    assert len(inputs) == len(all_labels)
    for label in all_labels:
        assert b"\x00" not in label
    body = labels.CARD_SIGNATURE_LABEL
    assert labels.signing_input(body, b"ab", b"c") != labels.signing_input(body, b"a", b"bc")
    assert labels.signing_input(body, b"abc") != labels.signing_input(body, b"ab", b"c")


# Cards -------------------------------------------------------------------------


def test_card_round_trips_through_armor(a: NodeIdentity) -> None:
    card = a.card
    text = armor_card(card.signed_card)
    lines = text.splitlines()
    assert lines[0] == "-----BEGIN LIAISON AGENCY CARD-----"
    assert lines[-1] == "-----END LIAISON AGENCY CARD-----"
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert dearmor_card(text) == card.signed_card
    # Mail clients and editors: CRLF line ends and surrounding blank lines.
    assert dearmor_card("\n\n" + text.replace("\n", "\r\n") + "\n") == card.signed_card

    parsed = parse_card(dearmor_card(text))
    assert parsed.signed_card == card.signed_card
    assert parsed.fingerprint == card.fingerprint
    assert parsed.agency_id == A_ID
    assert parsed.name == "Agency A"
    assert parsed.endpoint == "127.0.0.1:7001"
    assert parsed.created_at == a.created_at
    assert parsed.signing_key.public_bytes(*RAW) == a.signing_key.public_key().public_bytes(*RAW)
    assert parsed.tls_certificate == a.tls.certificate.public_bytes(serialization.Encoding.DER)
    assert parsed.tls_name == "ma.dgsn.ccpi"


def test_card_fingerprint_is_sixteen_groups_of_four_hex_digits(a: NodeIdentity) -> None:
    fingerprint = a.card.fingerprint
    assert FINGERPRINT.fullmatch(fingerprint)
    assert fingerprint.replace(" ", "") == hashlib.sha256(a.card.signed_card).hexdigest()


def test_the_same_identity_always_yields_the_same_card_bytes(a: NodeIdentity) -> None:
    again = NodeIdentity(
        agency_id=a.agency_id,
        name=a.name,
        endpoint=a.endpoint,
        created_at=a.created_at,
        signing_key=a.signing_key,
        kem_mlkem=a.kem_mlkem,
        kem_x25519=a.kem_x25519,
        tls=a.tls,
    )
    assert again.card.signed_card == a.card.signed_card
    assert again.card.fingerprint == a.card.fingerprint


def _cert_version_position(a: NodeIdentity) -> int:
    """Index, in the SignedCard's card bytes, of the TLS certificate's version value."""
    outer = envelope_pb2.SignedCard.FromString(a.card.signed_card)
    der = a.card.tls_certificate
    # Certificate SEQ, TBSCertificate SEQ, then [0] EXPLICIT INTEGER 2 (v3).
    assert der[8:13] == b"\xa0\x03\x02\x01\x02"
    return outer.card.index(der) + 12


def _with_card_bytes(signed_card: bytes, card_bytes: bytes) -> bytes:
    outer = envelope_pb2.SignedCard.FromString(signed_card)
    return envelope_pb2.SignedCard(card=card_bytes, signature=outer.signature).SerializeToString()


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_a_flipped_byte_anywhere_in_the_card_bytes_is_refused(a: NodeIdentity) -> None:
    card_bytes = envelope_pb2.SignedCard.FromString(a.card.signed_card).card
    accepted: list[int] = []
    wrong_error: list[tuple[int, str]] = []
    for index in range(len(card_bytes)):
        flipped = bytearray(card_bytes)
        flipped[index] ^= 0x01
        try:
            parse_card(_with_card_bytes(a.card.signed_card, bytes(flipped)))
        except CardError:
            continue
        except Exception as error:
            wrong_error.append((index, repr(error)))
        else:
            accepted.append(index)
    assert accepted == []
    assert wrong_error == []


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
def test_a_self_signed_card_with_a_malformed_tls_certificate_raises_card_error(
    a: NodeIdentity,
) -> None:
    """Signed by its own key, so the check that fails is the certificate parser's."""
    outer = envelope_pb2.SignedCard.FromString(a.card.signed_card)
    card = envelope_pb2.AgencyCard.FromString(outer.card)
    der = bytearray(card.tls_certificate)
    der[_cert_version_position(a) - outer.card.index(card.tls_certificate)] ^= 0x01
    card.tls_certificate = bytes(der)
    with pytest.raises(CardError, match="malformed"):
        parse_card(sign_card(card, a.signing_key))


def test_a_flipped_signature_byte_is_refused(a: NodeIdentity) -> None:
    outer = envelope_pb2.SignedCard.FromString(a.card.signed_card)
    for index in range(len(outer.signature)):
        signature = bytearray(outer.signature)
        signature[index] ^= 0x80
        tampered = envelope_pb2.SignedCard(card=outer.card, signature=bytes(signature))
        with pytest.raises(CardError, match="not signed by its own key"):
            parse_card(tampered.SerializeToString())


def test_a_card_signed_by_another_key_is_refused(a: NodeIdentity, b: NodeIdentity) -> None:
    outer = envelope_pb2.SignedCard.FromString(a.card.signed_card)
    card = envelope_pb2.AgencyCard.FromString(outer.card)
    resigned = sign_card(card, b.signing_key)
    assert envelope_pb2.SignedCard.FromString(resigned).card == outer.card
    with pytest.raises(CardError, match="not signed by its own key"):
        parse_card(resigned)


def test_a_card_whose_fields_were_edited_and_resigned_by_another_key_is_refused(
    a: NodeIdentity, b: NodeIdentity
) -> None:
    card = envelope_pb2.AgencyCard.FromString(
        envelope_pb2.SignedCard.FromString(a.card.signed_card).card
    )
    card.endpoint = "203.0.113.9:7001"  # an attacker redirects A's traffic
    with pytest.raises(CardError, match="not signed by its own key"):
        parse_card(sign_card(card, b.signing_key))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "junk",
        "-----BEGIN LIAISON AGENCY CARD-----\n-----END LIAISON AGENCY CARD-----\n",
        "-----BEGIN LIAISON AGENCY CARD-----\n!!!not base64!!!\n-----END LIAISON AGENCY CARD-----",
        "-----BEGIN LIAISON AGENCY CARD-----\nQUJD\n",  # no end line
        "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n",
        "-----BEGIN LIAISON AGENCY CARD-----\nQUJ\n-----END LIAISON AGENCY CARD-----",
    ],
)
def test_dearmor_card_of_junk_raises_card_error(text: str) -> None:
    with pytest.raises(CardError):
        dearmor_card(text)


@pytest.mark.parametrize("data", [b"", b"junk", b"\xff" * 40, b"\x0a\x05hello"])
def test_parse_card_of_junk_raises_card_error(data: bytes) -> None:
    with pytest.raises(CardError):
        parse_card(data)


def test_a_truncated_card_is_refused(a: NodeIdentity) -> None:
    signed = a.card.signed_card
    for length in (1, 10, len(signed) // 2, len(signed) - 1):
        with pytest.raises(CardError):
            parse_card(signed[:length])


# Trust store -------------------------------------------------------------------


def test_trust_store_replaces_an_agencys_card(
    a: NodeIdentity, b: NodeIdentity, b_impostor: NodeIdentity
) -> None:
    trust = TrustStore.of([a.card, b.card])
    assert len(trust.cards()) == 2
    assert trust.peer(B_ID) is b.card
    assert trust.peer_by_tls_fingerprint(b.card.tls_fingerprint) is b.card
    trust.pin(b_impostor.card)
    assert len(trust.cards()) == 2
    assert trust.peer(B_ID) is b_impostor.card
    assert trust.peer_by_tls_fingerprint(b.card.tls_fingerprint) is None
    assert [card.agency_id for card in trust.cards()] == [B_ID, A_ID]
    assert trust.peer("FR.DGPN.SCCOPOL") is None


# Sealing, opening and receipts -------------------------------------------------


NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
TTL = dt.timedelta(hours=1)


def test_seal_check_open_round_trip(a: NodeIdentity, b: NodeIdentity) -> None:
    notice = complete(sample_notice("A-7", attachment=bytes(range(256)) * 8), A_ID)
    sealed = seal_notice(notice, sender=a, recipient=b.card, ttl=TTL, now=NOW)
    assert is_message_id(sealed.message_id)
    assert sealed.envelope_sha256 == hashlib.sha256(sealed.envelope).digest()
    assert sealed.content == notice.SerializeToString()
    # The ciphertext hides the notice.
    assert notice.body.encode() not in sealed.envelope
    assert b"TEST PERSON" not in sealed.envelope

    checked = check_envelope(
        sealed.envelope,
        receiver=b,
        trust=TrustStore.of([a.card]),
        authenticated_peer=A_ID,
        now=NOW + dt.timedelta(minutes=1),
        limits=EnvelopeLimits(),
    )
    assert checked.sender is a.card
    assert checked.header == sealed.header
    assert checked.envelope_sha256 == sealed.envelope_sha256
    assert checked.header.sender == A_ID
    assert checked.header.recipient == B_ID
    assert checked.header.created_at.ToDatetime(tzinfo=dt.UTC) == NOW
    assert checked.header.expires_at.ToDatetime(tzinfo=dt.UTC) == NOW + TTL

    opened = open_checked(checked, receiver=b)
    assert opened.notice == notice
    assert opened.content == sealed.content


def test_only_the_recipient_can_open(
    a: NodeIdentity, b: NodeIdentity, b_impostor: NodeIdentity
) -> None:
    notice = complete(sample_notice(), A_ID)
    sealed = seal_notice(notice, sender=a, recipient=b.card, ttl=TTL, now=NOW)
    checked = check_envelope(
        sealed.envelope,
        receiver=b_impostor,
        trust=TrustStore.of([a.card]),
        authenticated_peer=A_ID,
        now=NOW,
        limits=EnvelopeLimits(),
    )
    with pytest.raises(EnvelopeRejected) as caught:
        open_checked(checked, receiver=b_impostor)
    assert caught.value.reason == envelope_pb2.REJECT_REASON_UNKNOWN_ENCRYPTION_KEY


@pytest.fixture(scope="module")
def receipted(a: NodeIdentity, b: NodeIdentity) -> tuple[str, bytes, bytes]:
    """(message id, envelope SHA-256, signed receipt) for one envelope from a to b."""
    sealed = seal_notice(complete(sample_notice(), A_ID), sender=a, recipient=b.card, ttl=TTL)
    checked = check_envelope(
        sealed.envelope,
        receiver=b,
        trust=TrustStore.of([a.card]),
        authenticated_peer=A_ID,
        now=dt.datetime.now(dt.UTC),
        limits=EnvelopeLimits(),
    )
    open_checked(checked, receiver=b)
    receipt = issue_receipt(
        receiver=b,
        message_id=checked.header.message_id,
        envelope_sha256=checked.envelope_sha256,
        sender=checked.header.sender,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
        now=NOW,
    )
    return sealed.message_id, sealed.envelope_sha256, receipt


def test_verify_receipt_accepts_the_receivers_receipt(
    receipted: tuple[str, bytes, bytes], b: NodeIdentity
) -> None:
    message_id, digest, signed = receipted
    receipt = verify_receipt(
        signed, issuer=b.card, message_id=message_id, sender=A_ID, envelope_sha256=digest
    )
    assert receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
    assert receipt.receiver == B_ID
    assert receipt.received_at.ToDatetime(tzinfo=dt.UTC) == NOW


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("issuer-key", "signature of DE.BPOL.LO-RABAT fails"),
        ("issuer-agency", "signature of MA.DGSN.CCPI fails"),
        ("message-id", "names another message id than"),
        ("digest", "other envelope bytes"),
        ("sender", "names another sender than"),
        ("garbage", "does not parse"),
    ],
)
def test_verify_receipt_refuses(
    receipted: tuple[str, bytes, bytes],
    a: NodeIdentity,
    b: NodeIdentity,
    b_impostor: NodeIdentity,
    change: str,
    match: str,
) -> None:
    message_id, digest, signed = receipted
    kwargs = {
        "issuer": b.card,
        "message_id": message_id,
        "sender": A_ID,
        "envelope_sha256": digest,
    }
    if change == "issuer-key":
        kwargs["issuer"] = b_impostor.card  # same agency id, other key
    elif change == "issuer-agency":
        kwargs["issuer"] = a.card
    elif change == "message-id":
        kwargs["message_id"] = new_message_id()
    elif change == "digest":
        kwargs["envelope_sha256"] = hashlib.sha256(b"other envelope").digest()
    elif change == "sender":
        kwargs["sender"] = "FR.DGPN.SCCOPOL"
    elif change == "garbage":
        signed = b"\xff\xff\xff"
    with pytest.raises(ReceiptError, match=match):
        verify_receipt(signed, **kwargs)  # type: ignore[arg-type]


def test_seal_notice_refuses_an_invalid_notice(a: NodeIdentity, b: NodeIdentity) -> None:
    notice = complete(sample_notice(), A_ID)
    notice.subject = "   "
    with pytest.raises(ValueError, match="subject is empty"):
        seal_notice(notice, sender=a, recipient=b.card, ttl=TTL)
    unfinished = sample_notice()  # no originator agency, no created time
    with pytest.raises(ValueError, match="originator agency id") as caught:
        seal_notice(unfinished, sender=a, recipient=b.card, ttl=TTL)
    assert "created time is missing" in str(caught.value)


def test_notice_problems_name_positions_never_values() -> None:
    notice = complete(sample_notice(), A_ID)
    notice.attachments.add(
        name="SECRET-ATTACHMENT-NAME.pdf",
        media_type="application/pdf",
        content=b"SECRET-ATTACHMENT-CONTENT",
        sha256=hashlib.sha256(b"something else").digest(),
    )
    notice.attachments.add(name="", content=b"", sha256=hashlib.sha256(b"").digest())
    notice.references.extend(
        [
            "SECRET-REFERENCE-VALUE",
            "01A22488-44CA-7885-9083-B9635C2E4917",
            "01a22488-44ca-7885-9083-b9635c2e4917",
        ]
    )
    notice.case_reference = "SECRET-CASE-REF-" * 10
    notice.subject = "SECRET-SUBJECT-" * 30
    notice.originator.agency_id = "secret-agency"
    problems = notice_problems(notice)
    assert problems == [
        "case reference is longer than 100 characters",
        "subject is longer than 300 characters",
        "originator agency id is missing or invalid",
        "reference 1 is not a message id",
        "reference 2 is not a message id",
        "attachment 1 does not match its SHA-256",
        "attachment 2 has no name",
    ]
    text = "; ".join(problems)
    for secret in (
        "SECRET",
        "secret",
        "01A22488",
        "b9635c2e4917",
    ):
        assert secret not in text


def test_notice_problems_of_a_valid_notice_is_empty() -> None:
    notice = complete(sample_notice(attachment=b"x"), A_ID)
    notice.references.append(new_message_id())
    assert notice_problems(notice) == []


def test_notice_problems_flags_unset_and_unknown_enums() -> None:
    notice = complete(sample_notice(), A_ID)
    notice.ClearField("category")
    notice.handling = 999  # type: ignore[assignment]
    problems = notice_problems(notice)
    assert "category is unset or unknown (0)" in problems
    assert "handling is unset or unknown (999)" in problems
    assert N.CaseNotice.FromString(notice.SerializeToString()).handling == 999
