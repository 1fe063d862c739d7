"""``LiaisonClient``: how agency systems and the CLI use their own node."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc

from liaison.client.attachments import AttachmentError, save_attachments
from liaison.client.errors import (
    ClientError,
    MessageNotFound,
    NodeUnavailable,
    PermissionDenied,
    RequestRejected,
    ResourceExhausted,
)
from liaison.client.render import state_name
from liaison.keys.credentials import API_SERVER_NAME, ClientCredential
from liaison.keys.errors import KeyStoreError
from liaison.keys.sealed import PASSPHRASE_VARIABLE, Passphrase, Unlocker
from liaison.server.config import ConfigError, api_target, load_config
from liaison.v1 import node_pb2, node_pb2_grpc, notice_pb2

DEFAULT_TIMEOUT_SECONDS = 30.0
# The largest answer accepted from the node: a notice fills at most one envelope
# (16 MiB by default) and gRPC's own default of 4 MiB would refuse larger ones.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
Req = TypeVar("Req")
Resp = TypeVar("Resp")

Direction = node_pb2.Direction
MessageState = node_pb2.MessageState


# SendNotice retries after the node was unreachable or slow, and the first pause.
SEND_RETRIES = 2
SEND_RETRY_SECONDS = 1.0
WATCH_MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class MessagePage:
    messages: list[node_pb2.MessageSummary]
    # Pass as ``cursor`` for the next page; empty when nothing more matches.
    next_cursor: str


@dataclass(frozen=True)
class SendResult:
    message_id: str
    state: str
    # Why a "failed" or "expired" notice was not delivered, e.g. "TOO_LARGE"; else empty.
    reason: str = ""
    # A notice to several recipients: its id, and each recipient's message.
    notice_id: str = ""
    recipients: list[RecipientResult] = field(default_factory=list)


@dataclass(frozen=True)
class RecipientResult:
    recipient: str
    message_id: str
    state: str
    reason: str


class LiaisonClient:
    """A connection to one node's local API over mutual TLS.

    Every method raises a ``ClientError``: ``NodeUnavailable``,
    ``RequestRejected`` or ``MessageNotFound``.
    """

    def __init__(self, credential: ClientCredential, *, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=credential.ca_certificate,
            private_key=credential.private_key,
            certificate_chain=credential.certificate,
        )
        self._channel = grpc.secure_channel(
            credential.target,
            credentials,
            options=[
                ("grpc.ssl_target_name_override", API_SERVER_NAME),
                ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
            ],
        )
        self._stub = node_pb2_grpc.NodeServiceStub(self._channel)
        self._timeout = timeout

    @classmethod
    def from_credential_dir(
        cls,
        folder: str | Path,
        passphrase: Passphrase | str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> LiaisonClient:
        """Use a credential folder; its key opens with ``passphrase``.

        Without one, the ``LIAISON_PASSPHRASE`` environment variable is used.
        Raises ``KeyStoreError`` if the folder is incomplete or the key does
        not open.
        """
        unlocker = Unlocker(_passphrase(passphrase))
        return cls(ClientCredential.load(Path(folder).expanduser(), unlocker), timeout=timeout)

    @classmethod
    def from_home(
        cls,
        home: str | Path,
        identity: str = "admin",
        passphrase: Passphrase | str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> LiaisonClient:
        """Use the credential ``init`` issued into ``home/credentials/<identity>``."""
        home = Path(home).expanduser()
        unlocker = Unlocker(_passphrase(passphrase))
        credential = ClientCredential.load(home / "credentials" / identity, unlocker)
        # Beside the home, its config says where the API listens now (its port may have
        # changed since the credential was issued).
        try:
            target = api_target(load_config(home).api_listen)
        except ConfigError:
            target = credential.target
        return cls(dataclasses.replace(credential, target=target), timeout=timeout)

    def __enter__(self) -> LiaisonClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float) -> None:
        """Block until the node's local API accepts connections; ``NodeUnavailable`` if not."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise NodeUnavailable(f"the node's local API did not come up in {timeout:g}s") from None

    def send_notice(
        self,
        recipient: str | Sequence[str],
        notice: notice_pb2.CaseNotice,
        *,
        ttl_seconds: int = 0,
        wait_seconds: int = 0,
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """Seal and queue ``notice`` to one recipient or several (one envelope each, one
        notice id); with ``wait_seconds``, wait for delivery first.

        The call carries an idempotency key (a fresh one unless given) and is retried
        up to ``retries`` times with it when the node is unreachable or does not
        answer in time: a retry after an answer that was lost returns the notice
        queued the first time, never a second copy. Raises ``NodeUnavailable``
        once the retries are spent.
        """
        several = not isinstance(recipient, str)
        request = node_pb2.SendNoticeRequest(
            recipient="" if several else str(recipient),
            recipients=list(recipient) if several else [],
            notice=notice,
            ttl_seconds=ttl_seconds,
            wait_seconds=wait_seconds,
            idempotency_key=idempotency_key or _new_key(),
        )
        return self._send(self._stub.SendNotice, request, retries, self._timeout + wait_seconds)

    def acknowledge(
        self,
        message_id: str,
        status: notice_pb2.AckStatus.ValueType,
        *,
        comment: str = "",
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """Acknowledge a received notice to its sender (``ACK_STATUS_ACKNOWLEDGED``,
        ``_ACTION_TAKEN`` or ``_DECLINED``); returns the acknowledgement message."""
        request = node_pb2.AcknowledgeRequest(
            message_id=message_id,
            status=status,
            comment=comment,
            idempotency_key=idempotency_key or _new_key(),
        )
        return self._send(self._stub.Acknowledge, request, retries, self._timeout)

    def reply(
        self,
        message_id: str,
        notice: notice_pb2.CaseNotice,
        *,
        ttl_seconds: int = 0,
        idempotency_key: str | None = None,
        retries: int = SEND_RETRIES,
    ) -> SendResult:
        """Answer a received notice with ``notice`` (what it leaves unset is carried over)."""
        request = node_pb2.ReplyRequest(
            message_id=message_id,
            notice=notice,
            ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key or _new_key(),
        )
        return self._send(self._stub.Reply, request, retries, self._timeout)

    def watch(
        self,
        after: int = 0,
        *,
        events: Sequence[str] = (),
        reconnect: bool = True,
    ) -> Iterator[node_pb2.WatchEvent]:
        """New inbound messages and every change of state, as they happen (no polling).

        Each event carries its audit ``seq``; the iterator remembers the last one and,
        when the node was unreachable or restarted, reconnects (with backoff) and
        resumes right after it: no event is lost or repeated. Start from a saved
        ``after`` to resume across runs. With ``reconnect=False`` a broken stream
        raises ``NodeUnavailable``.
        """
        attempt = 0
        while True:
            request = node_pb2.WatchRequest(after=after, events=list(events))
            try:
                for event in self._stub.Watch(request):
                    after = event.seq
                    attempt = 0
                    yield event
                return
            except grpc.RpcError as error:
                translated = _translate(error)
                if not reconnect or not isinstance(translated, NodeUnavailable):
                    raise translated from None
            time.sleep(min(SEND_RETRY_SECONDS * 2**attempt, WATCH_MAX_BACKOFF_SECONDS))
            attempt += 1

    def cancel(self, message_id: str) -> SendResult:
        """Cancel a queued outbound message (``RequestRejected`` if it is not queued)."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        response = self._call(self._stub.Cancel, request)
        return SendResult(response.message_id, state_name(response.state))

    def retry(self, message_id: str) -> SendResult:
        """Try a queued outbound message now instead of at its next backoff."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        response = self._call(self._stub.Retry, request)
        return SendResult(response.message_id, state_name(response.state))

    def sign_checkpoint(self) -> node_pb2.CheckpointResponse:
        """Have the node sign a checkpoint of its audit log now and its peers cosign it;
        the newest checkpoint, with the cosignatures the node verified."""
        response: node_pb2.CheckpointResponse = self._call(
            self._stub.SignCheckpoint, node_pb2.SignCheckpointRequest()
        )
        return response

    def thread(self, message_id: str) -> list[node_pb2.MessageSummary]:
        """The notice and its acknowledgements and replies, oldest first."""
        request = node_pb2.GetMessageRequest(message_id=message_id)
        return list(self._call(self._stub.GetThread, request).messages)

    def _send(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, node_pb2.SendNoticeResponse],
        request: Req,
        retries: int,
        timeout: float,
    ) -> SendResult:
        """Call ``method`` with ``request`` (which carries its idempotency key), retrying
        up to ``retries`` times when the node is unreachable or slow."""
        attempt = 0
        while True:
            try:
                response = self._call(method, request, timeout=timeout)
                return SendResult(
                    response.message_id,
                    state_name(response.state),
                    response.reason,
                    notice_id=response.notice_id,
                    recipients=[
                        RecipientResult(
                            one.recipient, one.message_id, state_name(one.state), one.reason
                        )
                        for one in response.recipients
                    ],
                )
            except NodeUnavailable:
                if attempt >= retries:
                    raise
            time.sleep(SEND_RETRY_SECONDS * 2**attempt)
            attempt += 1

    def list_messages(
        self,
        direction: node_pb2.Direction.ValueType = node_pb2.DIRECTION_UNSPECIFIED,
        limit: int = 0,
        **filters: Any,
    ) -> list[node_pb2.MessageSummary]:
        """The first page of messages (see ``list_page`` for the filters)."""
        return self.list_page(direction, limit, **filters).messages

    def list_page(
        self,
        direction: node_pb2.Direction.ValueType = node_pb2.DIRECTION_UNSPECIFIED,
        limit: int = 0,
        *,
        cursor: str = "",
        **filters: Any,
    ) -> MessagePage:
        """One page of message summaries, flash and urgent first, then the newest.

        ``filters`` are fields of ``ListMessagesRequest``: ``states`` (a list of
        ``MessageState``), ``peer``, ``case_reference``, ``category``, ``handling``,
        ``priority``, ``since``/``until`` (Timestamps), ``text``, ``newest_first``.
        ``next_cursor`` of the page is empty when nothing more matches.
        """
        request = node_pb2.ListMessagesRequest(
            direction=direction, limit=limit, cursor=cursor, **filters
        )
        response = self._call(self._stub.ListMessages, request)
        return MessagePage(list(response.messages), response.next_cursor)

    def iter_messages(
        self,
        direction: node_pb2.Direction.ValueType = node_pb2.DIRECTION_UNSPECIFIED,
        *,
        page_size: int = 0,
        **filters: Any,
    ) -> Iterator[node_pb2.MessageSummary]:
        """Every matching message, page after page."""
        cursor = ""
        while True:
            page = self.list_page(direction, page_size, cursor=cursor, **filters)
            yield from page.messages
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def get_message(self, message_id: str) -> node_pb2.MessageDetail:
        return self._call(self._stub.GetMessage, node_pb2.GetMessageRequest(message_id=message_id))

    def save_attachments(
        self, message_id: str, folder: Path, *, only: int | None = None
    ) -> list[Path]:
        """Write a notice's attachments (or attachment ``only``, from 1) into ``folder``:
        SHA-256 checked first, names made safe, nothing overwritten; the paths written.
        Raises ``AttachmentError``."""
        detail = self.get_message(message_id)
        if not detail.HasField("notice"):
            raise AttachmentError(f"message {message_id} holds no notice")
        return save_attachments(detail.notice, folder, only=only)

    def get_status(self, message_id: str, *, wait_seconds: int = 0) -> node_pb2.MessageStatus:
        """State and timeline; with ``wait_seconds``, first wait for a final state."""
        request = node_pb2.GetStatusRequest(message_id=message_id, wait_seconds=wait_seconds)
        return self._call(self._stub.GetStatus, request, timeout=self._timeout + wait_seconds)

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[Req, Resp],
        request: Req,
        timeout: float | None = None,
    ) -> Resp:
        try:
            return method(request, timeout=timeout or self._timeout)
        except grpc.RpcError as error:
            raise _translate(error) from None


def _new_key() -> str:
    """A fresh idempotency key: one per call of a sending method, kept across its retries."""
    return f"lib-{uuid.uuid4()}"


def _passphrase(given: Passphrase | str | None) -> Passphrase:
    if isinstance(given, Passphrase):
        return given
    secret = given if given is not None else os.environ.get(PASSPHRASE_VARIABLE)
    if not secret:
        raise KeyStoreError(
            f"the credential's key is sealed: pass its passphrase or set {PASSPHRASE_VARIABLE}"
        )
    return Passphrase(secret)


def _translate(error: grpc.RpcError) -> ClientError:
    code = error.code()
    details = error.details()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return RequestRejected(details)
    if code == grpc.StatusCode.NOT_FOUND:
        return MessageNotFound(details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"the request is too large ({code.name}): {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(f"refused by the node ({code.name}): {details}")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # UNAVAILABLE is also the node's answer while its storage is unavailable.
        return NodeUnavailable(
            f"the node's local API is unreachable or unavailable ({code.name}): {details}; "
            "is `liaison serve` running for this home?"
        )
    if code == grpc.StatusCode.INTERNAL:
        return ClientError(f"the node failed ({code.name}): {details}")
    return ClientError(f"the node answered {code.name}: {details}")
