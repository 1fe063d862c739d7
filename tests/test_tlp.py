"""TLP:RED is enforced, not only stored: the body goes to the readers the notice names at
the receiving node and to the identity that sent it at the sending one; everyone else,
admin included, is refused, and each refusal is audited."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from liaison.client.cli import main
from liaison.keys.credentials import ClientCredential
from liaison.keys.sealed import Passphrase, Unlocker
from liaison.server.home import NodeHome
from liaison.server.store.models import Message
from liaison.v1 import node_pb2, node_pb2_grpc, notice_pb2
from tests.conftest import TEST_PASSPHRASE, RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
SECRET = "a credential's own passphrase"


@dataclass
class Pair:
    a: RunningNode
    b: RunningNode

    def stub(self, home: NodeHome, name: str) -> tuple[grpc.Channel, node_pb2_grpc.NodeServiceStub]:
        secret = TEST_PASSPHRASE if name == "admin" else SECRET
        credential = ClientCredential.load(
            home.path / "credentials" / name, Unlocker(Passphrase(secret))
        )
        channel = grpc.secure_channel(
            credential.target,
            grpc.ssl_channel_credentials(
                credential.ca_certificate, credential.private_key, credential.certificate
            ),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
        return channel, node_pb2_grpc.NodeServiceStub(channel)

    def call(self, home: NodeHome, name: str, method: str, request: object) -> object:
        channel, stub = self.stub(home, name)
        try:
            return getattr(stub, method)(request, timeout=60)
        finally:
            channel.close()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("tlp")
    a_home, b_home = make_home(root, A_ID), make_home(root, B_ID)
    pin_each_other(a_home, b_home)
    secret = root / "secret"
    secret.write_text(SECRET, encoding="utf-8")
    secret.chmod(0o600)
    for home, name in ((a_home, "clerk"), (b_home, "ops"), (b_home, "analyst")):
        code = main(
            [
                "users",
                "add",
                name,
                "--role",
                "operator",
                "--home",
                str(home.path),
                "--new-passphrase-file",
                str(secret),
            ]
        )
        assert code == 0
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        yield Pair(a, b)
    finally:
        a.stop()
        b.stop()


def _red(readers: list[str]) -> notice_pb2.CaseNotice:
    notice = sample_notice("RED-1")
    notice.handling = notice_pb2.TLP_RED
    notice.readers.extend(readers)
    return notice


def _refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    return refused.value


def test_a_red_body_goes_to_its_readers_only(pair: Pair) -> None:
    a, b = pair.a.home, pair.b.home
    sent = pair.call(
        a,
        "admin",
        "SendNotice",
        node_pb2.SendNoticeRequest(recipient=B_ID, notice=_red(["ops"]), wait_seconds=60),
    )
    assert isinstance(sent, node_pb2.SendNoticeResponse)
    assert sent.state == node_pb2.MESSAGE_STATE_DELIVERED
    message = node_pb2.GetMessageRequest(message_id=sent.message_id)
    # At the receiving node: the reader it names, and nobody else.
    detail = pair.call(b, "ops", "GetMessage", message)
    assert isinstance(detail, node_pb2.MessageDetail)
    assert detail.notice.body == sample_notice().body
    assert list(detail.notice.readers) == ["ops"]
    assert detail.notice.sent_by == "admin"
    before = len(pair.b.node.store.audit_events(limit=100_000))
    for name in ("analyst", "admin"):
        error = _refused(lambda n=name: pair.call(b, n, "GetMessage", message))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "TLP:RED" in (error.details() or "")
    denied = [
        (e.actor, e.event)
        for e in pair.b.node.store.audit_events(after_seq=before, limit=1000)
        if e.message_id == sent.message_id
    ]
    assert denied == [("analyst", "access-denied"), ("admin", "access-denied")]
    # No listing shows the subject.
    page = pair.call(b, "ops", "ListMessages", node_pb2.ListMessagesRequest())
    assert isinstance(page, node_pb2.ListMessagesResponse)
    listed = next(m for m in page.messages if m.message_id == sent.message_id)
    assert listed.subject == ""
    # At the sending node: the identity that sent it, and nobody else.
    assert isinstance(pair.call(a, "admin", "GetMessage", message), node_pb2.MessageDetail)
    error = _refused(lambda: pair.call(a, "clerk", "GetMessage", message))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_reply_to_red_names_whoever_sent_what_it_answers(pair: Pair) -> None:
    a, b = pair.a.home, pair.b.home
    sent = pair.call(
        a,
        "clerk",
        "SendNotice",
        node_pb2.SendNoticeRequest(recipient=B_ID, notice=_red(["ops"]), wait_seconds=60),
    )
    assert isinstance(sent, node_pb2.SendNoticeResponse)
    reply = pair.call(
        b,
        "ops",
        "Reply",
        node_pb2.ReplyRequest(
            message_id=sent.message_id, notice=notice_pb2.CaseNotice(body="Understood.")
        ),
    )
    assert isinstance(reply, node_pb2.SendNoticeResponse)
    status = pair.call(
        b,
        "ops",
        "GetStatus",
        node_pb2.GetStatusRequest(message_id=reply.message_id, wait_seconds=60),
    )
    assert isinstance(status, node_pb2.MessageStatus)
    assert status.state == node_pb2.MESSAGE_STATE_DELIVERED
    answer = node_pb2.GetMessageRequest(message_id=reply.message_id)
    detail = pair.call(a, "clerk", "GetMessage", answer)
    assert isinstance(detail, node_pb2.MessageDetail)
    assert list(detail.notice.readers) == ["clerk"]
    error = _refused(lambda: pair.call(a, "admin", "GetMessage", answer))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("handling", "readers", "problem"),
    [
        (notice_pb2.TLP_RED, [], "names at least one reader"),
        (notice_pb2.TLP_AMBER, ["ops"], "only a TLP:RED notice names readers"),
        (notice_pb2.TLP_RED, ["Not A Name"], "reader 1 is not an identity name"),
    ],
)
def test_readers_are_checked_before_anything_is_sealed(
    pair: Pair, handling: int, readers: list[str], problem: str
) -> None:
    notice = sample_notice("RED-2")
    notice.handling = handling  # type: ignore[assignment]
    notice.readers.extend(readers)
    before = _outbound(pair)
    error = _refused(
        lambda: pair.call(
            pair.a.home,
            "admin",
            "SendNotice",
            node_pb2.SendNoticeRequest(recipient=B_ID, notice=notice),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (error.details() or "")
    assert _outbound(pair) == before


def _outbound(pair: Pair) -> int:
    return _outbound_of(pair.a)


def test_the_cli_sends_red_with_its_readers(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = tmp_path / "body.txt"
    body.write_text("Meet at the usual place.", encoding="utf-8")
    argv = [
        "send",
        "--to",
        B_ID,
        "--home",
        str(pair.a.home.path),
        "--category",
        "terrorism",
        "--tlp",
        "red",
        "--case-ref",
        "RED-3",
        "--subject",
        "Handover",
        "--body-file",
        str(body),
        "--reader",
        "ops",
        "--reader",
        "analyst",
        "--json",
    ]
    assert main(argv) == 0
    sent = json.loads(capsys.readouterr().out)
    detail = pair.call(
        pair.b.home,
        "analyst",
        "GetMessage",
        node_pb2.GetMessageRequest(message_id=sent["message_id"]),
    )
    assert isinstance(detail, node_pb2.MessageDetail)
    assert sorted(detail.notice.readers) == ["analyst", "ops"]


def test_a_non_reader_can_neither_answer_nor_search_a_red_notice(pair: Pair) -> None:
    """The review's finding: a reply carried the RED subject to whoever wrote it, and a
    text search answered yes or no on the hidden subject."""
    a, b = pair.a.home, pair.b.home
    notice = _red(["ops"])
    notice.subject = "Operation Nightjar moves tonight"
    sent = pair.call(
        a,
        "admin",
        "SendNotice",
        node_pb2.SendNoticeRequest(recipient=B_ID, notice=notice, wait_seconds=60),
    )
    assert isinstance(sent, node_pb2.SendNoticeResponse)
    before = _outbound_of(pair.b)
    for method, request in (
        (
            "Reply",
            node_pb2.ReplyRequest(
                message_id=sent.message_id, notice=notice_pb2.CaseNotice(body="x")
            ),
        ),
        (
            "Acknowledge",
            node_pb2.AcknowledgeRequest(
                message_id=sent.message_id, status=notice_pb2.ACK_STATUS_ACKNOWLEDGED
            ),
        ),
    ):
        error = _refused(lambda m=method, r=request: pair.call(b, "analyst", m, r))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert _outbound_of(pair.b) == before
    for name in ("analyst", "ops"):
        page = pair.call(b, name, "ListMessages", node_pb2.ListMessagesRequest(text="nightjar"))
        assert isinstance(page, node_pb2.ListMessagesResponse)
        assert [m.message_id for m in page.messages] == []


def _outbound_of(node: RunningNode) -> int:
    with node.node.store.read() as session:
        query = select(func.count()).select_from(Message).where(Message.direction == "outbound")
        return int(session.scalar(query) or 0)
