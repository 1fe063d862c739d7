"""The two baselines of ``liaison bench``: the mTLS echo does real mutual TLS and
echoes, and the crypto floor does the real per-notice work. No timing is asserted."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from liaison.keys.certs import self_signed_peer_certificate
from liaison.keys.errors import EnvelopeRejected
from liaison.keys.ids import tls_name
from liaison.server.bench.echo import (
    CLIENT_AGENCY,
    PORT_FILE,
    SERVER_AGENCY,
    SERVER_CERT,
    EchoServer,
    echo_call,
    echo_channel,
    measure_echo,
    running_echo_server,
    write_echo_credentials,
)
from liaison.server.bench.floor import (
    BODY_MAX_BYTES,
    Pair,
    bench_notice,
    exchange_once,
    measure_crypto_floor,
)
from liaison.v1 import envelope_pb2


def _children() -> set[int]:
    """Processes whose parent is this one (Linux ``/proc``)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == os.getpid():
                found.add(int(entry.name))
    return found


async def _call_without(server: EchoServer, credentials: grpc.ChannelCredentials) -> None:
    options = [("grpc.ssl_target_name_override", tls_name(SERVER_AGENCY))]
    async with grpc.aio.secure_channel(server.target, credentials, options=options) as channel:
        await echo_call(channel)(b"hello")


def test_echo_returns_the_same_bytes_over_mutual_tls(tmp_path: Path) -> None:
    payload = os.urandom(2 * 1024 * 1024)

    async def run() -> bytes:
        write_echo_credentials(tmp_path)
        async with running_echo_server(tmp_path) as server:
            assert (tmp_path / PORT_FILE).read_text().strip() == str(server.port)
            channel = echo_channel(server)
            try:
                return await echo_call(channel)(payload)
            finally:
                await channel.close(grace=None)

    assert asyncio.run(run()) == payload


@pytest.mark.parametrize("client", ["no certificate", "an unpinned certificate"])
def test_echo_server_refuses_a_client_it_does_not_pin(tmp_path: Path, client: str) -> None:
    write_echo_credentials(tmp_path)
    roots = (tmp_path / SERVER_CERT).read_bytes()
    if client == "no certificate":
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    else:
        stranger = self_signed_peer_certificate(CLIENT_AGENCY, tls_name(CLIENT_AGENCY))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=roots,
            private_key=stranger.key_pem(),
            certificate_chain=stranger.certificate_pem(),
        )

    async def run() -> None:
        async with running_echo_server(tmp_path) as server:
            await _call_without(server, credentials)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(run())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_measure_echo_reports_a_rate_and_stops_its_server(tmp_path: Path) -> None:
    before = _children()
    result = asyncio.run(measure_echo(3 * 1024, calls=40, in_flight=8, workdir=tmp_path))
    assert result.calls_per_s > 0
    assert 0 < result.p50_ms <= result.p99_ms
    assert (result.payload_bytes, result.calls, result.in_flight) == (3 * 1024, 40, 8)
    assert result.server_cpu_s_per_call is not None
    assert result.server_cpu_s_per_call >= 0
    assert _children() <= before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("payload_bytes", [2 * 1024, BODY_MAX_BYTES + 1])
def test_one_floor_exchange_opens_the_notice_and_verifies_the_receipt(
    payload_bytes: int,
) -> None:
    pair = Pair.generate()
    notice = bench_notice(payload_bytes)
    assert notice.ByteSize() >= payload_bytes
    exchanged = exchange_once(pair, notice)
    assert exchanged.opened.notice == notice
    assert exchanged.receipt.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED
    assert exchanged.receipt.message_id == exchanged.opened.checked.header.message_id
    assert exchanged.receipt.receiver == pair.receiver.agency_id
    assert exchanged.sender_seconds > 0
    assert exchanged.receiver_seconds > 0


def test_floor_exchange_checks_the_sender_for_real() -> None:
    pair = Pair.generate()
    stranger = Pair.generate()
    # The receiver pins another key for the same agency id: the envelope must fail.
    impostor = Pair(stranger.sender, pair.receiver, pair.receiver_trust)
    with pytest.raises(EnvelopeRejected):
        exchange_once(impostor, bench_notice(100))


def test_crypto_floor_reports_positive_rates() -> None:
    result = measure_crypto_floor(2 * 1024, seconds=0.2)
    assert result.notices >= 1
    assert result.per_core_per_s > 0
    assert result.per_s == pytest.approx(result.per_core_per_s * result.cores)
    assert result.seconds_per_notice > 0
    assert result.sender_seconds_per_notice > 0
    assert result.receiver_seconds_per_notice > 0
