"""``crypto_floor``: the cryptographic ceiling, the per-notice work of both nodes alone.

One exchange is what the real path computes for one case notice, nothing else:
the sender seals it (``seal_notice``: the notice rules, inner signature, HPKE
seal, outer signature); the receiver checks and opens it (``check_envelope`` and
``open_checked``: outer signature, HPKE open, inner signature, the notice rules)
and signs an ACCEPTED receipt (``issue_receipt``); the sender verifies that
receipt (``verify_receipt``). No I/O, no storage, no gRPC. Left out, because they
are storage rather than the exchange: sealing the content at rest on each side
and hashing the audit log.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import time
from dataclasses import dataclass

from liaison.keys.envelope import (
    EnvelopeLimits,
    OpenedNotice,
    check_envelope,
    issue_receipt,
    open_checked,
    seal_notice,
    verify_receipt,
)
from liaison.keys.identity import NodeIdentity, generate_identity
from liaison.keys.trust import TrustStore
from liaison.v1 import envelope_pb2, notice_pb2

SENDER_AGENCY, RECEIVER_AGENCY = "BENCH.SENDER", "BENCH.RECEIVER"
# A notice up to this size carries its payload as body text, a larger one as an
# attachment: case text is a few KiB, megabytes are evidence files.
BODY_MAX_BYTES = 64 * 1024
TTL = dt.timedelta(days=7)


@dataclass(frozen=True)
class FloorResult:
    """Exchanges per second of notices of ``payload_bytes``, crypto work only.

    ``per_core_per_s`` is one core doing the work of both nodes, one notice after
    another. ``per_s`` is that times ``cores``: the two nodes of a real exchange
    run on the cores side by side, and notices are independent of each other, so
    a machine doing only this work on every core completes ``cores`` times as
    many. It is a ceiling no real run reaches, not a prediction. The seconds per
    notice are one core's, split into the sender's part (seal, verify the
    receipt) and the receiver's (check, open, sign the receipt).
    """

    per_core_per_s: float
    per_s: float
    cores: int
    seconds_per_notice: float
    sender_seconds_per_notice: float
    receiver_seconds_per_notice: float
    payload_bytes: int
    notices: int


@dataclass(frozen=True)
class Pair:
    """A sender and a receiver that pin each other, in memory."""

    sender: NodeIdentity
    receiver: NodeIdentity
    receiver_trust: TrustStore

    @classmethod
    def generate(cls) -> Pair:
        """Fresh keys for both (no key derivation, no files)."""
        sender = generate_identity(SENDER_AGENCY, "Bench sender", "127.0.0.1:1")
        receiver = generate_identity(RECEIVER_AGENCY, "Bench receiver", "127.0.0.1:2")
        return cls(sender, receiver, TrustStore.of([sender.card]))


@dataclass(frozen=True)
class Exchanged:
    """One notice through the whole cryptographic path, and each side's time for it."""

    opened: OpenedNotice
    receipt: envelope_pb2.Receipt
    sender_seconds: float
    receiver_seconds: float


def bench_notice(payload_bytes: int, originator: str = SENDER_AGENCY) -> notice_pb2.CaseNotice:
    """A valid case notice of about ``payload_bytes``: that much body text up to
    ``BODY_MAX_BYTES``, above it an attachment of random bytes with its SHA-256."""
    notice = notice_pb2.CaseNotice(
        case_reference="BENCH-1",
        category=notice_pb2.CATEGORY_HUMAN_TRAFFICKING,
        priority=notice_pb2.PRIORITY_ROUTINE,
        handling=notice_pb2.TLP_AMBER,
        subject="Benchmark notice",
        originator=notice_pb2.Originator(agency_id=originator, unit="bench", officer="bench"),
    )
    notice.created_at.GetCurrentTime()
    if payload_bytes <= BODY_MAX_BYTES:
        line = "Benchmark body text, printable and of a known length.\n"
        notice.body = (line * (payload_bytes // len(line) + 1))[:payload_bytes]
    else:
        content = os.urandom(payload_bytes)
        notice.attachments.add(
            name="evidence.bin",
            media_type="application/octet-stream",
            content=content,
            sha256=hashlib.sha256(content).digest(),
        )
    return notice


def exchange_once(
    pair: Pair, notice: notice_pb2.CaseNotice, *, limits: EnvelopeLimits | None = None
) -> Exchanged:
    """Seal ``notice``, check and open it, sign and verify its receipt, as the nodes do.

    Raises what the real path raises: ``EnvelopeRejected`` on the receiver's
    side, ``ReceiptError`` on the sender's.
    """
    sender, receiver = pair.sender, pair.receiver
    started = time.perf_counter()
    sealed = seal_notice(notice, sender=sender, recipient=receiver.card, ttl=TTL)
    sealed_at = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    checked = check_envelope(
        sealed.envelope,
        receiver=receiver,
        trust=pair.receiver_trust,
        authenticated_peer=sender.agency_id,
        now=now,
        limits=limits or EnvelopeLimits(),
    )
    opened = open_checked(checked, receiver=receiver)
    signed_receipt = issue_receipt(
        receiver=receiver,
        message_id=checked.header.message_id,
        envelope_sha256=checked.envelope_sha256,
        sender=checked.header.sender,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
        now=now,
        log_index=0,
    )
    received_at = time.perf_counter()
    receipt = verify_receipt(
        signed_receipt,
        issuer=receiver.card,
        message_id=sealed.message_id,
        sender=sender.agency_id,
        envelope_sha256=sealed.envelope_sha256,
    )
    finished = time.perf_counter()
    return Exchanged(
        opened=opened,
        receipt=receipt,
        sender_seconds=(sealed_at - started) + (finished - received_at),
        receiver_seconds=received_at - sealed_at,
    )


def measure_crypto_floor(
    payload_bytes: int, *, seconds: float, notice: notice_pb2.CaseNotice | None = None
) -> FloorResult:
    """Exchange notices of ``payload_bytes`` one after another for about ``seconds``:
    ``notice`` (the very notice a benchmark sends end to end; its originator and time
    filled in as a node does) or else ``bench_notice(payload_bytes)``.

    One warm-up exchange first, then at least one measured.
    """
    pair = Pair.generate()
    if notice is None:
        notice = bench_notice(payload_bytes)
    else:
        completed = notice_pb2.CaseNotice()
        completed.CopyFrom(notice)
        completed.originator.agency_id = SENDER_AGENCY
        completed.created_at.GetCurrentTime()
        notice = completed
    exchange_once(pair, notice)
    notices, sender_total, receiver_total = 0, 0.0, 0.0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        exchanged = exchange_once(pair, notice)
        notices += 1
        sender_total += exchanged.sender_seconds
        receiver_total += exchanged.receiver_seconds
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    cores = os.cpu_count() or 1
    per_core = notices / elapsed
    return FloorResult(
        per_core_per_s=per_core,
        per_s=per_core * cores,
        cores=cores,
        seconds_per_notice=elapsed / notices,
        sender_seconds_per_notice=sender_total / notices,
        receiver_seconds_per_notice=receiver_total / notices,
        payload_bytes=payload_bytes,
        notices=notices,
    )
