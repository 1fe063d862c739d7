"""The client library as an agency system uses it: typed enums that cannot drift from the
wire, a notice builder that checks before sending, and the asyncio client against two real
nodes (send, watch, list, read, streamed attachments, a 15 MB notice)."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import os
import pydoc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import EnumDescriptor

from liaison.client import (
    AckStatus,
    AsyncLiaisonClient,
    AttachmentError,
    AttachmentInfo,
    Category,
    Direction,
    InvalidNotice,
    LiaisonClient,
    MessageState,
    NotFound,
    PermissionDenied,
    Priority,
    RequestRejected,
    State,
    SummaryEnums,
    Tlp,
    attachment,
    build_notice,
    state_name,
)
from liaison.client.api import MAX_ANSWER_BYTES
from liaison.client.attachments import PARTIAL_PREFIX, AttachmentFile
from liaison.client.cli import main
from liaison.server.config import Limits
from liaison.server.store.models import Direction as StoredDirection
from liaison.v1 import node_pb2, notice_pb2
from tests.conftest import Inspector, RunningNode, make_home, pin_each_other

A_ID, B_ID = "MA.DGSN.CCPI", "DE.BPOL.LO-RABAT"
WAIT = 60
AUDITOR_PASSPHRASE = "the auditor credential's passphrase"
# More than three GetAttachment chunks of 1 MiB, the last one partial.
MULTI_CHUNK = 3 * 1024 * 1024 + 512 * 1024
LARGE = 15 * 1000 * 1000


@dataclass
class Nodes:
    a: RunningNode
    b: RunningNode


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    """A and B, pinned to each other and running; B has an auditor, ``inspector``."""
    root = tmp_path_factory.mktemp("library")
    a_home, b_home = make_home(root, A_ID), make_home(root, B_ID)
    pin_each_other(a_home, b_home)
    secret = root / "auditor-passphrase"
    secret.write_text(AUDITOR_PASSPHRASE, encoding="utf-8")
    secret.chmod(0o600)
    options = ("--home", str(b_home.path), "--new-passphrase-file", str(secret))
    added = main(["users", "add", "inspector", "--role", "auditor", *options])
    assert added == 0
    a, b = RunningNode(a_home).start(), RunningNode(b_home).start()
    try:
        yield Nodes(a, b)
    finally:
        a.stop()
        b.stop()


def notice(case: str, *files: Any, handling: Tlp | str = Tlp.AMBER) -> notice_pb2.CaseNotice:
    return build_notice(
        case_reference=case,
        subject="Victims recruited with false job offers",
        body="Body text.",
        category=Category.HUMAN_TRAFFICKING,
        priority="urgent",
        handling=handling,
        attachments=files,
        unit="unit 1",
    )


# The enums --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enum", "descriptor", "prefix"),
    [
        (MessageState, node_pb2.DESCRIPTOR.enum_types_by_name["MessageState"], "MESSAGE_STATE_"),
        (Direction, node_pb2.DESCRIPTOR.enum_types_by_name["Direction"], "DIRECTION_"),
        (Category, notice_pb2.DESCRIPTOR.enum_types_by_name["Category"], "CATEGORY_"),
        (Priority, notice_pb2.DESCRIPTOR.enum_types_by_name["Priority"], "PRIORITY_"),
        (Tlp, notice_pb2.DESCRIPTOR.enum_types_by_name["Tlp"], "TLP_"),
        (AckStatus, notice_pb2.DESCRIPTOR.enum_types_by_name["AckStatus"], "ACK_STATUS_"),
    ],
)
def test_each_enum_equals_its_wire_descriptor(
    enum: Any, descriptor: EnumDescriptor, prefix: str
) -> None:
    wire = {value.name.removeprefix(prefix): value.number for value in descriptor.values}
    assert {member.name: member.value for member in enum} == wire


def test_state_is_the_text_the_cli_prints() -> None:
    for value in node_pb2.MessageState.values():
        assert State.of(value) == state_name(value)
    assert {state.value for state in State} == {
        state_name(value) for value in node_pb2.MessageState.values()
    }
    assert State.DELIVERED == "delivered"
    assert f"{State.ACTION_TAKEN}" == "action_taken"


def test_the_answer_limit_covers_the_nodes_largest_answer() -> None:
    assert Limits().max_grpc_message_bytes <= MAX_ANSWER_BYTES


# The builder --------------------------------------------------------------------------


def test_the_builder_fills_names_media_types_and_sha256s(tmp_path: Path) -> None:
    statement = tmp_path / "statement.pdf"
    statement.write_bytes(b"%PDF-1.7 statement")
    built = notice(
        "B-1",
        str(statement),
        attachment(b"notes", name="notes.txt"),
        handling="amber+strict",
    )
    assert [(a.name, a.media_type) for a in built.attachments] == [
        ("statement.pdf", "application/pdf"),
        ("notes.txt", "text/plain"),
    ]
    for one in built.attachments:
        assert one.sha256 == hashlib.sha256(one.content).digest()
    assert built.attachments[0].content == statement.read_bytes()
    assert built.handling == Tlp.AMBER_STRICT
    assert built.priority == Priority.URGENT
    # The node fills these two in; the builder does not need them.
    assert not built.originator.agency_id
    assert not built.HasField("created_at")


def test_the_builder_refuses_an_invalid_notice_before_any_node_is_asked() -> None:
    with pytest.raises(InvalidNotice) as refused:
        build_notice(
            case_reference="B-2",
            subject=" ",
            category="terrorism",
            priority=Priority.FLASH,
            handling="TLP:RED",  # and no readers
            attachments=[attachment(b"unnamed")],
        )
    assert set(refused.value.problems) == {
        "subject is empty",
        "a TLP:RED notice names at least one reader",
        "attachment 1 has no name",
    }
    assert "a TLP:RED notice names at least one reader" in str(refused.value)
    assert isinstance(refused.value, RequestRejected)  # what the CLI already catches
    with pytest.raises(InvalidNotice, match="handling 'purple' is not one of"):
        notice("B-3", handling="purple")


# The asyncio client against two nodes ----------------------------------------------


def test_the_async_client_sends_watches_lists_and_streams_attachments(
    nodes: Nodes, tmp_path: Path
) -> None:
    payload = os.urandom(MULTI_CHUNK)
    evidence = tmp_path / "evidence.bin"
    evidence.write_bytes(payload)
    folder = tmp_path / "saved"
    folder.mkdir()
    # A file already there keeps its bytes: saving never overwrites.
    (folder / "evidence.bin").write_bytes(b"already here")

    async def scenario() -> None:
        async with (
            AsyncLiaisonClient.from_home(nodes.a.home.path) as a,
            AsyncLiaisonClient.from_home(nodes.b.home.path) as b,
        ):
            built = notice("ASYNC-1", evidence, attachment(b"short note", name="note.txt"))
            sent = await a.send_notice(B_ID, built, wait_seconds=WAIT)
            assert sent.state is State.DELIVERED

            async def received() -> node_pb2.WatchEvent:
                async for event in b.watch(events=["received"]):
                    if event.message_id == sent.message_id:
                        return event
                raise AssertionError("the watch ended")

            event = await asyncio.wait_for(received(), WAIT)
            assert event.peer == A_ID

            listed = [m async for m in b.iter_messages(Direction.INBOUND, page_size=1)]
            summary = next(m for m in listed if m.message_id == sent.message_id)
            assert SummaryEnums.of(summary) == SummaryEnums(
                Direction.INBOUND,
                MessageState.RECEIVED,
                Category.HUMAN_TRAFFICKING,
                Priority.URGENT,
                Tlp.AMBER,
            )
            assert summary.ByteSize() < 1024  # a listing carries no attachment

            light = await b.get_message(sent.message_id, attachment_content=False)
            assert list(light.attachment_sizes) == [MULTI_CHUNK, len(b"short note")]
            assert [a.content for a in light.notice.attachments] == [b"", b""]
            assert light.notice.attachments[0].sha256 == hashlib.sha256(payload).digest()
            assert light.ByteSize() < 64 * 1024

            with Inspector(nodes.b.home) as inspector:
                before = inspector.last_audit_seq()
            stream = await b.get_attachment(sent.message_id, 1)
            with Inspector(nodes.b.home) as inspector:  # audited before a byte left
                opened = [
                    e.detail
                    for e in inspector.audit_since(before)
                    if e.event == "opened" and e.message_id == sent.message_id
                ]
            assert opened == ["inbound notice's attachment 1 given to admin"]
            assert (stream.info.name, stream.info.size) == ("evidence.bin", MULTI_CHUNK)
            chunks = [chunk async for chunk in stream]
            assert len(chunks) == 4
            assert b"".join(chunks) == payload

            saved = await b.save_attachments(sent.message_id, folder)
            again = await b.save_attachment(sent.message_id, 1, folder)
            with pytest.raises(NotFound, match="no attachment 3"):
                await b.save_attachment(sent.message_id, 3, folder)
            with pytest.raises(AttachmentError, match="no attachment 3"):
                await b.save_attachments(sent.message_id, folder, only=3)
        assert [p.name for p in saved] == ["evidence (2).bin", "note.txt"]
        assert again.name == "evidence (3).bin"
        assert saved[0].read_bytes() == payload == again.read_bytes()
        assert saved[1].read_bytes() == b"short note"

    asyncio.run(scenario())
    assert (folder / "evidence.bin").read_bytes() == b"already here"
    assert not [p for p in folder.iterdir() if p.name.startswith(PARTIAL_PREFIX)]


def test_a_15_mb_notice_is_read_through_the_async_client(nodes: Nodes, tmp_path: Path) -> None:
    payload = os.urandom(LARGE)  # incompressible: the transport gets no help
    digest = hashlib.sha256(payload).digest()

    async def scenario() -> None:
        async with AsyncLiaisonClient.from_home(nodes.a.home.path) as a:
            sent = await a.send_notice(
                B_ID, notice("BIG-ASYNC", attachment(payload, name="big.bin")), wait_seconds=120
            )
        assert sent.state == "delivered"
        async with AsyncLiaisonClient.from_home(nodes.b.home.path) as b:
            detail = await b.get_message(sent.message_id)
            assert hashlib.sha256(detail.notice.attachments[0].content).digest() == digest
            stream = await b.get_attachment(sent.message_id, 1)
            assert hashlib.sha256(await stream.read()).digest() == digest
            (path,) = await b.save_attachments(sent.message_id, tmp_path)
        assert hashlib.sha256(path.read_bytes()).digest() == digest

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("parts", "problem"),
    [
        ([b"tampered"], "does not match its size or SHA-256"),
        ([b"short"], "does not match its size or SHA-256"),
        ([b"expected", b"!"], "longer than the 8 bytes announced"),
    ],
)
def test_a_streamed_attachment_that_does_not_match_leaves_nothing(
    tmp_path: Path, parts: list[bytes], problem: str
) -> None:
    """What a tampered, short or long stream meets (the node sends none such)."""
    info = AttachmentInfo("a.txt", "text/plain", 8, hashlib.sha256(b"expected").digest())

    def save() -> None:
        with AttachmentFile(tmp_path, 1, info) as file:
            for part in parts:
                file.write(part)
            file.finish()

    with pytest.raises(AttachmentError, match=problem):
        save()
    assert list(tmp_path.iterdir()) == []
    with AttachmentFile(tmp_path, 1, info) as file:
        file.write(b"expected")
        assert file.finish() == tmp_path / "a.txt"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_node_refuses_an_invalid_notice_as_invalid_notice(nodes: Nodes) -> None:
    hand_made = notice_pb2.CaseNotice(case_reference="X-1", category=1, priority=1, handling=2)
    with nodes.a.client() as client, pytest.raises(InvalidNotice) as refused:
        client.send_notice(B_ID, hand_made)
    assert "subject is empty" in refused.value.problems
    assert refused.value.code == "INVALID_ARGUMENT"
    assert refused.value.details.startswith("invalid notice: ")


def test_a_retried_send_with_the_same_key_gives_one_message(nodes: Nodes) -> None:
    with Inspector(nodes.a.home) as inspector:
        before = inspector.count_messages(StoredDirection.OUTBOUND)
        with nodes.a.client() as client:
            first = client.send_notice(B_ID, notice("ONCE-1"), idempotency_key="case-7-once")
            again = client.send_notice(B_ID, notice("ONCE-1"), idempotency_key="case-7-once")

        async def retried() -> str:
            async with AsyncLiaisonClient.from_home(nodes.a.home.path) as a:
                result = await a.send_notice(B_ID, notice("ONCE-1"), idempotency_key="case-7-once")
            return result.message_id

        assert first.message_id == again.message_id == asyncio.run(retried())
        assert inspector.count_messages(StoredDirection.OUTBOUND) == before + 1


def test_an_auditor_may_not_read_a_notice(nodes: Nodes) -> None:
    with nodes.a.client() as client:
        sent = client.send_notice(B_ID, notice("AUDIT-1", attachment(b"x", name="x.txt")))
        assert client.get_status(sent.message_id, wait_seconds=WAIT).state == (
            MessageState.DELIVERED
        )
    inspector = LiaisonClient.from_home(nodes.b.home.path, "inspector", AUDITOR_PASSPHRASE)
    with inspector, pytest.raises(PermissionDenied) as denied:
        inspector.get_message(sent.message_id)
    assert denied.value.code == "PERMISSION_DENIED"
    assert "GetMessage needs the role" in denied.value.details

    async def streamed() -> None:
        async with AsyncLiaisonClient.from_home(
            nodes.b.home.path, "inspector", AUDITOR_PASSPHRASE
        ) as client:
            assert await client.list_messages(Direction.INBOUND)  # metadata it may see
            with pytest.raises(PermissionDenied, match="GetAttachment needs the role"):
                await client.get_attachment(sent.message_id, 1)

    asyncio.run(streamed())


# What an integrator reads first -------------------------------------------------------


def test_help_says_how_to_start_and_every_method_says_what_it_does() -> None:
    text = pydoc.render_doc(LiaisonClient, renderer=pydoc.plaintext)
    assert "LiaisonClient.from_home(" in text
    assert "build_notice(" in text
    public = {
        cls: {name for name, _ in inspect.getmembers(cls) if not name.startswith("_")}
        for cls in (LiaisonClient, AsyncLiaisonClient)
    }
    assert public[LiaisonClient] == public[AsyncLiaisonClient]
    for cls, names in public.items():
        for name in names:
            assert inspect.getdoc(getattr(cls, name)), f"{cls.__name__}.{name}"
