"""``grpc_mtls_echo``: the transport ceiling, a bare gRPC unary echo over mutual TLS.

Two processes, as two nodes are: the server runs as
``python -m liaison.server.bench.echo --dir DIR`` and answers each call to
``/liaison.bench.Echo/Echo`` with the request's own bytes; ``measure_echo`` is the
client. Both sides use what the node's peer port uses: self-signed ECDSA P-256
certificates that each side pins (``keys.certs.self_signed_peer_certificate``),
client certificates required, and the peer listener's message size and
flow-control settings (not its stream limit: ``_listener_options`` says why).
Only the work per call is missing, so a node cannot move more envelopes of a size
per second over one connection than this moves payloads.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from liaison.keys.certs import self_signed_peer_certificate
from liaison.keys.ids import tls_name
from liaison.server.config import Limits

SERVICE = "liaison.bench.Echo"
METHOD = f"/{SERVICE}/Echo"
# The files of an echo folder: each side's key and certificate, and the bound port.
SERVER_KEY, SERVER_CERT = "server.key", "server.crt"
CLIENT_KEY, CLIENT_CERT = "client.key", "client.crt"
PORT_FILE = "port"
# The subjects of the two throwaway certificates, named like agencies as the peer port's are.
SERVER_AGENCY, CLIENT_AGENCY = "BENCH.ECHO-SERVER", "BENCH.ECHO-CLIENT"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
CALL_TIMEOUT_SECONDS = 60.0

Echo = Callable[[bytes], Awaitable[bytes]]


class EchoServerError(RuntimeError):
    """The echo server process did not start, or died before it said its port."""


@dataclass(frozen=True)
class EchoResult:
    """Echo calls of ``payload_bytes`` each, ``in_flight`` at a time over one connection.

    Latencies are of single calls as the client saw them, with the others in
    flight. CPU seconds per call are the processes' user and system time over the
    measured calls (None where ``/proc`` cannot tell the server's).
    """

    calls_per_s: float
    p50_ms: float
    p99_ms: float
    payload_bytes: int
    calls: int
    in_flight: int
    seconds: float
    server_cpu_s_per_call: float | None
    client_cpu_s_per_call: float


@dataclass(frozen=True)
class EchoServer:
    """A running echo server process."""

    pid: int
    port: int
    directory: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def write_echo_credentials(directory: Path) -> None:
    """Throwaway certificates for one echo server and one client, in ``directory``.

    Each is self-signed and trusts only the other's, as two pinned peers do.
    """
    for agency_id, key_file, cert_file in (
        (SERVER_AGENCY, SERVER_KEY, SERVER_CERT),
        (CLIENT_AGENCY, CLIENT_KEY, CLIENT_CERT),
    ):
        issued = self_signed_peer_certificate(agency_id, tls_name(agency_id))
        key_path = directory / key_file
        key_path.touch(mode=0o600)
        key_path.write_bytes(issued.key_pem())
        (directory / cert_file).write_bytes(issued.certificate_pem())


def _listener_options(limits: Limits) -> list[tuple[str, int]]:
    """The peer listener's settings that bear on throughput (``server.node``), but one.

    Not its ``grpc.max_concurrent_streams`` (``peer_streams_per_connection``, 32):
    with that setting, about 31 or more calls in flight on one connection draw
    RST_STREAM REFUSED_STREAM, which the caller sees as UNAVAILABLE (grpcio 1.85,
    checked 2026-11-29). A ceiling that fails at 32 in flight measures nothing.
    """
    return [
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", limits.max_grpc_message_bytes),
        ("grpc.max_send_message_length", limits.max_grpc_message_bytes),
        ("grpc.http2.bdp_probe", 0),
    ]


async def _echo(request: bytes, _context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve(directory: Path) -> None:
    """Serve echo calls with the credentials in ``directory`` until SIGTERM or SIGINT.

    Binds a free loopback port, then writes it to ``directory/port`` (atomically)
    and prints it as one line on stdout.
    """
    server = grpc.aio.server(options=_listener_options(Limits()))
    handler = grpc.unary_unary_rpc_method_handler(
        _echo, request_deserializer=None, response_serializer=None
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Echo": handler}),)
    )
    credentials = grpc.ssl_server_credentials(
        [((directory / SERVER_KEY).read_bytes(), (directory / SERVER_CERT).read_bytes())],
        root_certificates=(directory / CLIENT_CERT).read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    written = directory / f"{PORT_FILE}.tmp"
    written.write_text(f"{port}\n", encoding="ascii")
    written.replace(directory / PORT_FILE)
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    await stop.wait()
    await server.stop(grace=1.0)


@contextlib.asynccontextmanager
async def running_echo_server(directory: Path) -> AsyncIterator[EchoServer]:
    """An echo server process serving the credentials in ``directory``; stopped on exit.

    Raises ``EchoServerError`` if it does not say its port within
    ``START_TIMEOUT_SECONDS``.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "liaison.server.bench.echo",
        "--dir",
        str(directory),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_SECONDS)
        except TimeoutError:
            raise EchoServerError(
                f"the echo server did not start within {START_TIMEOUT_SECONDS:g} s"
            ) from None
        if not line.strip().isdigit():
            raise EchoServerError("the echo server exited before it said its port")
        yield EchoServer(process.pid, int(line), directory)
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()


def echo_channel(server: EchoServer) -> grpc.aio.Channel:
    """A channel to ``server`` with the client certificate, set up as a node's to a peer."""
    directory = server.directory
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(directory / SERVER_CERT).read_bytes(),
        private_key=(directory / CLIENT_KEY).read_bytes(),
        certificate_chain=(directory / CLIENT_CERT).read_bytes(),
    )
    size = Limits().max_grpc_message_bytes
    return grpc.aio.secure_channel(
        server.target,
        credentials,
        options=[
            ("grpc.ssl_target_name_override", tls_name(SERVER_AGENCY)),
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
        ],
    )


def echo_call(channel: grpc.aio.Channel) -> Echo:
    """The echo method on ``channel``: raw bytes in, the same bytes out."""
    method = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)

    async def echo(payload: bytes) -> bytes:
        reply: bytes = await method(payload, timeout=CALL_TIMEOUT_SECONDS)
        return reply

    return echo


async def measure_echo(
    payload_bytes: int,
    *,
    calls: int,
    in_flight: int = 32,
    workdir: Path,
    warmup: int | None = None,
) -> EchoResult:
    """Echo ``calls`` random payloads of ``payload_bytes`` through a fresh server process.

    One channel, ``in_flight`` calls at a time, after ``warmup`` calls (by default
    ``in_flight``) that open the connection and check the bytes come back. The
    credentials live in a folder under ``workdir``, removed afterwards; the
    server process has exited when this returns. Raises ``EchoServerError``, or
    ``grpc.aio.AioRpcError`` if a call fails.
    """
    if calls < 1 or in_flight < 1:
        raise ValueError("calls and in_flight must be at least 1")
    payload = os.urandom(payload_bytes)
    with tempfile.TemporaryDirectory(prefix="echo-", dir=workdir) as folder:
        directory = Path(folder)
        write_echo_credentials(directory)
        async with running_echo_server(directory) as server:
            channel = echo_channel(server)
            try:
                echo = echo_call(channel)
                for _ in range(in_flight if warmup is None else warmup):
                    if await echo(payload) != payload:
                        raise EchoServerError("the echo server answered other bytes")
                server_cpu = _cpu_seconds(server.pid)
                client_cpu = time.process_time()
                started = time.perf_counter()
                latencies = await _run_calls(echo, payload, calls, in_flight)
                seconds = time.perf_counter() - started
                client_cpu = time.process_time() - client_cpu
                server_after = _cpu_seconds(server.pid)
            finally:
                await channel.close(grace=None)
    server_cpu_per_call = (
        (server_after - server_cpu) / calls
        if server_cpu is not None and server_after is not None
        else None
    )
    latencies.sort()
    return EchoResult(
        calls_per_s=calls / seconds,
        p50_ms=_percentile(latencies, 50) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
        payload_bytes=payload_bytes,
        calls=calls,
        in_flight=in_flight,
        seconds=seconds,
        server_cpu_s_per_call=server_cpu_per_call,
        client_cpu_s_per_call=client_cpu / calls,
    )


async def _run_calls(echo: Echo, payload: bytes, calls: int, in_flight: int) -> list[float]:
    """Seconds each call took, with ``in_flight`` tasks calling until ``calls`` are done."""
    latencies: list[float] = []
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            reply = await echo(payload)
            latencies.append(time.perf_counter() - started)
            # The length only: comparing megabytes per call would load the client.
            if len(reply) != len(payload):
                raise EchoServerError("the echo server answered other bytes")

    await asyncio.gather(*(caller() for _ in range(min(in_flight, calls))))
    return latencies


def _percentile(ordered: list[float], percent: float) -> float:
    """Nearest-rank percentile of sorted values."""
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` so far; None without ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return None
    # Fields after the command name, which is in parentheses and may hold spaces:
    # the first is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m liaison.server.bench.echo",
        description="Serve the grpc_mtls_echo baseline with the credentials in a folder.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="folder of the credentials")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
