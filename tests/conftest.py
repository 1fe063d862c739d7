"""Real nodes for tests: each runs its own event loop in a thread, with real
mutual TLS on loopback ports and a real SQLite database in a temporary home."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from sqlalchemy import func, select

from liaison.client.api import LiaisonClient
from liaison.client.demo import free_port  # noqa: F401 - imported from here by tests
from liaison.keys.card import PeerCard
from liaison.keys.certs import der_to_pem
from liaison.keys.identity import NodeIdentity
from liaison.keys.labels import RECEIPT_SIGNATURE_LABEL, signing_input
from liaison.keys.sealed import PASSPHRASE_VARIABLE, Passphrase
from liaison.server.config import CONFIG_FILE
from liaison.server.home import NodeHome, init_home, replicate_home
from liaison.server.node import Node
from liaison.server.store.models import AuditEvent, Direction, Message
from liaison.server.store.store import MIGRATIONS, Store, sqlite_url
from liaison.v1 import envelope_pb2, peer_pb2, peer_pb2_grpc
from tests.postgres import Cluster, running_cluster, skip_or_fail

# Fixtures of homes made with the CLI (a_home, b_home) for every test module.
pytest_plugins = ["tests.cli_homes"]
START_TIMEOUT_SECONDS = 30
T = TypeVar("T")
# Every home in the tests seals its keys under this passphrase, at a cheap scrypt cost;
# the CLI, the client library and `liaison serve` subprocesses find it in the environment.
TEST_PASSPHRASE = "test passphrase, never a real one"
TEST_KDF_LOG2_N = 8
os.environ[PASSPHRASE_VARIABLE] = TEST_PASSPHRASE


def _task_stacks(loop: asyncio.AbstractEventLoop) -> str:
    """Where each of ``loop``'s tasks waits (read from another thread: for a failure's
    message only)."""
    lines = []
    for task in list(asyncio.all_tasks(loop)):
        frames = task.get_stack(limit=4)
        where = " < ".join(f"{f.f_code.co_name}:{f.f_lineno}" for f in reversed(frames))
        lines.append(f"{task.get_name()} at {where or '?'}")
    return "; ".join(sorted(lines))


class RunningNode:
    """A ``Node`` served from a background thread until ``stop``."""

    def __init__(self, home: NodeHome) -> None:
        self.home = home
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"node-{home.path.name}", daemon=True
        )
        self.node: Node | None = None

    def start(self) -> RunningNode:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_SECONDS):
            raise RuntimeError("node did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.node = Node(self.home)
            await self.node.start()
        except BaseException as error:
            self._error = error
            self._started.set()
            return
        self._started.set()
        await self._stop.wait()
        await self.node.stop()

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(START_TIMEOUT_SECONDS)
            if self._thread.is_alive():  # say what it waits on, not "home locked" later
                raise RuntimeError(
                    f"node {self.home.path.name} did not stop in {START_TIMEOUT_SECONDS} s; "
                    f"its tasks: {_task_stacks(self._loop)}"
                )

    def client(self) -> LiaisonClient:
        return LiaisonClient.from_home(self.home.path)

    def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` on the node's event loop (e.g. one of its tasks); its result."""

        async def wait() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wait(), self._loop).result(START_TIMEOUT_SECONDS)

    @property
    def identity(self) -> NodeIdentity:
        assert self.node is not None
        return self.node.identity

    @property
    def card(self) -> PeerCard:
        return self.identity.card


def free_ports(count: int) -> list[int]:
    """``count`` different ports the kernel had free on loopback: all bound at once, so
    that two calls in a row cannot return one port twice (one call after another can)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def make_home(
    root: Path, agency_id: str, *, mldsa65: bool = False, database_url: str = ""
) -> NodeHome:
    """A new home under ``root``; with ``mldsa65`` its card is also signed with ML-DSA-65;
    with ``database_url`` its database is that one, not a SQLite file in the home."""
    peer_port, api_port = free_ports(2)
    return init_home(
        root / agency_id,
        agency_id=agency_id,
        name=f"Test agency {agency_id}",
        endpoint=f"127.0.0.1:{peer_port}",
        peer_listen=f"127.0.0.1:{peer_port}",
        api_listen=f"127.0.0.1:{api_port}",
        mldsa65=mldsa65,
        database_url=database_url,
        **TEST_KEYS,
    )


TEST_KEYS: dict[str, Any] = {
    "passphrase": Passphrase(TEST_PASSPHRASE),
    "kdf_log2_n": TEST_KDF_LOG2_N,
    "credential_log2_n": TEST_KDF_LOG2_N,
}


def set_limits(home: NodeHome, **limits: float) -> None:
    """Change ``[limits]`` settings in a home's config.toml before its node starts."""
    path = home.path / CONFIG_FILE
    text = path.read_text(encoding="utf-8")
    for name, value in limits.items():
        text, found = re.subn(rf"(?m)^{name} = .*$", f"{name} = {value!r}", text)
        assert found == 1, f"no limit {name} in {path}"
    path.write_text(text, encoding="utf-8")


def pin(home: NodeHome, card: PeerCard) -> None:
    store = Store(home.database_url())
    try:
        store.pin_peer(card, actor="test", now=dt.datetime.now(dt.UTC))
    finally:
        store.close()


def pin_each_other(*homes: NodeHome) -> None:
    for home in homes:
        for other in homes:
            if other is not home:
                pin(home, other.identity().card)


class Inspector:
    """Read-only view of a node's database for assertions."""

    def __init__(self, home: NodeHome) -> None:
        self.store = Store(home.database_url())

    def count_messages(self, direction: Direction | None = None) -> int:
        with self.store.read() as session:
            query = select(func.count()).select_from(Message)
            if direction is not None:
                query = query.where(Message.direction == direction.value)
            return int(session.scalar(query) or 0)

    def last_audit_seq(self) -> int:
        with self.store.read() as session:
            return int(session.scalar(select(func.max(AuditEvent.seq))) or 0)

    def audit_since(self, seq: int) -> list[AuditEvent]:
        return self.store.audit_events(after_seq=seq)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def peer_channel(sender: NodeIdentity, receiver: PeerCard) -> grpc.Channel:
    """A real mutual-TLS channel from ``sender``'s TLS identity to ``receiver``'s peer port."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=der_to_pem(receiver.tls_certificate),
        private_key=sender.tls.key_pem(),
        certificate_chain=sender.tls.certificate_pem(),
    )
    return grpc.secure_channel(
        receiver.endpoint,
        credentials,
        options=[("grpc.ssl_target_name_override", receiver.tls_name)],
    )


def deliver_raw(channel: grpc.Channel, envelope: bytes) -> bytes:
    stub = peer_pb2_grpc.PeerExchangeStub(channel)
    return stub.Deliver(peer_pb2.DeliverRequest(envelope=envelope), timeout=30).receipt


def deliver_checked(
    channel: grpc.Channel, envelope: bytes, receiver: PeerCard
) -> envelope_pb2.Receipt:
    """Deliver ``envelope`` and return the receipt, its signature checked under ``receiver``."""
    signed = envelope_pb2.SignedReceipt.FromString(deliver_raw(channel, envelope))
    receiver.signing_key.verify(
        signed.signature, signing_input(RECEIPT_SIGNATURE_LABEL, signed.receipt)
    )
    return envelope_pb2.Receipt.FromString(signed.receipt)


@dataclass
class PeerLink:
    """A running receiving node ``b``, a pinned peer's identity ``a``, and a real
    mutual-TLS channel from ``a`` to ``b``'s peer listener."""

    a: NodeIdentity
    b: RunningNode
    channel: grpc.Channel
    inspector: Inspector

    def deliver(self, envelope: bytes) -> envelope_pb2.Receipt:
        return deliver_checked(self.channel, envelope, self.b.card)


@contextmanager
def peer_link(root: Path, sender: str, receiver: str) -> Iterator[PeerLink]:
    """Homes for ``sender`` and ``receiver`` under ``root``; the receiver pins the
    sender and runs until the block ends."""
    a_home, b_home = make_home(root, sender), make_home(root, receiver)
    pin(b_home, a_home.identity().card)
    b = RunningNode(b_home).start()
    channel = peer_channel(a_home.identity(), b.card)
    inspector = Inspector(b_home)
    try:
        yield PeerLink(a=a_home.identity(), b=b, channel=channel, inspector=inspector)
    finally:
        channel.close()
        inspector.close()
        b.stop()


@pytest.fixture(autouse=True)
def no_default_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that forgets ``--home`` must never touch the real ``~/.liaison``."""
    monkeypatch.setenv("LIAISON_HOME", str(tmp_path / "no-such-home"))


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[[NodeHome], RunningNode]]:
    running: list[RunningNode] = []

    def start(home: NodeHome) -> RunningNode:
        node = RunningNode(home).start()
        running.append(node)
        return node

    yield start
    failures = []
    for node in reversed(running):  # every one, even after one that would not stop
        try:
            node.stop()
        except RuntimeError as failure:
            failures.append(failure)
    if failures:
        raise failures[0]


@pytest.fixture(params=["sqlite", "postgresql"])
def homes(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[NodeHome, NodeHome]:
    """Two node homes (MA.DGSN.CCPI, DE.BPOL.LO-RABAT) that have pinned each other: each
    with its SQLite file, and each on a PostgreSQL database of its own."""
    urls = ["", ""]
    if request.param == "postgresql":
        cluster: Cluster = request.getfixturevalue("postgres_cluster")
        urls = [cluster.database(), cluster.database()]
    a = make_home(tmp_path, "MA.DGSN.CCPI", database_url=urls[0])
    b = make_home(tmp_path, "DE.BPOL.LO-RABAT", database_url=urls[1])
    pin_each_other(a, b)
    return a, b


@pytest.fixture
def pair(
    homes: tuple[NodeHome, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> tuple[RunningNode, RunningNode]:
    """Two running nodes that have pinned each other."""
    return node_factory(homes[0]), node_factory(homes[1])


class ServedNode:
    """``liaison serve`` in a process of its own, so that a crash is seen, not shared."""

    def __init__(self, home: NodeHome, log_path: Path) -> None:
        self.home = home
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "liaison.client.cli", "serve", "--home", str(home.path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        with LiaisonClient.from_home(home.path) as client:
            client.wait_ready(START_TIMEOUT_SECONDS)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def memory_kib(self, field: str = "VmHWM") -> int:
        """``VmHWM`` (peak resident memory) or ``VmRSS`` of the node, in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise LookupError(field)

    def cpu_seconds(self) -> float:
        """User and system CPU time the node has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(START_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[NodeHome], ServedNode]]:
    """Start ``liaison serve`` processes; stopped at the end of the test."""
    running: list[ServedNode] = []

    def start(home: NodeHome) -> ServedNode:
        node = ServedNode(home, tmp_path / f"{home.path.name}.log")
        running.append(node)
        return node

    yield start
    for node in running:
        node.stop()


def migrate_to(store: Store, revision: str) -> None:
    """Bring ``store``'s schema up or down to ``revision`` with Alembic (an older
    version's database, for the tests of upgrades)."""
    from alembic import command  # noqa: PLC0415 - only these tests need it
    from alembic.config import Config  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    current = store.schema_revision()
    ahead = current is not None and any(
        step.revision == revision
        for step in ScriptDirectory.from_config(config).iterate_revisions(current, "base")
    )
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        if ahead and revision != current:
            command.downgrade(config, revision)
        else:
            command.upgrade(config, revision)


# PostgreSQL (tests/postgres.py) -----------------------------------------------------


def replica_of(home: NodeHome, copy: Path) -> NodeHome:
    """A second replica of ``home``'s node (``replicate_home``) on free loopback ports."""
    peer, api = free_ports(2)
    replicate_home(home, copy, peer_listen=f"127.0.0.1:{peer}", api_listen=f"127.0.0.1:{api}")
    return NodeHome.unlocked(copy, TEST_KEYS["passphrase"])


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway cluster for the whole run, started by the first test that needs it."""
    skip_or_fail()
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> str:
    """A fresh, empty PostgreSQL database."""
    return postgres_cluster.database()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind the node runs on."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "node.db")
    url: str = request.getfixturevalue("postgres_url")
    return url
