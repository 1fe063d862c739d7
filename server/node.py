"""A running node: its two listeners and the services behind them.

The peer listener (``listen.peer``) serves ``PeerExchange`` to pinned peers
only: mutual TLS whose trusted roots are the pinned peers' self-signed
certificates (rebuilt when the pinned set changes, see ``peers.TlsTrust``),
then the ``PeerGate``, which admits a call only from exactly a pinned
certificate and within that peer's limits. The local API (``listen.api``,
loopback by default) serves ``NodeService`` to holders of a client credential
issued by the node's local CA. Both serve gRPC health; the local API also
serves reflection. Neither listener shares its port (no ``SO_REUSEPORT``), and
one home runs one node at a time (``NodeHome.lock``).
"""

from __future__ import annotations

import asyncio
import ctypes
import datetime as dt
import gc
import hashlib
import logging
import os
import re
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection

from liaison.keys.identity import NodeIdentity
from liaison.keys.storage import Row, StorageKey, Summary, seal_content_at_rest
from liaison.server.access import AccessControl
from liaison.server.checkpoints import Checkpointer, ProofDenied, Witness, prove_inclusion
from liaison.server.committer import GroupCommitter
from liaison.server.config import ConfigError, Limits, NodeConfig
from liaison.server.delivery import Delivery
from liaison.server.exchange import Receiver, utc_now
from liaison.server.feed import AuditFeed
from liaison.server.gate import Limit, PeerGate
from liaison.server.home import HomeLock, NodeHome, register_admin
from liaison.server.interceptors import ErrorInterceptor
from liaison.server.notices import Notices
from liaison.server.own_keys import OwnKeys
from liaison.server.peers import PeerDirectory, TlsTrust
from liaison.server.rotation import announce, retire_keys
from liaison.server.services import NodeServicer, PeerExchangeServicer
from liaison.server.store import audit
from liaison.server.store.audit import AuditKind
from liaison.server.store.store import ClearRow, SealedRow, Store
from liaison.v1 import node_pb2, node_pb2_grpc, notice_pb2, peer_pb2

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 5.0
# How often the node looks for newly pinned peers and ends quiet refusal bursts.
HOUSEKEEPING_SECONDS = 1.0
# A peer's refused inclusion proofs are audited at most this often (each is logged).
DENIAL_AUDIT_SECONDS = 60.0
# How often the count of TLS handshakes on the peer listener is logged (if it moved).
HANDSHAKE_REPORT_SECONDS = 60.0
# Notices stored in clear by an earlier version, sealed per transaction at start-up.
CLEAR_ROWS_BATCH = 64
CLEAR_ROWS_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class BoundPorts:
    peer: int
    api: int


class Node:
    def __init__(self, home: NodeHome) -> None:
        self.home = home
        home.check_private()
        self.config: NodeConfig = home.config()
        # The keys first: a wrong passphrase stops the node before anything else is opened.
        ring = home.keyring(self.config)
        self.store: Store = home.open_store(self.config)
        # Loaded once; a key store without one (an older home) gets one here.
        self.storage: StorageKey = home.storage_key()
        self.peers = PeerDirectory(self.store)
        # Reloaded when the key store changes (a rotation, a retired key destroyed).
        self.keys = OwnKeys(home, self.config, self.peers, ring)
        limits = self.config.limits
        self.feed = AuditFeed()
        self.committer = GroupCommitter(
            self.store, max_batch=limits.commit_batch, on_commit=self.feed.grew
        )
        self.gate = PeerGate(
            limits,
            self.peers,
            stored_bytes=self.store.stored_bytes_by_sender(),
            audit=self._audit_refusal,
        )
        self.receiver = Receiver(
            self.keys,
            self.peers,
            self.store,
            self.committer,
            limits.envelope(),
            self.storage,
            on_stored=self.gate.stored,
        )
        self.tls_trust = TlsTrust(self.keys, self.peers)
        self.delivery = Delivery(
            keys=self.keys,
            peers=self.peers,
            store=self.store,
            committer=self.committer,
            limits=limits,
            replica=replica_name(home),
        )
        self.checkpointer = Checkpointer(
            keys=self.keys,
            peers=self.peers,
            store=self.store,
            committer=self.committer,
            limits=limits,
            channel=self.delivery.open_channel,
        )
        # The local API's identities: an older home's admin credential is registered now.
        register_admin(home, self.store, now=utc_now())
        self.access = AccessControl(self.store, self.committer)
        self.witness = Witness(
            keys=self.keys, peers=self.peers, committer=self.committer, on_stored=self.gate.stored
        )
        self.notices = Notices(
            self.keys,
            self.peers,
            self.store,
            self.committer,
            self.delivery,
            limits,
            self.storage,
            disclose_reads=self.config.disclose_reads,
            feed=self.feed,
        )
        self._servers: list[grpc.aio.Server] = []
        self._health: list[tuple[health_aio.HealthServicer, str]] = []
        self._lock: HomeLock | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        # When each peer's last refused inclusion proof was audited (loop time).
        self._denials: dict[str, float] = {}
        # Seals the rows an earlier version stored in clear; done when it returns.
        self.sealing: asyncio.Task[int] | None = None
        self._last_seq = 0
        # One rotation round at a time (housekeeping, and a test calling it directly).
        self._rotation_round = asyncio.Lock()

    @property
    def identity(self) -> NodeIdentity:
        """The node's current identity (its newest card and keys)."""
        return self.keys.current

    async def start(self) -> BoundPorts:
        """Lock the home, start storage workers and both listeners; returns the bound ports.

        Raises ``ConfigError`` if another node runs from this home or a port is taken.
        """
        try:
            self._lock = self.home.lock()
            # The worker threads of every lookup and seal (asyncio.to_thread). Few: they
            # and the event loop share one interpreter lock, and every thread more is
            # CPU spent handing it over (bench/README.md: 6 threads cost a fifth more CPU
            # per notice than 2).
            asyncio.get_running_loop().set_default_executor(
                ThreadPoolExecutor(
                    self.config.limits.worker_threads, thread_name_prefix="node-worker"
                )
            )
            return await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> BoundPorts:
        self.committer.start()
        await self.delivery.start()
        limits = self.config.limits

        peer_server = grpc.aio.server(
            interceptors=[ErrorInterceptor()], options=_peer_listener_options(limits)
        )
        servicer = PeerExchangeServicer(self.receiver, self.gate, self.witness, self._prove)
        peer_server.add_generic_rpc_handlers((servicer.handler(),))
        self._add_health(
            peer_server, peer_pb2.DESCRIPTOR.services_by_name["PeerExchange"].full_name
        )
        peer_port = _bind(
            peer_server, self.config.peer_listen, "listen.peer", self.tls_trust.credentials()
        )

        api_server = grpc.aio.server(
            interceptors=[ErrorInterceptor()], options=_api_listener_options(limits)
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(self.notices, self.checkpointer, self.access), api_server
        )
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
        api_port = _bind(
            api_server,
            self.config.api_listen,
            "listen.api",
            grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=True
            ),
        )
        for server in (peer_server, api_server):
            await server.start()
            self._servers.append(server)
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        self._checkpointing = asyncio.create_task(self.checkpointer.run(), name="checkpointing")
        self.sealing = asyncio.create_task(self._seal_clear_rows(), name="seal-clear-rows")
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

    async def _audit_refusal(self, limit: Limit, agency_id: str | None, message: str) -> None:
        now = utc_now()
        await self.committer.submit(
            lambda session: audit.append(
                session,
                AuditKind.PEER_REFUSED,
                at=now,
                peer=agency_id,
                reason=limit.value,
                detail=message,
            )
        )

    async def _prove(
        self, peer: str, request: peer_pb2.InclusionRequest
    ) -> peer_pb2.InclusionResponse | ProofDenied:
        """Answer a peer's ProveInclusion from a read transaction (never on the commit
        thread); a denial is audited, at most once a minute per peer."""
        revoked = self.peers.trust.is_revoked(peer)

        def prove() -> peer_pb2.InclusionResponse | ProofDenied:
            with self.store.read() as session:
                return prove_inclusion(session, peer, request, revoked=revoked)

        answer = await asyncio.to_thread(prove)
        if isinstance(answer, ProofDenied) and answer.audit:
            now, last = asyncio.get_running_loop().time(), self._denials.get(peer)
            if last is None or now - last >= DENIAL_AUDIT_SECONDS:
                self._denials[peer] = now
                at, detail = utc_now(), answer.audit
                await self.committer.submit(
                    lambda session: audit.append(
                        session, AuditKind.ACCESS_DENIED, at=at, peer=peer, detail=detail
                    )
                )
            log.warning("peer %s: inclusion proof refused: %s", peer, answer.message)
        return answer

    async def _housekeep(self) -> None:
        """Pick up newly pinned peers and rotated keys, announce our card and retire old
        keys (``rotation``), end quiet refusal bursts, count handshakes.

        Survives any error: it is logged at once and the next round runs.
        """
        reported, reported_at = 0, asyncio.get_running_loop().time()
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                if await asyncio.to_thread(self.peers.refresh):
                    log.info("pinned peers changed: %d pinned", len(self.peers.trust.cards()))
                self.gate.end_quiet_bursts()
                await self.rotation_round()
                # Events written by another process (liaison peers, keys rotate).
                last = await asyncio.to_thread(self.store.last_audit_seq)
                if last != self._last_seq:
                    self._last_seq = last
                    self.feed.grew()
            except Exception:
                log.exception("housekeeping failed; retrying in %g s", HOUSEKEEPING_SECONDS)
            now = asyncio.get_running_loop().time()
            if now - reported_at >= HANDSHAKE_REPORT_SECONDS:
                count = self.tls_trust.handshakes
                if count != reported:
                    log.info(
                        "peer listener: %d TLS handshakes in the last %.0f s",
                        count - reported,
                        now - reported_at,
                    )
                reported, reported_at = count, now

    async def rotation_round(self, now: dt.datetime | None = None) -> None:
        """Load a new key-store generation, queue card announcements still to send,
        and retire the keys that are due (``now``: the present, unless a test moves it)."""
        async with self._rotation_round:
            await self._rotate_round(now)

    async def _rotate_round(self, now: dt.datetime | None) -> None:
        if await asyncio.to_thread(self.keys.reload_if_changed):
            log.info(
                "key store changed: card %d, %s",
                self.keys.current.sequence,
                self.keys.generation,
            )
            for card in self.peers.trust.cards():  # the queue may hold new announcements
                self.delivery.notify(card.agency_id)
        announced = await asyncio.to_thread(
            announce,
            self.keys.ring,
            self.store,
            self.storage,
            self.config.limits,
            actor="node",
        )
        for agency_id in announced:
            log.info("card %d announced to %s", self.keys.current.sequence, agency_id)
            self.delivery.notify(agency_id)
        retired = await asyncio.to_thread(
            retire_keys,
            self.home,
            self.store,
            self.keys.ring,
            self.config.limits,
            now=now or utc_now(),
        )
        if retired:
            await asyncio.to_thread(self.keys.reload_if_changed)

    async def _seal_clear_rows(self) -> int:
        """Seal, in batches, the notices an earlier version stored in clear; returns how many.

        Runs in the background from start-up; reads serve clear rows as they are
        meanwhile. A failed batch is logged (never its content) and retried after
        ``CLEAR_ROWS_RETRY_SECONDS``; a row that cannot be sealed does not stop
        the others. Ends with a checkpoint that truncates the write-ahead log, so
        the clear pages do not stay there (``secure_delete`` zeroes them in
        ``node.db``).
        """
        total, skipped = 0, set[int]()
        while True:
            try:
                rows = await asyncio.to_thread(
                    self.store.clear_rows, CLEAR_ROWS_BATCH + len(skipped)
                )
                rows = [row for row in rows if row.pk not in skipped]
                if not rows:
                    break
                sealed = await asyncio.to_thread(self._seal_rows, rows, skipped)
                total += await asyncio.to_thread(self.store.seal_clear_rows, sealed)
            except Exception as error:
                log.error(
                    "sealing notices stored in clear failed (%s); retrying in %g s",
                    type(error).__name__,
                    CLEAR_ROWS_RETRY_SECONDS,
                )
                await asyncio.sleep(CLEAR_ROWS_RETRY_SECONDS)
        if total:
            await asyncio.to_thread(self.store.checkpoint)
            log.info("sealed %d notices stored in clear by an earlier version", total)
        if skipped:
            log.error("%d notices stored in clear could not be sealed", len(skipped))
        return total

    def _seal_rows(self, rows: list[ClearRow], skipped: set[int]) -> list[SealedRow]:
        sealed = []
        for row in rows:
            try:
                notice = notice_pb2.CaseNotice.FromString(row.content)
            except DecodeError:
                log.error("stored notice %s does not parse; left as it is", row.message_id)
                skipped.add(row.pk)
                continue
            # The clear columns, if present, are what the listing showed so far.
            summary = Summary(
                subject=notice.subject or row.subject,
                case_reference=notice.case_reference or row.case_reference,
            )
            at_rest = seal_content_at_rest(
                self.storage, row.content, summary, Row(row.direction, row.sender, row.message_id)
            )
            sealed.append(
                SealedRow(
                    row.pk,
                    at_rest.content,
                    at_rest.data_key,
                    at_rest.storage_key_id,
                    at_rest.summary,
                )
            )
        return sealed

    async def stop(self) -> None:
        """Stop accepting calls, finish the ones in flight, flush storage, unlock the home."""
        for task in (self._housekeeping, self._checkpointing, self.sealing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._housekeeping = self._checkpointing = self.sealing = None
        for health, _service in self._health:
            await health.enter_graceful_shutdown()
        await asyncio.gather(*(s.stop(SHUTDOWN_GRACE_SECONDS) for s in self._servers))
        self._servers.clear()
        await self.delivery.stop()
        await self.committer.stop()
        self.store.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _common_options(limits: Limits) -> list[tuple[str, int]]:
    size = limits.max_grpc_message_bytes
    return [
        # gRPC binds with SO_REUSEPORT by default: a second node would share the port.
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout_seconds * 1000)),
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
    ]


def _peer_listener_options(limits: Limits) -> list[tuple[str, int]]:
    return [
        *_common_options(limits),
        ("grpc.max_allowed_incoming_connections", limits.peer_max_connections),
        ("grpc.max_concurrent_streams", limits.peer_streams_per_connection),
        ("grpc.max_connection_idle_ms", int(limits.peer_idle_seconds * 1000)),
        ("grpc.http2.bdp_probe", 0),
        # Keepalive both ways: the server pings too, so that a client that froze
        # without closing does not hold a connection (and its calls) forever; and it
        # accepts the peers' own keepalive pings at the rate they send them.
        ("grpc.keepalive_time_ms", int(limits.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", int(limits.keepalive_timeout_seconds * 1000)),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", int(limits.keepalive_seconds * 500)),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def _api_listener_options(limits: Limits) -> list[tuple[str, int]]:
    return _common_options(limits)


def _bind(
    server: grpc.aio.Server, address: str, setting: str, credentials: grpc.ServerCredentials
) -> int:
    try:
        return server.add_secure_port(address, credentials)
    except RuntimeError:
        raise ConfigError(
            f"cannot listen on {address}: the port is taken or the address is not this "
            f"machine's; choose another with {setting} in config.toml"
        ) from None


def _return_large_buffers_to_the_system() -> None:
    """Have glibc serve every allocation of 1 MiB or more from its own mapping.

    By default glibc raises its mmap threshold each time a large block is
    freed, after which blocks of that size come from the heap and stay with
    the process: a node that had opened a few 16 MiB envelopes kept hundreds
    of MiB it no longer used. Setting the threshold fixes it in place.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_mmap_threshold = -3
    mallopt(m_mmap_threshold, 1024 * 1024)


REPLICA_VARIABLE = "LIAISON_REPLICA"
_REPLICA_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def replica_name(home: NodeHome) -> str:
    """This replica's name in the leases it takes: ``$LIAISON_REPLICA``, else the
    machine's name and a digest of the home's path. One node runs per home at a time,
    so the name is one process's, and the same across its restarts (which queue its own
    claims again at once, not after their lease)."""
    named = os.environ.get(REPLICA_VARIABLE, "")
    if named:
        if not _REPLICA_NAME.fullmatch(named):
            raise ConfigError(
                f"{REPLICA_VARIABLE} must be 1 to 64 letters, digits and . _ : - characters"
            )
        return named
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-")[:40] or "host"
    digest = hashlib.sha256(str(home.path.resolve()).encode()).hexdigest()[:16]
    return f"{host}:{digest}"


def _keep_start_up_out_of_the_collector() -> None:
    """What the node loaded to start (modules, SQLAlchemy's tables and statements, the
    keys) lives as long as the process: it leaves the cyclic collector's passes for
    good (a move of lists, not a collection), and the collector, which ``liaison serve``
    keeps off while it loads (client/serve_command.py), runs again. Loading made the
    collector walk all of it at least once, 44-52 ms of a start-up of about one second."""
    gc.freeze()
    gc.enable()


async def serve(home: NodeHome, *, ready: asyncio.Event | None = None) -> None:
    """Run the node until SIGINT or SIGTERM."""
    _return_large_buffers_to_the_system()
    node = Node(home)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await node.start()
        _keep_start_up_out_of_the_collector()
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        await node.stop()
        gc.unfreeze()  # serve run in a process that goes on (a test) leaves nothing frozen
