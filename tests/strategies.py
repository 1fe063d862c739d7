"""Hypothesis strategies and settings for the property tests over outside bytes.

The strategies reach past the first parse: besides random bytes they draw
field values (timestamps at and beyond the valid range, ids that are almost
right, unknown enum values) that the tests then put into correctly signed and
encrypted messages, so that the checks after the signature are exercised.

Settings: the ``ci`` profile (default) keeps each module well under a minute;
``HYPOTHESIS_PROFILE=long`` runs many more examples.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

settings.register_profile(
    "ci",
    max_examples=100,
    deadline=dt.timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=3000,
    deadline=dt.timedelta(seconds=2),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def budget(share: float = 1.0) -> settings:
    """The profile's settings with ``share`` of its examples, for costlier properties."""
    return settings(PROFILE, max_examples=max(10, int(PROFILE.max_examples * share)))


# The valid range of google.protobuf.Timestamp (years 1 to 9999), PROTOCOL.md section 1.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
MAX_NANOS = 999_999_999
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


def is_valid_timestamp(stamp: Timestamp) -> bool:
    return MIN_SECONDS <= stamp.seconds <= MAX_SECONDS and 0 <= stamp.nanos <= MAX_NANOS


nanos = st.one_of(
    st.integers(0, MAX_NANOS),
    st.sampled_from([0, MAX_NANOS, -1, MAX_NANOS + 1, *INT32]),
    st.integers(*INT32),
)
seconds = st.one_of(
    st.integers(MIN_SECONDS, MAX_SECONDS),
    st.sampled_from([0, MIN_SECONDS, MAX_SECONDS, MIN_SECONDS - 1, MAX_SECONDS + 1, *INT64]),
    st.integers(*INT64),
)


@st.composite
def timestamps(draw: st.DrawFn) -> Timestamp:
    """Any wire Timestamp: valid ones, the edges of the range and far beyond."""
    return Timestamp(seconds=draw(seconds), nanos=draw(nanos))


@st.composite
def message_ids(draw: st.DrawFn) -> str:
    """Canonical UUIDv7s and near misses (other versions, upper case, no hyphens, junk)."""
    value = draw(st.uuids(allow_nil=True))
    text = str(value)
    canonical_v7 = f"{text[:14]}7{text[15:19]}{'89ab'[value.int >> 60 & 3]}{text[20:]}"
    valid = st.just(canonical_v7)
    return draw(
        valid
        | st.one_of(
            st.just(text),
            st.just(canonical_v7.upper()),
            st.just(canonical_v7.replace("-", "")),
            st.just("{" + canonical_v7 + "}"),
            st.text(max_size=40),
        )
    )


agency_ids = st.one_of(
    st.from_regex(r"[A-Z0-9]{1,8}([.-][A-Z0-9]{1,8}){0,3}", fullmatch=True),
    st.text(max_size=70),
    st.text(alphabet="A.-z0\x00", max_size=70),
)

# Values of enum fields: the defined ones and any other int32 (proto3 enums are open).
enum_values = st.one_of(st.integers(0, 16), st.integers(*INT32))

# Short free text, including controls, bidi marks and whitespace-only strings.
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=" \t\n\x1b\x07\x85\u202e\u3000", max_size=8),
    st.text(min_size=290, max_size=320),
)


@st.composite
def changes(
    draw: st.DrawFn, fields: Mapping[str, SearchStrategy[object]], most: int = 3
) -> dict[str, object]:
    """Drawn values for a few of ``fields`` (the others keep their valid value).

    Changing few fields at a time keeps most inputs past the first check they break.
    """
    names = draw(st.lists(st.sampled_from(sorted(fields)), max_size=most, unique=True))
    return {name: draw(fields[name]) for name in names}


@st.composite
def bit_flips(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with one to a few bits flipped, or truncated, or extended."""
    if not data:
        return draw(st.binary(min_size=1, max_size=8))
    buffer = bytearray(data)
    kind = draw(st.sampled_from(["flip", "truncate", "extend"]))
    if kind == "truncate":
        return bytes(buffer[: draw(st.integers(0, len(buffer) - 1))])
    if kind == "extend":
        return bytes(buffer) + draw(st.binary(min_size=1, max_size=16))
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(buffer) - 1))
        buffer[index] ^= 1 << draw(st.integers(0, 7))
    return bytes(buffer)
