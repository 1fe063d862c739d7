"""The trust decision: which agencies this node accepts, by pinned card.

This module only answers "whom do we trust, under which keys, and has the
operator revoked that trust"; how a signature or a certificate is checked
lives in ``envelope`` and the transport.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from liaison.keys.card import PeerCard


@dataclass
class TrustStore:
    """Pinned peer cards, looked up by agency id or by TLS certificate fingerprint.

    A revoked agency stays pinned (its connections still authenticate, so
    that its envelopes can be refused with a signed receipt), but
    ``is_revoked`` answers True for it.
    """

    _by_agency: dict[str, PeerCard] = field(default_factory=dict)
    _by_tls: dict[str, PeerCard] = field(default_factory=dict)
    _revoked: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, cards: Iterable[PeerCard], *, revoked: Iterable[str] = ()) -> TrustStore:
        """Trust ``cards``; the agencies named in ``revoked`` are pinned but revoked."""
        store = cls()
        for card in cards:
            store.pin(card)
        for agency_id in revoked:
            store.revoke(agency_id)
        return store

    def pin(self, card: PeerCard) -> None:
        """Trust ``card``, replacing an earlier card of the same agency."""
        previous = self._by_agency.get(card.agency_id)
        if previous is not None:
            self._by_tls.pop(previous.tls_fingerprint, None)
        self._by_agency[card.agency_id] = card
        self._by_tls[card.tls_fingerprint] = card

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
        return self._by_tls.get(fingerprint)

    def cards(self) -> list[PeerCard]:
        return sorted(self._by_agency.values(), key=lambda card: card.agency_id)
