"""The node's view of its pinned peers, kept current with the database.

``liaison peers add`` writes to the database from another process. The node
notices by polling a cheap summary of the ``peers`` table (agency ids, TLS
fingerprints, pin times and revocation states; no card is parsed) and
re-verifies the cards only when that summary changes. Every change bumps ``version``; the peer
listener's TLS configuration is rebuilt only then, never per handshake (see
``TlsTrust``), so a flood of handshakes costs the same whatever the number
of pinned peers.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import grpc

from liaison.keys.card import PeerCard
from liaison.keys.certs import der_to_pem
from liaison.keys.trust import TrustStore
from liaison.server.store.store import PinnedPeer, PinSummary, Store

if TYPE_CHECKING:
    from liaison.server.own_keys import OwnKeys


class PeerDirectory:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._summary: PinSummary = store.pin_summary()
        self._our_cards: dict[str, int] = {}
        # When the first previous card's grace period ends: the trust changes then.
        self._grace_ends: dt.datetime | None = None
        self._trust = self._load()
        self._listeners: list[Callable[[], None]] = []
        self.version = 1

    @property
    def trust(self) -> TrustStore:
        return self._trust

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every change ``refresh`` finds, from the refreshing thread."""
        self._listeners.append(listener)

    def refresh(self) -> bool:
        """Reload the pinned cards if the ``peers`` table changed; True if it did.

        A change is a card pinned, replaced or removed, or a peer revoked or
        reinstated. Blocking (database reads): call it from a worker thread.
        """
        with self._lock:
            summary = self._store.pin_summary()
            grace_ended = self._grace_ends is not None and _now() >= self._grace_ends
            if summary == self._summary and not grace_ended:
                return False
            self._trust = self._load()
            self._summary = summary
            self.version += 1
        for listener in self._listeners:
            listener()
        return True

    def _load(self) -> TrustStore:
        peers = self._store.pinned_peers()
        now = _now()
        in_grace = [peer for peer in peers if _in_grace(peer, now)]
        self._grace_ends = min(
            (p.previous_until for p in in_grace if p.previous_until), default=None
        )
        self._our_cards = {peer.card.agency_id: peer.our_card for peer in peers}
        return TrustStore.of(
            (peer.card for peer in peers),
            revoked=(peer.card.agency_id for peer in peers if peer.revoked),
            previous={p.card.agency_id: p.previous for p in in_grace if p.previous},
        )

    def our_card(self, agency_id: str) -> int:
        """The sequence of our card that ``agency_id`` pins (0 if it is not pinned)."""
        return self._our_cards.get(agency_id, 0)

    def peer(self, agency_id: str) -> PeerCard | None:
        """The pinned card of ``agency_id``, looking in the database once if it is not known."""
        card = self._trust.peer(agency_id)
        if card is None and self.refresh():
            card = self._trust.peer(agency_id)
        return card


class TlsTrust:
    """The peer listener's TLS configuration: our certificate, the pinned ones as roots.

    gRPC calls ``fetch`` at every TLS handshake, from its own threads. It must
    return ``None`` unless the trust list changed: grpcio 1.85 crashes the
    process when a new configuration arrives under concurrent handshakes, so a
    new one is handed out once per change of the pinned set, and the per-
    handshake cost is a counter and a comparison.

    The roots are trust anchors, so a certificate *issued* by a pinned
    certificate's key passes this layer; the servicer checks that the
    presented leaf is exactly a pinned certificate (``PeerGate``).
    """

    def __init__(self, keys: OwnKeys, peers: PeerDirectory) -> None:
        self._keys = keys
        self._peers = peers
        self._lock = threading.Lock()
        self._served: tuple[int, str] = (0, "")
        self.handshakes = 0

    def credentials(self) -> grpc.ServerCredentials:
        initial = self._configuration()
        # grpc-stubs type the fetcher without the None that grpcio documents and needs.
        fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", self.fetch)
        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=True
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            self.handshakes += 1
            if (self._peers.version, self._keys.generation) == self._served:
                return None
            return self._configuration()

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        # The versions first: the trust store and key ring are replaced before the
        # versions move on, so what is read next is at least that new.
        served = (self._peers.version, self._keys.generation)
        certificates = self._peers.trust.tls_certificates()
        ours = self._keys.ring.server_tls
        self._served = served
        cert = ours.certificate_pem()
        # With no peer pinned yet, trust only ourselves: nobody else gets in.
        roots = b"".join(der_to_pem(der) for der in certificates) or cert
        return grpc.ssl_server_certificate_configuration(
            [(ours.key_pem(), cert)], root_certificates=roots
        )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _in_grace(peer: PinnedPeer, now: dt.datetime) -> bool:
    return (
        peer.previous is not None and peer.previous_until is not None and now < peer.previous_until
    )
