"""Named identities and roles on the local API, end to end: real client certificates over
real mutual TLS against a running node; every role against every NodeService method."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from liaison.client import LiaisonClient, PermissionDenied, RequestRejected, users_cli
from liaison.client.cli import main
from liaison.keys.certs import IssuedCertificate, issue_api_client_certificate
from liaison.keys.credentials import ClientCredential
from liaison.keys.identity import load_private_key
from liaison.keys.sealed import Passphrase, Unlocker
from liaison.server.access import POLICY, Role
from liaison.server.home import API_CA, NodeHome
from liaison.server.store import users
from liaison.server.store.models import ApiCertificate, Message
from liaison.v1 import node_pb2, node_pb2_grpc, notice_pb2
from tests.cli_homes import run, run_json
from tests.conftest import TEST_PASSPHRASE, RunningNode, make_home, pin_each_other
from tests.notices import sample_notice

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
CREDENTIAL_PASSPHRASE = "a credential's own passphrase"
ROLES = {"ops": "operator", "case-system": "system", "inspector": "auditor", "root2": "admin"}


@dataclass
class Node:
    a: RunningNode
    b: RunningNode
    received: str  # a notice A sent B, as B holds it
    secret_file: Path

    @property
    def home(self) -> NodeHome:
        return self.b.home

    def stub(self, name: str) -> tuple[grpc.Channel, node_pb2_grpc.NodeServiceStub]:
        folder = self.home.path / "credentials" / name
        secret = TEST_PASSPHRASE if name == "admin" else CREDENTIAL_PASSPHRASE
        credential = ClientCredential.load(folder, Unlocker(Passphrase(secret)))
        return _channel(credential)


def _channel(credential: ClientCredential) -> tuple[grpc.Channel, node_pb2_grpc.NodeServiceStub]:
    channel = grpc.secure_channel(
        credential.target,
        grpc.ssl_channel_credentials(
            root_certificates=credential.ca_certificate,
            private_key=credential.private_key,
            certificate_chain=credential.certificate,
        ),
        options=[("grpc.ssl_target_name_override", "localhost")],
    )
    return channel, node_pb2_grpc.NodeServiceStub(channel)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("access")
    a_home, b_home = make_home(root, A_ID), make_home(root, B_ID)
    pin_each_other(a_home, b_home)
    secret = root / "credential-passphrase"
    secret.write_text(CREDENTIAL_PASSPHRASE, encoding="utf-8")
    secret.chmod(0o600)
    for name, role in ROLES.items():
        code = _main(
            "users",
            "add",
            name,
            "--role",
            role,
            "--home",
            str(b_home.path),
            "--new-passphrase-file",
            str(secret),
        )
        assert code == 0
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        with a.client() as client:
            sent = client.send_notice(B_ID, sample_notice("ACCESS-1"), wait_seconds=60)
        yield Node(a, b, sent.message_id, secret)
    finally:
        a.stop()
        b.stop()


def _main(*argv: str) -> int:
    return main(list(argv))


def _requests(node: Node) -> dict[str, Callable[[node_pb2_grpc.NodeServiceStub], Any]]:
    message = node.received
    return {
        "SendNotice": lambda s: s.SendNotice(
            node_pb2.SendNoticeRequest(recipient=A_ID, notice=sample_notice("ROLE")), timeout=30
        ),
        "ListMessages": lambda s: s.ListMessages(node_pb2.ListMessagesRequest(), timeout=30),
        "GetMessage": lambda s: s.GetMessage(
            node_pb2.GetMessageRequest(message_id=message), timeout=30
        ),
        "GetStatus": lambda s: s.GetStatus(
            node_pb2.GetStatusRequest(message_id=message), timeout=30
        ),
        "Acknowledge": lambda s: s.Acknowledge(
            node_pb2.AcknowledgeRequest(
                message_id=message, status=notice_pb2.ACK_STATUS_ACKNOWLEDGED
            ),
            timeout=30,
        ),
        "Reply": lambda s: s.Reply(
            node_pb2.ReplyRequest(message_id=message, notice=notice_pb2.CaseNotice(body="ok")),
            timeout=30,
        ),
        "GetThread": lambda s: s.GetThread(
            node_pb2.GetMessageRequest(message_id=message), timeout=30
        ),
        "Cancel": lambda s: s.Cancel(node_pb2.GetMessageRequest(message_id=message), timeout=30),
        "Retry": lambda s: s.Retry(node_pb2.GetMessageRequest(message_id=message), timeout=30),
        "Watch": lambda s: next(iter(s.Watch(node_pb2.WatchRequest(), timeout=30))),
        "SignCheckpoint": lambda s: s.SignCheckpoint(node_pb2.SignCheckpointRequest(), timeout=30),
        "GetAttachment": lambda s: next(
            iter(s.GetAttachment(node_pb2.GetAttachmentRequest(message_id=message, index=1)))
        ),
        "ListAuditEvents": lambda s: s.ListAuditEvents(
            node_pb2.ListAuditEventsRequest(limit=1), timeout=30
        ),
        "Forward": lambda s: s.Forward(
            node_pb2.ForwardRequest(message_id=message, recipient=A_ID), timeout=30
        ),
    }


def test_the_policy_names_every_method() -> None:
    service = node_pb2.DESCRIPTOR.services_by_name["NodeService"]
    assert set(POLICY) == {method.name for method in service.methods}


CASES = [
    (name, method)
    for name in ["admin", *ROLES]
    for method in node_pb2.DESCRIPTOR.services_by_name["NodeService"].methods_by_name
]


@pytest.mark.parametrize(("name", "method"), CASES)
def test_each_role_against_each_method(node: Node, name: str, method: str) -> None:
    role = Role(ROLES.get(name, "admin"))
    channel, stub = node.stub(name)
    before = _messages(node)
    try:
        _requests(node)[method](stub)
        code = grpc.StatusCode.OK
        detail = ""
    except grpc.RpcError as error:
        code, detail = error.code(), error.details() or ""
    finally:
        channel.close()
    if role in POLICY[method]:
        assert code not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    else:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (code, detail)
        assert f"{method} needs the role" in detail
        assert f"{name} is {role.value}" in detail
        assert _messages(node) == before
        denied = [
            event
            for event in _events(node)
            if event.event == "access-denied" and event.actor == name
        ]
        assert any(method in (event.detail or "") for event in denied)


def _events(node: Node) -> list[Any]:
    return node.b.node.store.audit_events(limit=100_000)


def _messages(node: Node) -> int:
    with node.b.node.store.read() as session:
        return int(session.scalar(select(func.count()).select_from(Message)) or 0)


def test_an_auditor_sees_metadata_without_subjects(node: Node) -> None:
    channel, stub = node.stub("inspector")
    try:
        page = stub.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
    finally:
        channel.close()
    assert page.messages
    assert all(m.subject == "" for m in page.messages)
    assert any(m.message_id == node.received for m in page.messages)
    channel, stub = node.stub("ops")
    try:
        page = stub.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
    finally:
        channel.close()
    assert any(m.subject for m in page.messages)


def test_every_read_of_a_body_is_audited(node: Node) -> None:
    def opened() -> list[Any]:
        return [
            e
            for e in _events(node)
            if e.event == "opened" and e.actor == "case-system" and e.message_id == node.received
        ]

    before = len(opened())
    channel, stub = node.stub("case-system")
    try:
        for _ in range(2):
            stub.GetMessage(node_pb2.GetMessageRequest(message_id=node.received), timeout=30)
    finally:
        channel.close()
    after = opened()
    assert len(after) == before + 2
    assert after[-1].peer == A_ID


def test_revocation_holds_from_the_next_call_on_the_same_connection(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ("--home", str(node.home.path))
    secret = ("--new-passphrase-file", str(node.secret_file))
    assert run(capsys, "users", "add", "temp", "--role", "operator", *home, *secret)[0] == 0
    channel, stub = node.stub("temp")
    try:
        stub.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
        assert run(capsys, "users", "revoke", "temp", "--reason", "left the unit", *home)[0] == 0
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (refused.value.details() or "")
    listed = run_json(capsys, "users", "list", *home)
    assert isinstance(listed, list)
    assert {"name": "temp", "state": "revoked"}.items() <= next(
        one for one in listed if one["name"] == "temp"
    ).items()
    # A name is never reused (its folder stays, and so does its registration).
    code, _, err = run(capsys, "users", "add", "temp", "--role", "operator", *home, *secret)
    assert code == 2
    assert "exists already" in err
    shutil.rmtree(node.home.path / "credentials" / "temp")
    code, _, err = run(capsys, "users", "add", "temp", "--role", "operator", *home, *secret)
    assert code == 2
    assert "never reused" in err
    assert not (node.home.path / "credentials" / "temp").exists()


def test_a_rotated_certificate_stops_working(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ("--home", str(node.home.path))
    secret = ("--new-passphrase-file", str(node.secret_file))
    assert run(capsys, "users", "add", "turnover", "--role", "system", *home, *secret)[0] == 0
    old_channel, old = node.stub("turnover")
    try:
        old.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
        assert run(capsys, "users", "rotate", "turnover", *home, *secret)[0] == 0
        with pytest.raises(grpc.RpcError) as refused:
            old.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "replaced" in (refused.value.details() or "")
    finally:
        old_channel.close()
    channel, stub = node.stub("turnover")
    try:
        stub.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
    finally:
        channel.close()


def test_a_certificate_of_the_ca_that_was_never_registered_is_refused(node: Node) -> None:
    """Before named identities, any certificate the node's CA issued got in."""
    home = NodeHome.unlocked(node.home.path, Passphrase(TEST_PASSPHRASE))
    ca_pem = (home.api_dir / "ca.crt").read_bytes()
    key = load_private_key(home.open_keys().private(API_CA), ec.EllipticCurvePrivateKey, API_CA)
    ca = IssuedCertificate(key, x509.load_pem_x509_certificate(ca_pem))
    stray = issue_api_client_certificate(ca, "admin")
    target = (home.path / "credentials" / "admin" / "target").read_text().strip()
    channel, stub = _channel(
        ClientCredential(ca_pem, stray.certificate_pem(), stray.key_pem(), target)
    )
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListMessages(node_pb2.ListMessagesRequest(), timeout=30)
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not registered" in (refused.value.details() or "")


def test_an_expired_credential_is_refused(node: Node) -> None:
    with node.b.node.store.read() as session:
        certificate = session.scalars(
            select(ApiCertificate).where(ApiCertificate.user == "ops")
        ).one()
        later = certificate.expires_at + dt.timedelta(seconds=1)
        assert isinstance(users.identify(session, certificate.sha256, later), str)
        assert not isinstance(
            users.identify(session, certificate.sha256, later - dt.timedelta(days=1)), str
        )


def test_the_last_admin_cannot_be_revoked(node: Node, capsys: pytest.CaptureFixture[str]) -> None:
    home = ("--home", str(node.home.path))
    assert run(capsys, "users", "revoke", "root2", "--reason", "test", *home)[0] == 0
    code, _, err = run(capsys, "users", "revoke", "admin", "--reason", "test", *home)
    assert code == 2
    assert "last admin" in err


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (("users", "add", "Bad Name", "--role", "operator"), "invalid user name"),
        (("users", "add", "x", "--role", "operator", "--expires=-5d"), "--expires"),
        (("users", "add", "x", "--role", "operator", "--expires", "99y"), "at most"),
        (("users", "revoke", "nobody", "--reason", "x"), "no user nobody"),
        (("users", "rotate", "nobody"), "no user nobody"),
    ],
)
def test_bad_user_requests_are_one_line_and_change_nothing(
    node: Node, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], problem: str
) -> None:
    home = ("--home", str(node.home.path), "--new-passphrase-file", str(node.secret_file))
    if argv[1] == "revoke":
        home = home[:2]
    before = _events(node)
    code, _, err = run(capsys, *argv, *home)
    assert code == 2
    assert problem in err
    assert err.count("\n") == 1
    assert len(_events(node)) == len(before)


def test_the_library_and_the_cli_name_a_refusal(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    """PermissionDenied in the library, exit 8 and one line in the CLI."""
    folder = node.home.path / "credentials" / "inspector"
    with (
        LiaisonClient.from_credential_dir(folder, CREDENTIAL_PASSPHRASE) as client,
        pytest.raises(PermissionDenied, match="GetMessage needs the role"),
    ):
        client.get_message(node.received)
    code, out, err = run(
        capsys,
        "show",
        node.received,
        "--home",
        str(node.home.path),
        "--identity",
        "inspector",
        "--passphrase-file",
        str(node.secret_file),
    )
    assert code == 8
    assert out == ""
    assert err.count("\n") == 1
    assert "needs the role" in err


def test_the_cli_offers_the_roles_the_server_knows() -> None:
    assert tuple(role.value for role in Role) == users_cli.ROLES


def test_an_auditor_cannot_search_subjects(node: Node) -> None:
    """A yes or no on a substring, asked often enough, spells out a hidden subject."""
    word = sample_notice().subject.split()[0].lower()
    channel, stub = node.stub("inspector")
    try:
        page = stub.ListMessages(node_pb2.ListMessagesRequest(text=word), timeout=30)
    finally:
        channel.close()
    assert list(page.messages) == []
    channel, stub = node.stub("ops")
    try:
        page = stub.ListMessages(node_pb2.ListMessagesRequest(text=word), timeout=30)
    finally:
        channel.close()
    assert any(m.message_id == node.received for m in page.messages)


def test_a_revoked_identity_loses_its_open_watch_stream(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ("--home", str(node.home.path))
    secret = ("--new-passphrase-file", str(node.secret_file))
    assert run(capsys, "users", "add", "watcher", "--role", "system", *home, *secret)[0] == 0
    channel, stub = node.stub("watcher")
    try:
        last = node.b.node.store.last_audit_seq()
        stream = stub.Watch(node_pb2.WatchRequest(after=last), timeout=60)
        assert run(capsys, "users", "revoke", "watcher", "--reason", "moved", *home)[0] == 0
        with node.a.client() as client:
            client.send_notice(B_ID, sample_notice("AFTER-REVOKE"), wait_seconds=60)
        with pytest.raises(grpc.RpcError) as ended:
            next(iter(stream))
    finally:
        channel.close()
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (ended.value.details() or "")


def test_an_auditor_reads_the_whole_audit_trail_through_the_api(
    node: Node, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = node.secret_file
    with LiaisonClient.from_home(node.home.path, "inspector", CREDENTIAL_PASSPHRASE) as client:
        every = list(client.audit_events(page_size=2))
        added = list(client.audit_events(events=["user-added"]))
        after = list(client.audit_events(after=every[2].seq, page_size=3))
        with pytest.raises(RequestRejected, match="unknown event kind"):
            list(client.audit_events(events=["no-such-kind"]))
        with pytest.raises(RequestRejected, match="at most 5000"):
            list(client.audit_events(page_size=5001))
    seqs = [event.seq for event in every]
    assert seqs == list(range(1, len(seqs) + 1))  # every event, paged, none twice
    assert [event.seq for event in after] == seqs[3:]
    assert len(added) >= len(ROLES)
    for name in ROLES:
        assert any(name in event.detail for event in added), name
    assert {"node-initialised", "received", "user-added"} <= {event.event for event in every}
    with (
        pytest.raises(PermissionDenied, match="ListAuditEvents needs the role admin or auditor"),
        LiaisonClient.from_home(node.home.path, "ops", CREDENTIAL_PASSPHRASE) as client,
    ):
        list(client.audit_events())

    shown = run_json(
        capsys,
        "audit",
        "log",
        "--identity",
        "inspector",
        "--event",
        "received",
        "--home",
        str(node.home.path),
        "--passphrase-file",
        str(secret),
    )
    assert isinstance(shown, list)
    assert node.received in [row["message_id"] for row in shown]
    assert {row["event"] for row in shown} == {"received"}


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (node_pb2.ListAuditEventsRequest(after=2**63), "largest sequence number"),
        (node_pb2.ListAuditEventsRequest(message_id="../x"), "not a message id"),
        (node_pb2.ListAuditEventsRequest(peer="not an agency"), "not an agency id"),
        (node_pb2.ListAuditEventsRequest(actor="a" * 129), "longer than 128"),
    ],
)
def test_an_audit_query_out_of_bounds_is_refused(
    node: Node, request_: node_pb2.ListAuditEventsRequest, why: str
) -> None:
    channel, stub = node.stub("inspector")
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub.ListAuditEvents(request_, timeout=30)
    finally:
        channel.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in (refused.value.details() or "")
