"""The trust decision: which agencies this node accepts, by pinned card.

This module only answers "whom do we trust, under which keys"; how a
signature or a certificate is checked lives in ``envelope`` and the transport.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from liaison.keys.card import PeerCard


@dataclass
class TrustStore:
    """Pinned peer cards, looked up by agency id or by TLS certificate fingerprint."""

    _by_agency: dict[str, PeerCard] = field(default_factory=dict)
    _by_tls: dict[str, PeerCard] = field(default_factory=dict)

    @classmethod
    def of(cls, cards: Iterable[PeerCard]) -> TrustStore:
        store = cls()
        for card in cards:
            store.pin(card)
        return store

    def pin(self, card: PeerCard) -> None:
        """Trust ``card``, replacing an earlier card of the same agency."""
        previous = self._by_agency.get(card.agency_id)
        if previous is not None:
            self._by_tls.pop(previous.tls_fingerprint, None)
        self._by_agency[card.agency_id] = card
        self._by_tls[card.tls_fingerprint] = card

    def peer(self, agency_id: str) -> PeerCard | None:
        return self._by_agency.get(agency_id)

    def peer_by_tls_fingerprint(self, fingerprint: str) -> PeerCard | None:
        return self._by_tls.get(fingerprint)

    def cards(self) -> list[PeerCard]:
        return sorted(self._by_agency.values(), key=lambda card: card.agency_id)
