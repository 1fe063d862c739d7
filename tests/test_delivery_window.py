"""A sender's delivery window fits a receiver's limits, and the per-peer rate is not
below the throughput a node is built for (issue 10)."""

from __future__ import annotations

from liaison.server.config import Limits


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
