"""The peer listener against hostile clients: floods before authentication,
certificates minted with a pinned key, and pinned peers that go over their
limits. Runs on its own: ``pytest tests/test_hostile_network.py -s`` also
prints the figures (memory, handshakes, latency of legitimate traffic).

Every node here is real: real mutual TLS on loopback, real SQLite, and where a
crash must be observable, ``liaison serve`` in a process of its own.
"""

from __future__ import annotations

import datetime as dt
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from liaison.client.cli import main
from liaison.keys.card import PeerCard
from liaison.keys.certs import der_to_pem
from liaison.keys.identity import NodeIdentity
from liaison.keys.ids import new_message_id
from liaison.server.config import CONFIG_FILE, ConfigError
from liaison.server.home import DATABASE_FILE, DEFAULT_API_PORT, NodeHome, init_home
from liaison.server.store.audit import AuditKind
from liaison.server.store.models import AuditEvent
from liaison.v1 import envelope_pb2, peer_pb2
from tests.conftest import (
    TEST_KEYS,
    Inspector,
    RunningNode,
    ServedNode,
    deliver_raw,
    make_home,
    peer_channel,
    pin_each_other,
    set_limits,
)
from tests.forge import Forge
from tests.hostile import (
    closed_by_server,
    handshake_flood,
    idle_connections,
    mint_certificate,
)
from tests.notices import complete, sample_notice

A_ID, B_ID, C_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT", "FR.DGPN.SCCOPOL"
DELIVER = "/liaison.v1.PeerExchange/Deliver"
WAIT_SECONDS = 30


def report(text: str) -> None:
    print(f"\n[figures] {text}")


def peer_address(home: NodeHome) -> tuple[str, int]:
    host, _, port = home.config().peer_listen.rpartition(":")
    return host, int(port)


def envelope(sender: NodeIdentity, recipient: PeerCard, **changes: object) -> bytes:
    forge = Forge(
        sender=sender,
        recipient=recipient,
        notice=complete(sample_notice(), sender.agency_id),
        now=dt.datetime.now(dt.UTC),
        message_id=new_message_id(),
    )
    return forge.but(**changes).build()


def refusals(events: list[AuditEvent]) -> list[AuditEvent]:
    return [e for e in events if e.event == AuditKind.PEER_REFUSED.value]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll an in-process condition the test cannot be told about, up to 10 s."""
    deadline = time.monotonic() + 10
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


# Floods before authentication ---------------------------------------------------


def test_a_handshake_flood_leaves_the_node_serving(
    tmp_path: Path,
    served: Callable[[NodeHome], ServedNode],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    """Parallel refused handshakes, a pinned peer's handshakes and idle connections
    (the mix that aborted `liaison serve` within seconds) leave the node alive, its
    log quiet, and a notice from a pinned peer is delivered."""
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    set_limits(b_home, handshake_timeout_seconds=2.0)
    b = served(b_home)
    address = peer_address(b_home)
    api_host, _, api_port = b_home.config().api_listen.rpartition(":")
    a = a_home.identity()
    pinned = {"cert_pem": a.tls.certificate_pem(), "key_pem": a.tls.key_pem()}

    cpu_before = b.cpu_seconds()
    refused = handshake_flood(address, count=1000, threads=2)
    cpu_per_refusal = (b.cpu_seconds() - cpu_before) / refused.attempts
    with idle_connections(address, 300) as idle, ThreadPoolExecutor(3) as pool:
        floods = [
            pool.submit(handshake_flood, address, count=3000, threads=3),
            pool.submit(handshake_flood, address, count=1000, threads=2, **pinned),
            pool.submit(handshake_flood, (api_host, int(api_port)), count=1000, threads=1),
        ]
        unauthenticated, authenticated, api = (flood.result() for flood in floods)
        # They have waited longer than the handshake deadline by now.
        still_open = sum(not closed_by_server(sock, timeout=5.0) for sock in idle[:20])

    report(
        f"refused handshakes {unauthenticated}, pinned handshakes {authenticated}, "
        f"local API {api}; node CPU per refused handshake {cpu_per_refusal * 1000:.2f} ms"
    )
    assert b.alive, f"the node died with exit code {b.process.returncode}"
    assert refused.refused == 1000
    assert unauthenticated.refused == 3000
    assert authenticated.completed == 1000
    assert api.refused == 1000
    assert still_open == 0, "idle connections outlived the handshake deadline"

    a_node = node_factory(a_home)
    with a_node.client() as client:
        sent = client.send_notice(B_ID, sample_notice(), wait_seconds=WAIT_SECONDS)
    assert sent.state == "delivered"
    assert b.alive
    log = b.log()
    assert "Handshake failed" not in log, "every refused handshake was logged"
    assert len(log.splitlines()) < 50


def test_connections_over_the_listener_cap_are_closed_at_once(
    tmp_path: Path, node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    home = make_home(tmp_path, B_ID)
    set_limits(home, peer_max_connections=2, handshake_timeout_seconds=60.0)
    node_factory(home)
    with idle_connections(peer_address(home), 2) as held:
        with idle_connections(peer_address(home), 1) as [over]:
            assert closed_by_server(over, timeout=10.0)
        assert not any(closed_by_server(sock, timeout=0.2) for sock in held)


def test_an_idle_peer_connection_is_closed(
    pair: tuple[NodeIdentity, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a, b_home = pair
    set_limits(b_home, peer_idle_seconds=0.5)
    b = node_factory(b_home)
    went_idle = threading.Event()
    with peer_channel(a, b.card) as channel:
        deliver_raw(channel, envelope(a, b.card))
        channel.subscribe(
            lambda state: went_idle.set() if state is grpc.ChannelConnectivity.IDLE else None
        )
        assert went_idle.wait(WAIT_SECONDS), "the server never closed the idle connection"


# A peer is exactly its pinned certificate ---------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> tuple[NodeIdentity, NodeHome]:
    """A's identity (not running) and B's home, pinned both ways."""
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    return a_home.identity(), b_home


def test_a_certificate_minted_with_a_pinned_key_is_refused(
    pair: tuple[NodeIdentity, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a, b_home = pair
    b = node_factory(b_home)
    cert_pem, key_pem = mint_certificate(a)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=der_to_pem(b.card.tls_certificate),
        private_key=key_pem,
        certificate_chain=cert_pem,
    )
    options = [("grpc.ssl_target_name_override", b.card.tls_name)]
    with (
        Inspector(b_home) as inspector,
        grpc.secure_channel(b.card.endpoint, credentials, options=options) as channel,
    ):
        before = inspector.last_audit_seq()
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as refused:
                deliver_raw(channel, envelope(a, b.card))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "not a pinned peer's certificate" in (refused.value.details() or "")
        events = inspector.audit_since(before)
        assert inspector.count_messages() == 0
    assert [(e.event, e.reason, e.peer) for e in events] == [
        (AuditKind.PEER_REFUSED.value, "UNPINNED_CERTIFICATE", None)
    ]


# Bounded cost per peer ----------------------------------------------------------------


def _exhausted(channel: grpc.Channel, data: bytes) -> str:
    with pytest.raises(grpc.RpcError) as refused:
        deliver_raw(channel, data)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return refused.value.details() or ""


def test_over_the_rate_limit_calls_are_refused_and_audited_once(
    pair: tuple[NodeIdentity, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a, b_home = pair
    set_limits(b_home, peer_rate_per_second=0.001, peer_rate_burst=3)
    b = node_factory(b_home)
    with Inspector(b_home) as inspector, peer_channel(a, b.card) as channel:
        before = inspector.last_audit_seq()
        for _ in range(3):
            deliver_raw(channel, envelope(a, b.card))
        for _ in range(5):
            assert "more than 0.001 envelopes per second" in _exhausted(
                channel, envelope(a, b.card)
            )
        assert inspector.count_messages() == 3
        limited = refusals(inspector.audit_since(before))
    assert [(e.reason, e.peer) for e in limited] == [("RATE_LIMITED", A_ID)]


def test_a_peer_over_its_storage_quota_is_refused_across_restarts(
    pair: tuple[NodeIdentity, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a, b_home = pair
    set_limits(b_home, peer_quota_bytes=1)
    b = node_factory(b_home)
    with Inspector(b_home) as inspector:
        before = inspector.last_audit_seq()
        with peer_channel(a, b.card) as channel:
            deliver_raw(channel, envelope(a, b.card))
            for _ in range(3):
                assert "storage quota of 1 bytes is used up" in _exhausted(
                    channel, envelope(a, b.card)
                )
        b.stop()
        restarted = node_factory(b_home)
        with peer_channel(a, restarted.card) as channel:
            assert "quota" in _exhausted(channel, envelope(a, restarted.card))
        assert inspector.count_messages() == 1
        limited = refusals(inspector.audit_since(before))
    # One burst per node run: the restarted node audits its first refusal again.
    assert [(e.reason, e.peer) for e in limited] == [("QUOTA_EXCEEDED", A_ID)] * 2


class HeldCall:
    """A Deliver call that is open but never sends its envelope, until cancelled."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._cancelled = threading.Event()
        method = channel.stream_unary(
            DELIVER,
            request_serializer=peer_pb2.DeliverRequest.SerializeToString,
            response_deserializer=peer_pb2.DeliverResponse.FromString,
        )
        self.future = method.future(self._requests(), timeout=WAIT_SECONDS)

    def _requests(self) -> Iterator[peer_pb2.DeliverRequest]:
        self._cancelled.wait(WAIT_SECONDS)
        yield from ()

    def cancel(self) -> None:
        self.future.cancel()
        self._cancelled.set()


def _separate_connection(a: NodeIdentity, card: PeerCard) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=der_to_pem(card.tls_certificate),
        private_key=a.tls.key_pem(),
        certificate_chain=a.tls.certificate_pem(),
    )
    options = [
        ("grpc.ssl_target_name_override", card.tls_name),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    return grpc.secure_channel(card.endpoint, credentials, options=options)


def test_calls_in_flight_and_connections_per_peer_are_bounded(
    pair: tuple[NodeIdentity, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a, b_home = pair
    set_limits(b_home, peer_calls=2, peer_connections=1)
    b = node_factory(b_home)
    assert b.node is not None
    gate = b.node.gate
    with (
        Inspector(b_home) as inspector,
        peer_channel(a, b.card) as channel,
        _separate_connection(a, b.card) as other,
    ):
        before = inspector.last_audit_seq()
        held = [HeldCall(channel), HeldCall(channel)]
        wait_until(lambda: gate.in_flight(A_ID) == 2, "both held calls are admitted")
        assert "more than 2 calls in flight" in _exhausted(channel, envelope(a, b.card))
        held[0].cancel()
        wait_until(lambda: gate.in_flight(A_ID) == 1, "the cancelled call has ended")
        assert "more than 1 connections" in _exhausted(other, envelope(a, b.card))
        held[1].cancel()
        wait_until(lambda: gate.in_flight(A_ID) == 0, "the cancelled call has ended")
        deliver_raw(other, envelope(a, b.card))
        assert inspector.count_messages() == 1
        limited = refusals(inspector.audit_since(before))
    assert sorted(e.reason or "" for e in limited) == ["TOO_MANY_CALLS", "TOO_MANY_CONNECTIONS"]


def test_a_call_that_never_sends_its_envelope_times_out(
    pair: tuple[NodeIdentity, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a, b_home = pair
    set_limits(b_home, peer_read_timeout_seconds=0.5)
    b = node_factory(b_home)
    with Inspector(b_home) as inspector, peer_channel(a, b.card) as channel:
        before = inspector.last_audit_seq()
        held = HeldCall(channel)
        error = held.future.exception(timeout=WAIT_SECONDS)
        held.cancel()
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "did not arrive within 0.5 s" in (error.details() or "")
        limited = refusals(inspector.audit_since(before))
    assert [(e.reason, e.peer) for e in limited] == [("READ_TIMEOUT", A_ID)]


def test_maximum_size_envelopes_from_one_peer_neither_exhaust_memory_nor_block_another(
    tmp_path: Path,
    served: Callable[[NodeHome], ServedNode],
    node_factory: Callable[[NodeHome], RunningNode],
) -> None:
    """32 concurrent 16 MiB envelopes from A keep B under 300 MB, and C's notice is
    delivered while A's are still being worked through."""
    homes = [make_home(tmp_path, agency) for agency in (A_ID, B_ID, C_ID)]
    pin_each_other(*homes)
    a_home, b_home, c_home = homes
    b = served(b_home)
    a, b_card = a_home.identity(), b_home.identity().card
    baseline = b.memory_kib("VmRSS")
    # Opened and checked in full, then refused at the inner signature: nothing is stored.
    filler = b"\0" * (16 * 1024 * 1024 - 8 * 1024)
    notice = complete(sample_notice(attachment=filler), A_ID)
    big = [envelope(a, b_card, notice=notice, inner_signature=b"\1" * 64) for _ in range(32)]
    assert all(15 * 1024 * 1024 < len(e) <= 16 * 1024 * 1024 for e in big)
    c = node_factory(c_home)
    with peer_channel(a, b_card) as channel, ThreadPoolExecutor(32) as pool:
        calls = [pool.submit(deliver_raw, channel, e) for e in big]
        started = time.monotonic()
        with c.client() as client:
            sent = client.send_notice(B_ID, sample_notice(), wait_seconds=WAIT_SECONDS)
        legit_seconds = time.monotonic() - started
        assert sent.state == "delivered"
        pending_when_delivered = sum(not call.done() for call in calls)
        receipts = [call.result() for call in calls]
    peak = b.memory_kib("VmHWM")
    report(
        f"node memory {baseline // 1024} MiB before, peak {peak // 1024} MiB with 32 "
        f"concurrent 16 MiB envelopes; another peer's notice delivered in "
        f"{legit_seconds:.2f} s with {pending_when_delivered} of them still pending"
    )
    reasons = {
        envelope_pb2.Receipt.FromString(envelope_pb2.SignedReceipt.FromString(r).receipt).reason
        for r in receipts
    }
    assert reasons == {envelope_pb2.REJECT_REASON_BAD_INNER_SIGNATURE}
    assert pending_when_delivered > 0
    assert peak < 300 * 1024
    assert b.alive


# One node per home and per port ---------------------------------------------------------


def test_a_home_serves_one_node_at_a_time(
    pair: tuple[NodeIdentity, NodeHome], node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    _a, b_home = pair
    node_factory(b_home)
    with pytest.raises(ConfigError, match="another node is already serving from"):
        RunningNode(b_home).start()


def test_a_taken_port_is_one_clear_error_naming_the_setting(
    tmp_path: Path,
    pair: tuple[NodeIdentity, NodeHome],
    node_factory: Callable[[NodeHome], RunningNode],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _a, b_home = pair
    node_factory(b_home)
    taken = b_home.config().peer_listen
    other = make_home(tmp_path / "other", C_ID)
    config = other.path / CONFIG_FILE
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(other.config().peer_listen, taken), encoding="utf-8")

    assert main(["serve", "--home", str(other.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"liaison: cannot listen on {taken}: the port is taken or the address is not this "
        "machine's; choose another with listen.peer in config.toml"
    )


def test_init_gives_a_second_node_its_own_local_api_port(tmp_path: Path) -> None:
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", DEFAULT_API_PORT))
        except OSError:
            pass  # taken by someone else already: just as good
        else:
            holder.listen()
        home = init_home(
            tmp_path / "n", agency_id=A_ID, name="A", endpoint="127.0.0.1:7443", **TEST_KEYS
        )
        api = home.config().api_listen
    assert api.startswith("127.0.0.1:")
    assert api != f"127.0.0.1:{DEFAULT_API_PORT}"
    assert (home.path / "credentials" / "admin" / "target").read_text().strip() == api


@pytest.mark.parametrize("relative", [".", CONFIG_FILE, DATABASE_FILE])
def test_serve_refuses_a_home_others_can_write(
    pair: tuple[NodeIdentity, NodeHome], relative: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _a, b_home = pair
    path = (b_home.path / relative).resolve()
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(mode | stat.S_IWGRP)

    assert main(["serve", "--home", str(b_home.path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} can be written by others" in err
    assert f"run: chmod {mode:o} {path}" in err
    assert "Traceback" not in err


def test_init_keeps_the_home_private(tmp_path: Path) -> None:
    home = make_home(tmp_path, A_ID)
    for relative, mode in (
        (".", 0o700),
        ("credentials", 0o700),
        ("credentials/admin", 0o700),
        (CONFIG_FILE, 0o600),
        (DATABASE_FILE, 0o600),
    ):
        assert stat.S_IMODE((home.path / relative).stat().st_mode) == mode, relative
