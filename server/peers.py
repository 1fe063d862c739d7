"""The node's view of its pinned peers, kept current with the database.

``liaison peers add`` writes to the database from another process. The node
reloads its trust store at every TLS handshake (the peer listener's
certificate fetcher) and when a send names a peer it does not know yet, so a
new peer needs no restart. The receive path reads the current snapshot only:
a connection exists, so its handshake already loaded its peer.
"""

from __future__ import annotations

import threading

from liaison.keys.card import PeerCard
from liaison.keys.trust import TrustStore
from liaison.server.store.store import Store


class PeerDirectory:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._trust = TrustStore.of(store.peer_cards())

    @property
    def trust(self) -> TrustStore:
        return self._trust

    def reload(self) -> TrustStore:
        """Load the pinned cards again (called from gRPC's handshake thread too)."""
        with self._lock:
            self._trust = TrustStore.of(self._store.peer_cards())
            return self._trust

    def peer(self, agency_id: str) -> PeerCard | None:
        card = self._trust.peer(agency_id)
        return card if card is not None else self.reload().peer(agency_id)
