"""A running node: its two listeners and the services behind them.

The peer listener (``listen.peer``) serves ``PeerExchange`` to pinned peers
only: mutual TLS whose trusted roots are exactly the pinned peers' self-signed
certificates, reloaded at each handshake. The local API (``listen.api``,
loopback by default) serves ``NodeService`` to holders of a client credential
issued by the node's local CA. Both serve gRPC health; the local API also
serves reflection.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from liaison.keys.certs import der_to_pem
from liaison.keys.identity import NodeIdentity
from liaison.server.committer import GroupCommitter
from liaison.server.config import NodeConfig
from liaison.server.delivery import Delivery
from liaison.server.exchange import Receiver
from liaison.server.home import NodeHome
from liaison.server.notices import Notices
from liaison.server.peers import PeerDirectory
from liaison.server.services import NodeServicer, PeerExchangeServicer
from liaison.server.store.store import Store
from liaison.v1 import node_pb2, node_pb2_grpc, peer_pb2, peer_pb2_grpc

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class BoundPorts:
    peer: int
    api: int


class Node:
    def __init__(self, home: NodeHome) -> None:
        self.home = home
        self.config: NodeConfig = home.config()
        self.identity: NodeIdentity = home.identity(self.config)
        self.store: Store = home.open_store(self.config)
        self.peers = PeerDirectory(self.store)
        limits = self.config.limits
        self.committer = GroupCommitter(self.store, max_batch=limits.commit_batch)
        self.receiver = Receiver(
            self.identity, self.peers, self.store, self.committer, limits.envelope()
        )
        self.delivery = Delivery(
            identity=self.identity,
            peers=self.peers,
            store=self.store,
            committer=self.committer,
            limits=limits,
        )
        self.notices = Notices(
            self.identity, self.peers, self.store, self.committer, self.delivery, limits
        )
        self._servers: list[grpc.aio.Server] = []
        self._health: list[tuple[health_aio.HealthServicer, str]] = []

    async def start(self) -> BoundPorts:
        """Start storage workers and both listeners; returns the bound ports."""
        self.committer.start()
        await self.delivery.start()
        size = self.config.limits.max_grpc_message_bytes
        options = [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
        ]

        peer_server = grpc.aio.server(options=options)
        peer_pb2_grpc.add_PeerExchangeServicer_to_server(
            PeerExchangeServicer(self.receiver), peer_server
        )
        self._add_health(
            peer_server, peer_pb2.DESCRIPTOR.services_by_name["PeerExchange"].full_name
        )
        peer_port = peer_server.add_secure_port(self.config.peer_listen, self._peer_credentials())

        api_server = grpc.aio.server(options=options)
        node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(self.notices), api_server)
        node_service = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
        self._add_health(api_server, node_service)
        reflection.enable_server_reflection(
            [
                node_service,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            api_server,
        )
        ca, cert, key = self.home.api_server_credential()
        api_port = api_server.add_secure_port(
            self.config.api_listen,
            grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            ),
        )
        for server in (peer_server, api_server):
            await server.start()
            self._servers.append(server)
        for health, service in self._health:
            for name in ("", service):
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "node %s serving peers on %s and the local API on %s",
            self.identity.agency_id,
            peer_port,
            api_port,
        )
        return BoundPorts(peer=peer_port, api=api_port)

    def _add_health(self, server: grpc.aio.Server, service: str) -> None:
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        self._health.append((health, service))
        # Synchronous set() is fine before the server runs: nobody watches yet.
        for name in ("", service):
            health._server_status[name] = health_pb2.HealthCheckResponse.SERVING

    def _peer_credentials(self) -> grpc.ServerCredentials:
        key = self.identity.tls.key_pem()
        cert = self.identity.tls.certificate_pem()

        def current() -> grpc.ServerCertificateConfiguration:
            cards = self.peers.reload().cards()
            # With no peer pinned yet, trust only ourselves: nobody else gets in.
            roots = b"".join(der_to_pem(c.tls_certificate) for c in cards) or cert
            return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=roots)

        return grpc.dynamic_ssl_server_credentials(
            current(), current, require_client_authentication=True
        )

    async def stop(self) -> None:
        """Stop accepting calls, finish the ones in flight, flush storage."""
        for health, _service in self._health:
            await health.enter_graceful_shutdown()
        await asyncio.gather(*(s.stop(SHUTDOWN_GRACE_SECONDS) for s in self._servers))
        self._servers.clear()
        await self.delivery.stop()
        await self.committer.stop()
        self.store.close()


async def serve(home: NodeHome, *, ready: asyncio.Event | None = None) -> None:
    """Run the node until SIGINT or SIGTERM."""
    node = Node(home)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await node.stop()
