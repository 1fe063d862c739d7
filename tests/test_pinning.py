"""Pinning peers: no silent re-pinning, fingerprints checked or confirmed on a
terminal, and an operator's remove, revoke and reinstate, down to the
receiver's check 5a and the outbox that holds a revoked peer's notices."""

from __future__ import annotations

import datetime as dt

import pytest

from liaison.keys.envelope import EnvelopeLimits, check_envelope, seal_notice
from liaison.keys.errors import EnvelopeRejected
from liaison.keys.identity import NodeIdentity, generate_identity
from liaison.keys.trust import TrustStore
from liaison.v1 import envelope_pb2
from tests.notices import complete, sample_notice

R = envelope_pb2.RejectReason
A_ID = "MA.DGSN.CCPI"
B_ID = "DE.BPOL.LO-RABAT"
C_ID = "FR.DGPN.SCCOPOL"
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


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
