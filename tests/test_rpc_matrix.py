"""Every RPC of both listeners against malformed, oversized, out-of-range and
unknown-enum requests (issue 5).

Each bad request gets its gRPC status code and a message that names the
problem (never a Python class name, a traceback or a malformed value repeated
back), and the node's database is unchanged: a digest of every row of every
table is the same before and after. Requests travel as raw bytes over generic
calls, so the matrix holds bytes no generated stub would produce. The error
paths of the error interceptor (INTERNAL, UNAVAILABLE), the size check before
sealing and the listing that loads no blobs are tested against real nodes too.

Runs on its own: ``pytest tests/test_rpc_matrix.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from sqlalchemy import event, select, text
from sqlalchemy import func as sql
from sqlalchemy import inspect as schema_of
from sqlalchemy.engine import make_url

from liaison.client.api import LiaisonClient
from liaison.client.errors import ClientError, NodeUnavailable, RequestRejected
from liaison.keys.credentials import API_SERVER_NAME, ClientCredential
from liaison.keys.envelope import seal_content
from liaison.keys.ids import new_message_id
from liaison.keys.sealed import Passphrase, Unlocker
from liaison.server.home import NodeHome
from liaison.server.notices import sealed_envelope_size
from liaison.server.store import store as store_module
from liaison.server.store.models import Direction, Message, MessageBody
from liaison.v1 import node_pb2, notice_pb2, peer_pb2
from tests.conftest import (
    TEST_PASSPHRASE,
    Inspector,
    RunningNode,
    make_home,
    peer_channel,
    pin_each_other,
    set_limits,
)
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
NODE = "/liaison.v1.NodeService/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
DELIVER = "/liaison.v1.PeerExchange/Deliver"
WAIT = 30
MIB = 1024 * 1024
MAX_ENVELOPE = 16 * MIB  # limits.max_envelope_bytes by default
MAX_GRPC_MESSAGE = MAX_ENVELOPE + 64 * 1024  # the listeners' gRPC message limit by default
UINT32_MAX = 2**32 - 1
UNKNOWN = 99
# A UUIDv7 that no node holds.
ABSENT_ID = "01a22488-44ca-7885-9083-b9635c2e4917"
# -1 as a protobuf varint: ten bytes that a uint32 field reads as 2^32 - 1.
MINUS_ONE = b"\xff" * 9 + b"\x01"
# Field 1 as a length-delimited string holding bytes that are not UTF-8.
NOT_UTF8 = b"\x0a\x02\xff\xfe"
# Field 1 claiming five bytes, then only two: no message parses from it.
TRUNCATED = b"\x0a\x05ab"
INTERNAL_ERROR = "internal error; the node's log has the details"
STORAGE_UNAVAILABLE = "storage is unavailable; retry later"
NOT_AN_ID = "message id is not a UUIDv7"
NOT_AN_AGENCY = "the recipient is not an agency id"
SEALED_SIZE = re.compile(r"the notice is ([\d,]+) bytes sealed")


# The database ------------------------------------------------------------------


def database_digest(home: NodeHome) -> str:
    """SHA-256 over every row of every table of the node's database, in a fixed order."""
    digest = hashlib.sha256()
    with Inspector(home) as inspector, inspector.store.read() as session:
        for table in sorted(schema_of(session.connection()).get_table_names()):
            rows = session.execute(text(f'SELECT * FROM "{table}"')).all()
            digest.update(f"{table}:{len(rows)}".encode())
            for row in sorted(repr(tuple(row)) for row in rows):
                digest.update(row.encode())
    return digest.hexdigest()


def database_path(home: NodeHome) -> str:
    path = make_url(home.database_url()).database
    assert path is not None
    return path


# Calls ----------------------------------------------------------------------------


def api_channel(home: NodeHome) -> grpc.Channel:
    """A mutual-TLS channel to the local API with the administrator's credential."""
    unlocker = Unlocker(Passphrase(TEST_PASSPHRASE))
    credential = ClientCredential.load(home.path / "credentials" / "admin", unlocker)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=credential.ca_certificate,
        private_key=credential.private_key,
        certificate_chain=credential.certificate,
    )
    options = [("grpc.ssl_target_name_override", API_SERVER_NAME)]
    return grpc.secure_channel(credential.target, credentials, options=options)


def call(channel: grpc.Channel, path: str, request: bytes | None) -> bytes:
    """Call ``path`` with ``request`` as raw bytes; ``None`` half-closes without a request."""
    raw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    if request is None:
        answer = channel.stream_unary(path, **raw)(iter(()), timeout=WAIT)
    else:
        answer = channel.unary_unary(path, **raw)(request, timeout=WAIT)
    assert isinstance(answer, bytes)
    return answer


def refusal(channel: grpc.Channel, path: str, request: bytes | None) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call(channel, path, request)
    return refused.value.code().name, refused.value.details() or ""


def assert_names_no_python(message: str) -> None:
    assert "<class" not in message
    assert "Traceback" not in message
    assert "Unexpected" not in message
    assert not re.search(r"\b[A-Z][a-z]+(?:[A-Z][a-z]*)*(?:Error|Exception)\b", message), message


# Requests -------------------------------------------------------------------------


def send(
    notice: notice_pb2.CaseNotice | None = None,
    *,
    recipient: str = B_ID,
    ttl_seconds: int = 0,
    wait_seconds: int = 0,
) -> bytes:
    return node_pb2.SendNoticeRequest(
        recipient=recipient,
        notice=sample_notice() if notice is None else notice,
        ttl_seconds=ttl_seconds,
        wait_seconds=wait_seconds,
    ).SerializeToString()


def notice_with(change: Callable[[notice_pb2.CaseNotice], object]) -> notice_pb2.CaseNotice:
    notice = sample_notice()
    change(notice)
    return notice


def notice_with_body(size: int) -> notice_pb2.CaseNotice:
    notice = sample_notice()
    notice.body = "x" * size
    return notice


def get_message(message_id: str) -> bytes:
    return node_pb2.GetMessageRequest(message_id=message_id).SerializeToString()


def get_status(message_id: str, wait_seconds: int = 0) -> bytes:
    request = node_pb2.GetStatusRequest(message_id=message_id, wait_seconds=wait_seconds)
    return request.SerializeToString()


def list_messages(direction: int = 0, limit: int = 0) -> bytes:
    request = node_pb2.ListMessagesRequest(direction=direction, limit=limit)  # type: ignore[arg-type]
    return request.SerializeToString()


def health(service: str) -> bytes:
    request: Any = health_pb2.HealthCheckRequest(service=service)
    return bytes(request.SerializeToString())


def deliver_of_size(size: int) -> bytes:
    return peer_pb2.DeliverRequest(envelope=b"\0" * size).SerializeToString()


@dataclass(frozen=True)
class Case:
    listener: str  # "api" or "peer"
    path: str
    request: Callable[[], bytes | None]
    code: str
    message: str  # a regular expression the message must match
    # Text of the request that must not come back in the message.
    unechoed: str | None = None


def case(
    name: str,
    path: str,
    request: Callable[[], bytes | None],
    code: str,
    message: str,
    *,
    listener: str = "api",
    unechoed: str | None = None,
) -> Any:
    return pytest.param(Case(listener, path, request, code, message, unechoed), id=name)


BAD_IDS = {
    "empty": "",
    "10k-characters": "7" * 10_000,
    "control-characters": "\x1b[2J\x1b[1;1H" + ABSENT_ID,
    "upper-case": ABSENT_ID.upper(),
    "uuid4": "9b2d3c5e-8f1a-4b6c-9d0e-1f2a3b4c5d6e",
}


def _with_id(request: Callable[[str], bytes], message_id: str) -> Callable[[], bytes]:
    return lambda: request(message_id)


MESSAGE_ID_CASES = [
    case(f"{method}-id-{name}", NODE + method, _with_id(request, bad), "INVALID_ARGUMENT",
         NOT_AN_ID, unechoed=bad or None)
    for method, request in (("GetMessage", get_message), ("GetStatus", get_status))
    for name, bad in BAD_IDS.items()
]  # fmt: skip

API_CASES = [
    *MESSAGE_ID_CASES,
    case("GetMessage-id-not-utf8", NODE + "GetMessage", lambda: NOT_UTF8, "INVALID_ARGUMENT",
         r"the request is not a liaison\.v1\.GetMessageRequest: it does not parse"),
    case("GetStatus-id-not-utf8", NODE + "GetStatus", lambda: NOT_UTF8, "INVALID_ARGUMENT",
         r"the request is not a liaison\.v1\.GetStatusRequest: it does not parse"),
    case("GetMessage-absent-id", NODE + "GetMessage", lambda: get_message(ABSENT_ID),
         "NOT_FOUND", f"no message {ABSENT_ID}"),
    case("GetStatus-wait-2^32-1", NODE + "GetStatus", lambda: get_status(ABSENT_ID, UINT32_MAX),
         "INVALID_ARGUMENT",
         r"wait_seconds is 4,294,967,295; this node waits at most 120 seconds "
         r"\(limits\.max_wait_seconds\)"),
    case("ListMessages-direction-99", NODE + "ListMessages", lambda: list_messages(UNKNOWN),
         "INVALID_ARGUMENT", r"direction 99 is unknown; use 0 \(both\), 1 \(inbound\) or 2"),
    case("ListMessages-direction-negative", NODE + "ListMessages", lambda: b"\x08" + MINUS_ONE,
         "INVALID_ARGUMENT", r"direction -1 is unknown"),
    case("ListMessages-limit-2^32-1", NODE + "ListMessages",
         lambda: list_messages(limit=UINT32_MAX), "INVALID_ARGUMENT",
         r"the limit is 4,294,967,295; this node lists at most 1,000 messages "
         r"\(limits\.list_max\)"),
    case("ListMessages-limit-negative", NODE + "ListMessages", lambda: b"\x10" + MINUS_ONE,
         "INVALID_ARGUMENT", r"the limit is 4,294,967,295"),
    case("ListMessages-limit-1001", NODE + "ListMessages", lambda: list_messages(limit=1001),
         "INVALID_ARGUMENT", r"the limit is 1,001; this node lists at most 1,000"),
    case("SendNotice-recipient-empty", NODE + "SendNotice", lambda: send(recipient=""),
         "INVALID_ARGUMENT", NOT_AN_AGENCY),
    case("SendNotice-recipient-control-characters", NODE + "SendNotice",
         lambda: send(recipient="\x1b]0;owned\x07DE.BPOL"), "INVALID_ARGUMENT", NOT_AN_AGENCY,
         unechoed="owned"),
    case("SendNotice-recipient-10k-characters", NODE + "SendNotice",
         lambda: send(recipient="D" * 10_000), "INVALID_ARGUMENT", NOT_AN_AGENCY,
         unechoed="D" * 64),
    case("SendNotice-recipient-lower-case", NODE + "SendNotice",
         lambda: send(recipient=B_ID.lower()), "INVALID_ARGUMENT", NOT_AN_AGENCY,
         unechoed=B_ID.lower()),
    case("SendNotice-recipient-not-utf8", NODE + "SendNotice", lambda: NOT_UTF8,
         "INVALID_ARGUMENT",
         r"the request is not a liaison\.v1\.SendNoticeRequest: it does not parse"),
    case("SendNotice-recipient-not-pinned", NODE + "SendNotice",
         lambda: send(recipient="FR.DGPN.SCCOPOL"), "INVALID_ARGUMENT",
         "FR.DGPN.SCCOPOL is not a pinned peer; add its card first"),
    case("SendNotice-recipient-itself", NODE + "SendNotice", lambda: send(recipient=A_ID),
         "INVALID_ARGUMENT", "not a pinned peer|does not send notices to itself"),
    case("SendNotice-category-99", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: setattr(n, "category", UNKNOWN))),
         "INVALID_ARGUMENT", r"category is unset or unknown \(99\)"),
    case("SendNotice-priority-99", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: setattr(n, "priority", UNKNOWN))),
         "INVALID_ARGUMENT", r"priority is unset or unknown \(99\)"),
    case("SendNotice-handling-99", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: setattr(n, "handling", UNKNOWN))),
         "INVALID_ARGUMENT", r"handling is unset or unknown \(99\)"),
    case("SendNotice-source-reliability-99", NODE + "SendNotice",
         lambda: send(notice_with(
             lambda n: setattr(n.evaluation, "source_reliability", UNKNOWN))),
         "INVALID_ARGUMENT", r"evaluation source reliability is unknown \(99\)"),
    case("SendNotice-information-assessment-99", NODE + "SendNotice",
         lambda: send(notice_with(
             lambda n: setattr(n.evaluation, "information_assessment", UNKNOWN))),
         "INVALID_ARGUMENT", r"evaluation information assessment is unknown \(99\)"),
    case("SendNotice-subject-kind-99", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: setattr(n.subjects[0], "kind", UNKNOWN))),
         "INVALID_ARGUMENT", r"subject 1 kind is unknown \(99\)"),
    case("SendNotice-identifier-type-99", NODE + "SendNotice",
         lambda: send(notice_with(
             lambda n: setattr(n.subjects[0].identifiers[0], "type", UNKNOWN))),
         "INVALID_ARGUMENT", r"subject 1 identifier 1 type is unknown \(99\)"),
    case("SendNotice-subject-301-characters", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: setattr(n, "subject", "s" * 301))),
         "INVALID_ARGUMENT", "subject is longer than 300 characters"),
    case("SendNotice-reference-not-an-id", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: n.references.append("\x1b[2Jnot-an-id"))),
         "INVALID_ARGUMENT", "reference 1 is not a message id", unechoed="not-an-id"),
    case("SendNotice-created-in-year-36812", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: setattr(n.created_at, "seconds", 2**40))),
         "INVALID_ARGUMENT", "created time is not a valid Timestamp"),
    case("SendNotice-101-references", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: n.references.extend([ABSENT_ID] * 101))),
         "INVALID_ARGUMENT", "more than 100 references"),
    case("SendNotice-51-identifiers", NODE + "SendNotice",
         lambda: send(notice_with(lambda n: n.subjects[0].identifiers.extend(
             [notice_pb2.Identifier(type=notice_pb2.IDENTIFIER_TYPE_IBAN, value="x")] * 51))),
         "INVALID_ARGUMENT", "more than 50 subject 1 identifiers"),
    case("SendNotice-ttl-31-days", NODE + "SendNotice", lambda: send(ttl_seconds=31 * 86400),
         "INVALID_ARGUMENT", "ttl exceeds the limit of 30 days"),
    case("SendNotice-ttl-2^32-1", NODE + "SendNotice", lambda: send(ttl_seconds=UINT32_MAX),
         "INVALID_ARGUMENT", "ttl exceeds the limit of 30 days"),
    case("SendNotice-wait-2^32-1", NODE + "SendNotice", lambda: send(wait_seconds=UINT32_MAX),
         "INVALID_ARGUMENT", r"wait_seconds is 4,294,967,295; this node waits at most 120"),
    case("SendNotice-over-max-envelope-once-sealed", NODE + "SendNotice",
         lambda: send(notice_with_body(MAX_ENVELOPE - 256)), "INVALID_ARGUMENT",
         r"the notice is 16,77\d,\d{3} bytes sealed; this node's limit is 16,777,216 bytes "
         r"\(limits\.max_envelope_bytes\)"),
    case("SendNotice-over-grpc-message-limit", NODE + "SendNotice",
         lambda: send(notice_with_body(MAX_GRPC_MESSAGE + 1)), "RESOURCE_EXHAUSTED",
         r"Received message larger than max \(\d+ vs\. 16842752\)"),
    *(
        case(f"{method}-not-a-request", NODE + method, lambda: TRUNCATED, "INVALID_ARGUMENT",
             rf"the request is not a liaison\.v1\.{method}Request: it does not parse")
        for method in ("SendNotice", "ListMessages", "GetMessage", "GetStatus")
    ),
    *(
        case(f"{method}-no-request", NODE + method, lambda: None, "INVALID_ARGUMENT",
             rf"no liaison\.v1\.{method}Request sent")
        for method in ("SendNotice", "ListMessages", "GetMessage", "GetStatus")
    ),
    case("NodeService-unknown-method", NODE + "DeleteEverything", lambda: b"",
         "UNIMPLEMENTED", "Method not found"),
]  # fmt: skip

HEALTH_CASES = [
    case(f"{listener}-Health-{name}", HEALTH_CHECK, request, code, message, listener=listener)
    for listener in ("api", "peer")
    for name, request, code, message in (
        ("unknown-service", lambda: health("liaison.v1.Nothing"), "NOT_FOUND",
         "unknown service name"),
        ("not-a-request", lambda: TRUNCATED, "INVALID_ARGUMENT",
         r"the request is not a grpc\.health\.v1\.HealthCheckRequest: it does not parse"),
        ("no-request", lambda: None, "INVALID_ARGUMENT",
         r"no grpc\.health\.v1\.HealthCheckRequest sent"),
    )
]  # fmt: skip

PEER_CASES = [
    case("Deliver-no-request", DELIVER, lambda: None, "INVALID_ARGUMENT",
         "no DeliverRequest sent", listener="peer"),
    case("Deliver-over-grpc-message-limit", DELIVER,
         lambda: deliver_of_size(MAX_GRPC_MESSAGE), "RESOURCE_EXHAUSTED",
         r"Received message larger than max \(\d+ vs\. 16842752\)", listener="peer"),
    case("PeerExchange-unknown-method", "/liaison.v1.PeerExchange/Fetch", lambda: b"",
         "UNIMPLEMENTED", "Method not found", listener="peer"),
]  # fmt: skip


@dataclass
class Listeners:
    home: NodeHome
    api: grpc.Channel
    peer: grpc.Channel


@pytest.fixture(scope="module")
def listeners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Listeners]:
    """A's node, running, with B pinned (B never runs): its local API as A's
    administrator and its peer listener as B."""
    root = tmp_path_factory.mktemp("matrix")
    a_home, b_home = make_home(root, A_ID), make_home(root, B_ID)
    pin_each_other(a_home, b_home)
    node = RunningNode(a_home).start()
    try:
        with api_channel(a_home) as api, peer_channel(b_home.identity(), node.card) as peer:
            yield Listeners(a_home, api, peer)
    finally:
        node.stop()


@pytest.mark.parametrize("bad", [*API_CASES, *HEALTH_CASES, *PEER_CASES])
def test_a_bad_request_gets_its_status_and_a_message_and_changes_nothing(
    listeners: Listeners, bad: Case
) -> None:
    channel = listeners.api if bad.listener == "api" else listeners.peer
    before = database_digest(listeners.home)
    code, message = refusal(channel, bad.path, bad.request())
    assert code == bad.code, message
    assert re.search(bad.message, message), f"{message!r} does not match {bad.message!r}"
    assert_names_no_python(message)
    assert len(message) < 300
    if bad.unechoed is not None:
        assert bad.unechoed not in message
    assert database_digest(listeners.home) == before


def test_a_good_request_on_each_listener_is_answered(listeners: Listeners) -> None:
    """The matrix's channels and encodings are sound: the same calls, well formed, succeed."""
    serving = health_pb2.HealthCheckResponse.SERVING
    for channel in (listeners.api, listeners.peer):
        answer = health_pb2.HealthCheckResponse.FromString(call(channel, HEALTH_CHECK, health("")))
        assert answer.status == serving
    listed = call(listeners.api, NODE + "ListMessages", list_messages(limit=1000))
    assert node_pb2.ListMessagesResponse.FromString(listed).messages == []


def test_the_client_reports_an_oversized_request_as_rejected(listeners: Listeners) -> None:
    before = database_digest(listeners.home)
    with (
        LiaisonClient.from_home(listeners.home.path) as client,
        pytest.raises(RequestRejected) as rejected,
    ):
        client.send_notice(B_ID, notice_with_body(MAX_GRPC_MESSAGE + 1))
    assert re.fullmatch(
        r"the request is too large \(RESOURCE_EXHAUSTED\): .*Received message larger than max "
        r"\(\d+ vs\. 16842752\)",
        str(rejected.value),
    )
    assert database_digest(listeners.home) == before


# The error interceptor against real failures ---------------------------------------


@pytest.fixture
def a_with_b_pinned(tmp_path: Path) -> NodeHome:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    return a_home


def test_an_unexpected_error_is_internal_and_logged_once_with_the_method(
    a_with_b_pinned: NodeHome,
    node_factory: Callable[[NodeHome], RunningNode],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A row the code cannot read (a state no version wrote) fails the listing and the
    message: the caller gets INTERNAL and a fixed message, the log the method name."""
    node = node_factory(a_with_b_pinned)
    # The start-up sealing of clear rows is done: it would seal the row added below
    # (stored without a content format, so as clear) and change the database under load.
    assert node.node is not None
    assert node.node.sealing is not None
    node.run(node.node.sealing)
    message_id = new_message_id()
    with Inspector(a_with_b_pinned) as inspector, inspector.store.write() as session:
        session.add(_stored_message(message_id, state="lost-in-transit"))
    before = database_digest(a_with_b_pinned)
    caplog.set_level(logging.ERROR)
    with api_channel(a_with_b_pinned) as channel:
        listed = refusal(channel, NODE + "ListMessages", list_messages())
        shown = refusal(channel, NODE + "GetStatus", get_status(message_id))
    with node.client() as client, pytest.raises(ClientError) as failed:
        client.get_message(message_id)
    assert listed == ("INTERNAL", INTERNAL_ERROR)
    assert shown == ("INTERNAL", INTERNAL_ERROR)
    assert type(failed.value) is ClientError
    assert str(failed.value) == f"the node failed (INTERNAL): {INTERNAL_ERROR}"
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [(r.name, r.getMessage(), r.exc_info is not None) for r in failures] == [
        ("liaison.server.interceptors", f"{NODE}{method} failed", True)
        for method in ("ListMessages", "GetStatus", "GetMessage")
    ]
    assert "SECRET SUBJECT" not in caplog.text
    assert database_digest(a_with_b_pinned) == before


def test_a_locked_database_is_unavailable_and_the_send_can_be_retried(
    a_with_b_pinned: NodeHome,
    node_factory: Callable[[NodeHome], RunningNode],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another process holds the database's write lock past the busy timeout: the send
    is UNAVAILABLE with a fixed message, nothing is stored, and a retry succeeds."""
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    node = node_factory(a_with_b_pinned)
    before = database_digest(a_with_b_pinned)
    caplog.set_level(logging.ERROR)
    holder = sqlite3.connect(database_path(a_with_b_pinned), isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with api_channel(a_with_b_pinned) as channel:
            assert refusal(channel, NODE + "SendNotice", send()) == (
                "UNAVAILABLE",
                STORAGE_UNAVAILABLE,
            )
        with node.client() as client, pytest.raises(NodeUnavailable, match=STORAGE_UNAVAILABLE):
            client.send_notice(B_ID, sample_notice(), retries=0)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert database_digest(a_with_b_pinned) == before
    logged = [r.getMessage() for r in caplog.records if r.name == "liaison.server.interceptors"]
    assert len(logged) == 2
    assert all(m.startswith(f"{NODE}SendNotice: storage is unavailable") for m in logged)
    with node.client() as client:
        assert client.send_notice(B_ID, sample_notice()).state == "queued"


def _stored_message(message_id: str, *, state: str) -> Message:
    now = dt.datetime.now(dt.UTC)
    return Message(
        message_id=message_id,
        direction=Direction.OUTBOUND.value,
        sender=A_ID,
        recipient=B_ID,
        state=state,
        content_type="application/vnd.liaison.case-notice.v1+proto",
        category=notice_pb2.CATEGORY_CYBERCRIME,
        priority=notice_pb2.PRIORITY_ROUTINE,
        handling=notice_pb2.TLP_GREEN,
        case_reference="CASE-X",
        subject="SECRET SUBJECT",
        envelope_sha256="0" * 64,
        body=MessageBody(envelope=b"", content=b""),
        created_at=now,
        expires_at=now,
        updated_at=now,
        attempts=0,
    )


# The notice's size is checked before sealing --------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, 127, 128, 16_384 - 70, 16_384, 2**21 - 1_300, 2**21], ids=str
)
def test_the_sealed_size_is_known_before_sealing(tmp_path: Path, size: int) -> None:
    """The size formula agrees with real sealing across every varint width it crosses."""
    sender = make_home(tmp_path, A_ID).identity()
    recipient = make_home(tmp_path, B_ID).identity().card
    sealed = seal_content(
        b"x" * size,
        content_type="application/vnd.liaison.case-notice.v1+proto",
        sender=sender,
        recipient=recipient,
        ttl=dt.timedelta(days=7),
    )
    assert sealed_envelope_size(size, sealed.header.ByteSize()) == len(sealed.envelope)


def test_a_notice_exactly_at_the_envelope_limit_is_delivered_and_one_byte_more_is_refused(
    tmp_path: Path, node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    limit = 60_000
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    for home in (a_home, b_home):
        set_limits(home, max_envelope_bytes=limit)
    a, _ = node_factory(a_home), node_factory(b_home)
    with a.client() as client:
        with pytest.raises(RequestRejected) as over:
            client.send_notice(B_ID, notice_with_body(limit))
        found = SEALED_SIZE.search(str(over.value))
        assert found is not None, str(over.value)
        fitting = limit - (int(found[1].replace(",", "")) - limit)
        assert client.send_notice(B_ID, notice_with_body(fitting), wait_seconds=WAIT).state == (
            "delivered"
        )
        with pytest.raises(RequestRejected) as one_more:
            client.send_notice(B_ID, notice_with_body(fitting + 1))
    assert str(one_more.value) == (
        "the notice is 60,001 bytes sealed; this node's limit is 60,000 bytes "
        "(limits.max_envelope_bytes)"
    )
    with Inspector(a_home) as inspector, inspector.store.read() as session:
        sizes = session.scalars(select(sql.length(MessageBody.envelope))).all()
    assert sizes == [limit]


# Listings load no blobs -------------------------------------------------------------


def test_a_listing_selects_no_envelope_and_no_content(
    tmp_path: Path, node_factory: Callable[[NodeHome], RunningNode]
) -> None:
    a_home, b_home = make_home(tmp_path, A_ID), make_home(tmp_path, B_ID)
    pin_each_other(a_home, b_home)
    a, b = node_factory(a_home), node_factory(b_home)
    with a.client() as client:
        for number in range(3):
            notice = sample_notice(f"CASE-{number}", attachment=bytes([number]) * MIB)
            assert client.send_notice(B_ID, notice, wait_seconds=WAIT).state == "delivered"
    assert b.node is not None
    engine = b.node.store.engine
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        with b.client() as client:
            listed = client.list_messages(node_pb2.DIRECTION_INBOUND, limit=50)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert [m.case_reference for m in listed] == ["CASE-2", "CASE-1", "CASE-0"]
    assert {m.peer for m in listed} == {A_ID}
    listings = [s for s in statements if re.search(r"\bFROM messages\b", s)]
    assert listings, statements
    # A message's envelope and content are in message_bodies (revision 0013).
    blobs = [s for s in statements if re.search(r"\bmessage_bodies\b|\.(envelope|content)\b", s)]
    assert blobs == []
