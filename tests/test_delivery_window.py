"""A sender's delivery window fits a receiver's limits, and the per-peer rate is not
below the throughput a node is built for (issue 10)."""

from __future__ import annotations

import asyncio
import threading

from liaison.server.config import Limits
from liaison.server.home import NodeHome
from liaison.v1 import node_pb2
from tests.conftest import RunningNode, set_limits
from tests.notices import sample_notice

B_ID = "DE.BPOL.LO-RABAT"
WAIT = 60


def test_the_default_window_is_below_the_receivers_limits() -> None:
    """Past its HTTP/2 stream limit a receiver refuses a stream (REFUSED_STREAM), which
    a sender sees as UNAVAILABLE and takes for the peer being down; the gate refuses a
    call past peer_calls. The defaults were a window of 64 against 32 streams."""
    limits = Limits()
    assert limits.delivery_window < limits.peer_streams_per_connection
    assert limits.delivery_window < limits.peer_calls


def test_the_default_rate_admits_the_target_throughput() -> None:
    """A pinned peer's token bucket was 50 calls/s: a sender at 60 notices/s was refused
    RATE_LIMITED once its burst was spent (issue 10 aims at 500/s)."""
    limits = Limits()
    assert limits.peer_rate_per_second >= 500
    assert limits.peer_rate_burst >= limits.peer_rate_per_second


def test_the_window_holds_no_more_envelope_bytes_than_its_limit(
    homes: tuple[NodeHome, NodeHome],
) -> None:
    """A fast sender filled its window of 64 with 1 MiB envelopes while the receiver
    took them one by one: the sending node's memory grew past 300 MB (bench, 200 notices
    of 1 MiB). With a byte limit, what does not fit waits in the queue, on disk: here a
    limit below one envelope lets one through at a time."""
    a_home, b_home = homes
    set_limits(a_home, delivery_window_bytes=1)
    b = RunningNode(b_home).start()
    a = RunningNode(a_home).start()
    try:
        release = b.run(_event())
        arrived = threading.Event()
        at_once: list[int] = []
        assert b.node is not None
        receiver = b.node.receiver
        deliver = receiver.deliver

        async def held(envelope: bytes, peer: str) -> bytes:
            at_once.append(at_once[-1] + 1 if at_once else 1)
            arrived.set()
            await release.wait()
            try:
                return await deliver(envelope, peer)
            finally:
                at_once.append(at_once[-1] - 1)

        receiver.deliver = held  # type: ignore[method-assign]
        with a.client() as client:
            ids = [client.send_notice(B_ID, sample_notice(f"W-{n}")).message_id for n in range(3)]
            assert arrived.wait(WAIT)
            states = [client.get_status(m).state for m in ids]
            assert states == [
                node_pb2.MESSAGE_STATE_SENT,
                node_pb2.MESSAGE_STATE_QUEUED,
                node_pb2.MESSAGE_STATE_QUEUED,
            ]
            b.run(_set(release))
            final = {client.get_status(m, wait_seconds=WAIT).state for m in ids}
        assert final == {node_pb2.MESSAGE_STATE_DELIVERED}
        assert max(at_once) == 1
    finally:
        a.stop()
        b.stop()


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def _set(event: asyncio.Event) -> None:
    event.set()
