"""Property: every parser of a peer's bytes either parses or refuses with a reason.

DeliverRequest, the sealed envelope (``check_envelope`` then ``open_checked``),
the signed content and the notice inside it, and the receipt
(``verify_receipt``) are fed random bytes, bit-flipped valid messages, and
messages whose fields are drawn by hypothesis and then correctly signed and
encrypted (with ``tests/forge.py``), so that the checks after the signatures
and the decryption run too. Each input must end as a parsed value or as the
module's documented error (``EnvelopeRejected`` with a defined reason,
``ReceiptError``, ``DecodeError`` for the gRPC request), within the deadline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import currently_in_test_context, event, example, given
from hypothesis import strategies as st

from liaison.keys.envelope import (
    EnvelopeLimits,
    OpenedNotice,
    check_envelope,
    open_checked,
    verify_receipt,
)
from liaison.keys.errors import EnvelopeRejected, ReceiptError, reason_name
from liaison.keys.identity import generate_identity
from liaison.keys.labels import RECEIPT_SIGNATURE_LABEL, signing_input
from liaison.keys.trust import TrustStore
from liaison.v1 import envelope_pb2, notice_pb2, peer_pb2
from tests.forge import CASE_NOTICE, SUITE, Forge, assemble, hpke_info
from tests.notices import complete, sample_notice
from tests.strategies import (
    agency_ids,
    bit_flips,
    budget,
    changes,
    enum_values,
    is_valid_timestamp,
    message_ids,
    nanos,
    texts,
    timestamps,
)

R = envelope_pb2.RejectReason
NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
LIMITS = EnvelopeLimits()
# One world for the module: A sends to B over a connection authenticated as A;
# C is another pinned peer; X is an agency B has never pinned.
A = generate_identity("MA.DGSN.CCPI", "Agency A", "127.0.0.1:7443")
B = generate_identity("DE.BPOL.LO-RABAT", "Agency B", "127.0.0.1:7444")
C = generate_identity("FR.DGPN.SCCOPOL", "Agency C", "127.0.0.1:7445")
X = generate_identity("XX.UNKNOWN", "Agency X", "127.0.0.1:7446")
TRUST = TrustStore.of([A.card, C.card])
NOTICE = complete(sample_notice(attachment=b"evidence"), A.agency_id)
MESSAGE_ID = "01a22488-44ca-7885-9083-b9635c2e4917"


def forge(**changes: object) -> Forge:
    return Forge(sender=A, recipient=B.card, notice=NOTICE, now=NOW).but(**changes)


VALID_ENVELOPE = forge().build()


def _count(outcome: str) -> None:
    """Outcomes shown by ``--hypothesis-show-statistics``: how deep the inputs reach."""
    if currently_in_test_context():
        event(outcome)


def receive(envelope: bytes, peer: str | None = A.agency_id) -> OpenedNotice | EnvelopeRejected:
    """B's checks in the protocol's order: the opened notice, or the refusal with its reason."""
    try:
        checked = check_envelope(
            envelope, receiver=B, trust=TRUST, authenticated_peer=peer, now=NOW, limits=LIMITS
        )
        opened = open_checked(checked, receiver=B)
    except EnvelopeRejected as rejection:
        refused = rejection
    else:
        _count("opened")
        return opened
    _count(reason_name(refused.reason))
    assert refused.reason in R.values()
    assert refused.reason != R.REJECT_REASON_UNSPECIFIED
    assert refused.detail
    return refused


# --- DeliverRequest and the envelope as bytes -----------------------------------------

NASTY_BYTES = [
    b"\x0a" + b"\xff" * 9 + b"\x01",  # length prefix of 2**63
    b"\x0a\xff\xff\xff\xff\x0f",  # length prefix of 4 GiB, no body
    b"\x0a\x7f" + b"x" * 10,  # length prefix beyond the end
    b"\x08\xff\xff",  # truncated varint
    b"\x08" + b"\xff" * 10 + b"\x01",  # eleven-byte varint
    b"\x7b" * 100_000,  # groups nested 100,000 deep, never closed
    b"\x7b" * 5_000 + b"\x7c" * 5_000,  # groups nested 5,000 deep, closed
    b"\x0a\x00\x12\x00\x1a\x00",  # every field present and empty
]


def _as_request(envelope: bytes) -> bytes:
    return peer_pb2.DeliverRequest(envelope=envelope).SerializeToString()


@given(
    st.one_of(
        st.binary(max_size=2048),
        st.sampled_from(NASTY_BYTES),
        st.sampled_from(NASTY_BYTES).map(_as_request),
        bit_flips(_as_request(VALID_ENVELOPE)),
    )
)
@example(_as_request(b"\x0a" + b"\xff" * 9 + b"\x01"))
@example(b"\x0a" + b"\xff" * 9 + b"\x01")
@example(b"\x7b" * 100_000)
@budget()
def test_a_deliver_request_parses_or_is_refused(raw: bytes) -> None:
    try:
        request = peer_pb2.DeliverRequest.FromString(raw)
    except DecodeError:
        return
    receive(request.envelope)


@given(st.one_of(st.binary(max_size=4096), st.sampled_from(NASTY_BYTES)))
@example(b"")
@example(b"\x08\xff\xff")
@example(b"\x08" + b"\xff" * 10 + b"\x01")
@example(b"\x7b" * 5_000 + b"\x7c" * 5_000)
@example(assemble(b"\x7b" * 100_000, b"", b""))
@budget()
def test_random_bytes_as_an_envelope_are_refused(envelope: bytes) -> None:
    assert isinstance(receive(envelope), EnvelopeRejected)


@given(bit_flips(VALID_ENVELOPE))
@budget()
def test_a_valid_envelope_with_bits_flipped_is_refused(envelope: bytes) -> None:
    outcome = receive(envelope)
    # An appended tail may parse as unknown fields of SealedEnvelope, which no
    # signature covers: the notice inside is then still the one A signed.
    if isinstance(outcome, OpenedNotice):
        assert outcome.content == NOTICE.SerializeToString()


def test_the_unchanged_envelope_opens() -> None:
    """The properties above are only meaningful if the world's envelope is valid."""
    opened = receive(VALID_ENVELOPE)
    assert isinstance(opened, OpenedNotice)
    assert opened.notice == NOTICE


# --- Header fields drawn, then signed and encrypted -----------------------------------

NOW_SECONDS = int(NOW.timestamp())
DAY = 86_400


@st.composite
def header_times(draw: st.DrawFn) -> tuple[object, object]:
    """(created_at, expires_at): near now with any lifetime, arbitrary, or absent."""
    near_now = st.builds(
        lambda offset, life, n1, n2: (
            (NOW_SECONDS + offset, n1),
            (NOW_SECONDS + offset + life, n2),
        ),
        st.integers(-3600, 600) | st.integers(-40 * DAY, DAY),
        st.integers(1, 30 * DAY) | st.integers(-10, 31 * DAY),
        st.just(0) | nanos,
        st.just(0) | nanos,
    )
    stamp = st.one_of(st.none(), timestamps().map(lambda t: (t.seconds, t.nanos)))
    as_sealed = ((NOW_SECONDS, 0), (NOW_SECONDS + DAY, 0))
    return draw(st.just(as_sealed) | near_now | st.tuples(stamp, stamp))


def _set_time(header: envelope_pb2.EnvelopeHeader, name: str, value: object) -> None:
    if value is None:
        header.ClearField(name)  # type: ignore[arg-type]
        return
    assert isinstance(value, tuple)
    stamp = getattr(header, name)
    stamp.seconds, stamp.nanos = value


header_fields = changes(
    {
        "version": st.one_of(st.integers(0, 3), st.integers(0, 2**32 - 1)),
        "suite": enum_values,
        "message_id": message_ids(),
        "sender": st.one_of(st.sampled_from([A, B, C, X]).map(lambda i: i.agency_id), agency_ids),
        "recipient": st.one_of(st.sampled_from([A, B, C]).map(lambda i: i.agency_id), agency_ids),
        "sender_signing_key_id": st.one_of(
            st.sampled_from([A, C]).map(lambda i: i.card.signing_key_id), st.text(max_size=40)
        ),
        "recipient_encryption_key_id": st.one_of(
            st.sampled_from([B, C]).map(lambda i: i.card.encryption_key_id), st.text(max_size=40)
        ),
        "content_type": st.one_of(st.just(CASE_NOTICE), texts),
    }
)


@given(
    fields=header_fields,
    times=header_times(),
    signer=st.sampled_from([A, C]),
    peer=st.sampled_from([A.agency_id, C.agency_id, None]),
)
@example(
    fields={}, times=((NOW_SECONDS, -1), (NOW_SECONDS + DAY, 0)), signer=A, peer="MA.DGSN.CCPI"
)
@example(fields={}, times=((NOW_SECONDS, 0), (2**63 - 1, 0)), signer=A, peer="MA.DGSN.CCPI")
@example(fields={}, times=((NOW_SECONDS, 0), None), signer=A, peer="MA.DGSN.CCPI")
@budget()
def test_a_signed_envelope_with_drawn_header_fields_opens_or_is_refused(
    fields: dict[str, object],
    times: tuple[object, object],
    signer: object,
    peer: str | None,
) -> None:
    def mutate(header: envelope_pb2.EnvelopeHeader) -> None:
        for name, value in fields.items():
            setattr(header, name, value)
        _set_time(header, "created_at", times[0])
        _set_time(header, "expires_at", times[1])

    sender = A if signer is A else C
    outcome = receive(forge(sender=sender, mutate_header=mutate).build(), peer)
    if isinstance(outcome, OpenedNotice):
        header = outcome.checked.header
        assert is_valid_timestamp(header.created_at)
        assert is_valid_timestamp(header.expires_at)
        assert header.sender == peer == sender.agency_id
        assert header.recipient == B.agency_id


# --- Signed content and notice drawn, then signed and encrypted -----------------------


@st.composite
def attachments(draw: st.DrawFn) -> notice_pb2.Attachment:
    content = draw(st.binary(max_size=64))
    digest = draw(st.one_of(st.just(hashlib.sha256(content).digest()), st.binary(max_size=40)))
    return notice_pb2.Attachment(
        name=draw(texts), media_type=draw(texts), content=content, sha256=digest
    )


notice_fields = changes(
    {
        "case_reference": texts,
        "subject": texts,
        "body": texts,
        "category": enum_values,
        "priority": enum_values,
        "handling": enum_values,
        "source_reliability": enum_values,
        "information_assessment": enum_values,
        "originator": agency_ids,
        "created_at": st.one_of(st.none(), timestamps()),
        "references": st.lists(message_ids(), max_size=4),
        "attachments": st.lists(attachments(), max_size=3),
        "subject_kind": enum_values,
    }
)


def drawn_notice(fields: dict[str, object]) -> notice_pb2.CaseNotice:
    notice = notice_pb2.CaseNotice()
    notice.CopyFrom(NOTICE)
    for name, value in fields.items():
        if name in ("source_reliability", "information_assessment"):
            setattr(notice.evaluation, name, value)
        elif name == "originator":
            notice.originator.agency_id = value  # type: ignore[assignment]
        elif name == "subject_kind":
            notice.subjects[0].kind = value  # type: ignore[assignment]
        elif name == "created_at":
            notice.ClearField("created_at")
            if value is not None:
                notice.created_at.CopyFrom(value)  # type: ignore[arg-type]
        elif name in ("references", "attachments"):
            notice.ClearField(name)  # type: ignore[arg-type]
            getattr(notice, name).extend(value)
        else:
            setattr(notice, name, value)
    return notice


def _notice_bytes(fields: dict[str, object]) -> bytes:
    return drawn_notice(fields).SerializeToString()


contents = st.one_of(
    notice_fields.map(_notice_bytes),
    st.binary(max_size=512),
    bit_flips(NOTICE.SerializeToString()),
    st.sampled_from(NASTY_BYTES),
)


def _seal_plaintext(plaintext: bytes) -> bytes:
    """An envelope whose HPKE plaintext is ``plaintext`` itself, outer layer signed by A."""
    sealer = forge()
    header = sealer.header().SerializeToString()
    ciphertext = SUITE.encrypt(plaintext, B.card.encryption_key, info=hpke_info(header))
    return assemble(header, ciphertext, sealer.sign_outer(header, ciphertext))


@given(
    content=contents,
    inner=st.none() | st.binary(min_size=1, max_size=80),
)
@example(content=NOTICE.SerializeToString(), inner=b"\x00" * 64)
@budget(0.5)
def test_signed_content_with_drawn_content_opens_or_is_refused(
    content: bytes, inner: bytes | None
) -> None:
    """``inner`` None: A signs the content; otherwise the drawn bytes are its signature."""
    outcome = receive(forge(content=content, inner_signature=inner).build())
    if inner is not None:
        assert isinstance(outcome, EnvelopeRejected)
        assert outcome.reason == R.REJECT_REASON_BAD_INNER_SIGNATURE
    if isinstance(outcome, EnvelopeRejected):
        assert outcome.reason in (
            R.REJECT_REASON_BAD_INNER_SIGNATURE,
            R.REJECT_REASON_INVALID_NOTICE,
        )
    else:
        assert outcome.content == content


@given(
    st.one_of(
        st.binary(max_size=512),
        bit_flips(
            envelope_pb2.SignedContent(
                content=NOTICE.SerializeToString(), signature=b"\x00" * 64
            ).SerializeToString()
        ),
        st.sampled_from(NASTY_BYTES),
    )
)
@example(b"\x12\x40" + b"\x00" * 64)  # a signature and no content
@budget(0.5)
def test_any_hpke_plaintext_is_refused_as_content(plaintext: bytes) -> None:
    outcome = receive(_seal_plaintext(plaintext))
    assert isinstance(outcome, EnvelopeRejected)
    if not plaintext:  # the ciphertext is then only enc and tag: too short to be an envelope
        assert outcome.reason == R.REJECT_REASON_MALFORMED_ENVELOPE
        return
    assert outcome.reason in (
        R.REJECT_REASON_MALFORMED_CONTENT,
        R.REJECT_REASON_BAD_INNER_SIGNATURE,
    )


@given(notice_fields)
@budget()
def test_a_signed_notice_with_drawn_fields_opens_or_is_refused_as_invalid(
    fields: dict[str, object],
) -> None:
    notice = drawn_notice(fields)
    outcome = receive(forge(notice=notice).build())
    if isinstance(outcome, EnvelopeRejected):
        assert outcome.reason == R.REJECT_REASON_INVALID_NOTICE
    else:
        assert outcome.notice == notice


@given(notice_fields)
@example({"created_at": Timestamp(nanos=-1)})
@budget(0.5)
def test_an_accepted_notice_holds_only_valid_times(fields: dict[str, object]) -> None:
    outcome = receive(forge(notice=drawn_notice(fields)).build())
    if isinstance(outcome, OpenedNotice):
        assert is_valid_timestamp(outcome.notice.created_at)


@contextmanager
def cpu_budget(seconds: float) -> Iterator[None]:
    """Stop the block with ``TimeoutError`` once the process has used ``seconds`` of CPU."""

    def expire(_signum: int, _frame: FrameType | None) -> None:
        raise TimeoutError(f"over the budget of {seconds} CPU-seconds")

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def test_four_million_empty_references_are_refused_within_a_second() -> None:
    notice = notice_pb2.CaseNotice()
    notice.CopyFrom(NOTICE)
    notice.references.extend([""] * 4_000_000)
    envelope = forge(notice=notice).build()
    started = time.process_time()
    with cpu_budget(1.0):
        outcome = receive(envelope)
    assert isinstance(outcome, EnvelopeRejected)
    assert outcome.reason in (R.REJECT_REASON_INVALID_NOTICE, R.REJECT_REASON_TOO_LARGE)
    assert time.process_time() - started < 1.0


# --- Receipts --------------------------------------------------------------------------

SENT_SHA256 = hashlib.sha256(VALID_ENVELOPE).digest()


def sign_receipt(receipt: envelope_pb2.Receipt, key: ed25519.Ed25519PrivateKey) -> bytes:
    body = receipt.SerializeToString()
    signature = key.sign(signing_input(RECEIPT_SIGNATURE_LABEL, body))
    return envelope_pb2.SignedReceipt(receipt=body, signature=signature).SerializeToString()


def _receipt(**changes: object) -> envelope_pb2.Receipt:
    receipt = envelope_pb2.Receipt(
        message_id=MESSAGE_ID,
        envelope_sha256=SENT_SHA256,
        sender=A.agency_id,
        receiver=B.agency_id,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
        receiver_signing_key_id=B.card.signing_key_id,
    )
    receipt.received_at.FromDatetime(NOW)
    for name, value in changes.items():
        if name == "received_at":
            receipt.ClearField("received_at")
            if value is not None:
                receipt.received_at.CopyFrom(value)  # type: ignore[arg-type]
        else:
            setattr(receipt, name, value)
    return receipt


VALID_RECEIPT = sign_receipt(_receipt(), B.signing_key)

receipt_fields = changes(
    {
        "message_id": st.one_of(st.just(""), message_ids()),
        "envelope_sha256": st.one_of(st.just(b""), st.binary(max_size=40)),
        "sender": st.one_of(st.just(""), st.just(C.agency_id), agency_ids),
        "receiver": st.one_of(st.just(A.agency_id), agency_ids),
        "received_at": st.one_of(st.none(), timestamps()),
        "status": enum_values,
        "reason": enum_values,
        "receiver_signing_key_id": st.one_of(st.just(A.card.signing_key_id), st.text(max_size=40)),
    }
)


def verify(signed: bytes) -> envelope_pb2.Receipt | ReceiptError:
    try:
        receipt = verify_receipt(
            signed,
            issuer=B.card,
            message_id=MESSAGE_ID,
            sender=A.agency_id,
            envelope_sha256=SENT_SHA256,
        )
        _count("verified")
        return receipt
    except ReceiptError as error:
        refused = error
    _count(type(refused.__cause__).__name__ if refused.__cause__ else "mismatch")
    assert str(refused)
    return refused


@given(
    st.one_of(
        st.binary(max_size=512),
        st.sampled_from(NASTY_BYTES),
        bit_flips(VALID_RECEIPT),
    )
)
@budget()
def test_receipt_bytes_verify_or_are_refused(signed: bytes) -> None:
    outcome = verify(signed)
    if isinstance(outcome, envelope_pb2.Receipt):
        assert outcome == _receipt()


@given(fields=receipt_fields, signer=st.sampled_from([B, A]))
@budget()
def test_a_signed_receipt_with_drawn_fields_verifies_or_is_refused(
    fields: dict[str, object], signer: object
) -> None:
    key = B.signing_key if signer is B else A.signing_key
    outcome = verify(sign_receipt(_receipt(**fields), key))
    if isinstance(outcome, envelope_pb2.Receipt):
        assert signer is B
        assert outcome.envelope_sha256 == SENT_SHA256
        assert outcome.receiver == B.agency_id


def test_the_unchanged_receipt_verifies() -> None:
    assert verify(VALID_RECEIPT) == _receipt()


@given(fields=receipt_fields)
@example(fields={"status": envelope_pb2.RECEIPT_STATUS_REJECTED, "reason": 17})
@budget(0.5)
def test_a_verified_receipt_names_a_defined_reason(fields: dict[str, object]) -> None:
    outcome = verify(sign_receipt(_receipt(**fields), B.signing_key))
    if isinstance(outcome, envelope_pb2.Receipt) and outcome.reason:
        reason_name(outcome.reason)


@given(fields=receipt_fields)
@example(fields={"received_at": Timestamp(nanos=-1)})
@budget(0.5)
def test_a_verified_receipt_has_a_valid_received_at(fields: dict[str, object]) -> None:
    outcome = verify(sign_receipt(_receipt(**fields), B.signing_key))
    if isinstance(outcome, envelope_pb2.Receipt):
        assert is_valid_timestamp(outcome.received_at)
