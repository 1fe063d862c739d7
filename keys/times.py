"""Valid ``google.protobuf.Timestamp`` values (PROTOCOL.md section 1), and exact
comparisons between them.

A Timestamp from a peer may hold any integers; only years 1 to 9999 with
nanos in [0, 999999999] are valid, and converting anything else raises.
A Timestamp has nanosecond resolution and a ``datetime`` microsecond
resolution, so times are compared as integers of nanoseconds, never as
datetimes: converting a Timestamp to a datetime would drop its last three
digits (a lifetime of 30 days + 1 ns would pass as 30 days).
"""

from __future__ import annotations

import datetime as dt

from google.protobuf.timestamp_pb2 import Timestamp

MIN_TIMESTAMP_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_TIMESTAMP_NANOS = 999_999_999
NANOS_PER_SECOND = 1_000_000_000
NANOS_PER_MICROSECOND = 1_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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


def timestamp_nanos(stamp: Timestamp) -> int:
    """``stamp`` as nanoseconds since the epoch, exactly; raises ``ValueError`` if not valid."""
    if not is_valid_timestamp(stamp):
        raise ValueError("not a valid Timestamp")
    return stamp.seconds * NANOS_PER_SECOND + stamp.nanos


def datetime_nanos(moment: dt.datetime) -> int:
    """An aware ``moment`` as nanoseconds since the epoch, exactly (integer arithmetic)."""
    return duration_nanos(moment - _EPOCH)


def duration_nanos(span: dt.timedelta) -> int:
    """``span`` in nanoseconds, exactly."""
    seconds = span.days * 86_400 + span.seconds
    return seconds * NANOS_PER_SECOND + span.microseconds * NANOS_PER_MICROSECOND
