"""The fault-injecting proxy against a tiny echo server: what passes, what stops, what closes."""

from __future__ import annotations

import contextlib
import queue
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.faults import FaultProxy

# Long enough for loopback bytes to arrive; waiting this long for nothing proves absence.
ABSENCE_SECONDS = 0.5
ARRIVAL_SECONDS = 5.0


@dataclass
class EchoServer:
    endpoint: str
    heard: queue.Queue[bytes]


@pytest.fixture
def echo_server() -> Iterator[EchoServer]:
    heard: queue.Queue[bytes] = queue.Queue()

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                heard.put(data)
                self.request.sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield EchoServer(f"127.0.0.1:{server.server_address[1]}", heard)
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_server: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo_server.endpoint) as running:
        yield running


def _connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=ARRIVAL_SECONDS)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return data


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return _receive(sock, len(data))


def _assert_silent(sock: socket.socket) -> None:
    """Nothing arrives, and the connection is not closed (that would read b"")."""
    sock.settimeout(ABSENCE_SECONDS)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.settimeout(ARRIVAL_SECONDS)


def _assert_closed(sock: socket.socket) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""


def test_bytes_pass_both_ways(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 200  # several reads and writes on each side
    with _connect(proxy) as sock:
        assert _echo(sock, b"hello") == b"hello"
        assert _echo(sock, payload) == payload
    assert proxy.endpoint == f"127.0.0.1:{proxy.port}"


def test_freeze_stops_an_open_connection_without_closing_it(
    proxy: FaultProxy, echo_server: EchoServer
) -> None:
    with _connect(proxy) as frozen:
        assert _echo(frozen, b"before") == b"before"
        assert echo_server.heard.get(timeout=ARRIVAL_SECONDS) == b"before"
        proxy.freeze()
        frozen.sendall(b"after")
        _assert_silent(frozen)
        with pytest.raises(queue.Empty):
            echo_server.heard.get(timeout=ABSENCE_SECONDS)
        with _connect(proxy) as fresh:
            assert _echo(fresh, b"fresh") == b"fresh"
        _assert_silent(frozen)


def test_held_responses_arrive_in_order_on_release(
    proxy: FaultProxy, echo_server: EchoServer
) -> None:
    with _connect(proxy) as early:
        assert _echo(early, b"warm") == b"warm"
        echo_server.heard.get(timeout=ARRIVAL_SECONDS)
        proxy.hold_responses()
        with _connect(proxy) as late:
            for sock, data in [(early, b"one"), (early, b"two"), (late, b"three")]:
                sock.sendall(data)
                assert echo_server.heard.get(timeout=ARRIVAL_SECONDS) == data
            _assert_silent(early)
            _assert_silent(late)
            proxy.release_responses()
            assert _receive(early, 6) == b"onetwo"
            assert _receive(late, 5) == b"three"
            assert _echo(early, b"free") == b"free"


def test_refuse_new_closes_new_connections_and_keeps_open_ones(proxy: FaultProxy) -> None:
    with _connect(proxy) as kept:
        assert _echo(kept, b"kept") == b"kept"
        proxy.refuse_new()
        with _connect(proxy) as refused:
            assert refused.recv(1) == b""
        assert _echo(kept, b"still") == b"still"
        proxy.refuse_new(False)
        with _connect(proxy) as accepted:
            assert _echo(accepted, b"again") == b"again"


def test_connections_counts_accepted_connections(proxy: FaultProxy) -> None:
    assert proxy.connections == 0
    assert not proxy.wait_for_connections(1, timeout=0.1)
    waiter_saw: list[bool] = []
    waiter = threading.Thread(
        target=lambda: waiter_saw.append(proxy.wait_for_connections(2, 2 * ARRIVAL_SECONDS))
    )
    waiter.start()
    with _connect(proxy), _connect(proxy):
        # Woken by the second connection, well before its own timeout.
        waiter.join(ARRIVAL_SECONDS)
        assert waiter_saw == [True]
        proxy.refuse_new()
        with _connect(proxy):
            assert proxy.wait_for_connections(3, ARRIVAL_SECONDS)
        assert proxy.connections == 3


def test_stop_closes_every_connection_and_the_listener(proxy: FaultProxy) -> None:
    with _connect(proxy) as frozen:
        assert _echo(frozen, b"a") == b"a"
        proxy.freeze()
        with _connect(proxy) as held:
            assert _echo(held, b"b") == b"b"
            proxy.hold_responses()
            held.sendall(b"c")
            proxy.stop()
            _assert_closed(frozen)
            _assert_closed(held)
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
