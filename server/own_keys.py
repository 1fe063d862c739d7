"""The node's own keys while it runs: reloaded whole when the key store changes.

``liaison keys rotate`` (another process) and the node's own retirement of
old keys write a new key-store generation. The node notices by comparing the
generation's name (a cheap ``readlink``) and loads the new ``KeyRing``; the
old one stays valid for whoever holds it, so a delivery in flight finishes
with the keys it started with.
"""

from __future__ import annotations

import threading

from liaison.keys.identity import NodeIdentity
from liaison.keys.keyring import KeyRing
from liaison.server.config import NodeConfig
from liaison.server.home import NodeHome
from liaison.server.peers import PeerDirectory


class OwnKeys:
    def __init__(
        self, home: NodeHome, config: NodeConfig, peers: PeerDirectory, ring: KeyRing
    ) -> None:
        self._home = home
        self._config = config
        self._peers = peers
        self._lock = threading.Lock()
        self.ring = ring

    @property
    def current(self) -> NodeIdentity:
        return self.ring.current

    def for_peer(self, agency_id: str) -> NodeIdentity:
        """The identity ``agency_id`` can verify: the card of ours it pins, while kept."""
        return self.ring.for_sequence(self._peers.our_card(agency_id))

    @property
    def generation(self) -> str:
        return self.ring.generation

    def reload_if_changed(self) -> bool:
        """Load the key store again if its generation changed; True if it did.

        Blocking (files, scrypt is cached by the unlocker): call it from a worker thread.
        """
        with self._lock:
            if self._home.keys.generation() == self.ring.generation:
                return False
            self.ring = self._home.keyring(self._config)
            return True
