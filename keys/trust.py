"""The trust decision: which agencies this node accepts, by pinned card.

This module only answers "whom do we trust, under which keys, and has the
operator revoked that trust"; how a signature or a certificate is checked
lives in ``envelope`` and the transport.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ed25519

from liaison.keys.card import PeerCard


@dataclass
class TrustStore:
    """Pinned peer cards, looked up by agency id or by TLS certificate fingerprint.

    A revoked agency stays pinned (its connections still authenticate, so
    that its envelopes can be refused with a signed receipt), but
    ``is_revoked`` answers True for it.

    A peer that rotated its keys has, for a grace period, a *previous* card
    beside its current one: its TLS certificate still authenticates the peer,
    and its signing key still verifies envelopes and receipts signed before the
    peer learnt that we pin the new card. Everything else (where to connect,
    which key to seal to) comes from the current card.
    """

    _by_agency: dict[str, PeerCard] = field(default_factory=dict)
    _by_tls: dict[str, PeerCard] = field(default_factory=dict)
    _previous: dict[str, PeerCard] = field(default_factory=dict)
    _revoked: set[str] = field(default_factory=set)

    @classmethod
    def of(
        cls,
        cards: Iterable[PeerCard],
        *,
        revoked: Iterable[str] = (),
        previous: Mapping[str, PeerCard] | None = None,
    ) -> TrustStore:
        """Trust ``cards``; the agencies named in ``revoked`` are pinned but revoked,
        and ``previous`` maps an agency to the card it replaced, still in its grace period."""
        store = cls()
        for card in cards:
            store.pin(card, (previous or {}).get(card.agency_id))
        for agency_id in revoked:
            store.revoke(agency_id)
        return store

    def pin(self, card: PeerCard, previous: PeerCard | None = None) -> None:
        """Trust ``card`` (and ``previous``, the card it replaced, in its grace period),
        replacing whatever was pinned for the agency."""
        for old in (self._by_agency.get(card.agency_id), self._previous.pop(card.agency_id, None)):
            if old is not None:
                self._by_tls.pop(old.tls_fingerprint, None)
        if previous is not None and previous.agency_id == card.agency_id:
            self._previous[card.agency_id] = previous
            self._by_tls[previous.tls_fingerprint] = card
        self._by_agency[card.agency_id] = card
        self._by_tls[card.tls_fingerprint] = card

    def previous(self, agency_id: str) -> PeerCard | None:
        """The card ``agency_id`` replaced, while it is still trusted beside the current one."""
        return self._previous.get(agency_id)

    def signing_key(self, agency_id: str, key_id: str) -> ed25519.Ed25519PublicKey | None:
        """The pinned signing key ``key_id`` of ``agency_id``: its current card's, or its
        previous card's in the grace period; None for any other."""
        for card in (self._by_agency.get(agency_id), self._previous.get(agency_id)):
            if card is not None and card.signing_key_id == key_id:
                return card.signing_key
        return None

    def tls_certificates(self) -> list[bytes]:
        """DER of every certificate that authenticates a pinned peer, previous ones included."""
        return [card.tls_certificate for card in self.cards()] + [
            card.tls_certificate for _, card in sorted(self._previous.items())
        ]

    def revoke(self, agency_id: str) -> None:
        """Revoke a pinned agency: it stays pinned, and ``is_revoked`` says so."""
        if agency_id in self._by_agency:
            self._revoked.add(agency_id)

    def is_revoked(self, agency_id: str) -> bool:
        """True if ``agency_id`` is pinned and its operator has revoked it."""
        return agency_id in self._revoked

    def peer(self, agency_id: str) -> PeerCard | None:
        return self._by_agency.get(agency_id)

    def peer_by_tls_fingerprint(self, fingerprint: str) -> PeerCard | None:
        """The current card of the peer that ``fingerprint`` authenticates."""
        return self._by_tls.get(fingerprint)

    def cards(self) -> list[PeerCard]:
        return sorted(self._by_agency.values(), key=lambda card: card.agency_id)
