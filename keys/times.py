"""Valid ``google.protobuf.Timestamp`` values (PROTOCOL.md section 1).

A Timestamp from a peer may hold any integers; only years 1 to 9999 with
nanos in [0, 999999999] are valid, and converting anything else raises.
"""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_TIMESTAMP_NANOS = 999_999_999


def is_valid_timestamp(stamp: Timestamp) -> bool:
    return (
        MIN_TIMESTAMP_SECONDS <= stamp.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= stamp.nanos <= MAX_TIMESTAMP_NANOS
    )


def utc(stamp: Timestamp) -> dt.datetime:
    """The moment ``stamp`` names; raises ``ValueError`` if it is not valid."""
    if not is_valid_timestamp(stamp):
        raise ValueError("not a valid Timestamp")
    return stamp.ToDatetime(tzinfo=dt.UTC)
