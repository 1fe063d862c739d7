"""What ``LiaisonClient`` and ``AsyncLiaisonClient`` share: credentials and channel
settings, the requests they make, the results they return and the errors they raise.
Plain functions; the calls themselves (blocking or awaited) are each client's."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import grpc

from liaison.client.attachments import AttachmentError
from liaison.client.errors import (
    ClientError,
    InvalidNotice,
    MessageNotFound,
    NodeUnavailable,
    PermissionDenied,
    RequestRejected,
    ResourceExhausted,
    UsageError,
)
from liaison.client.types import AckStatus, AttachmentInfo, RecipientResult, SendResult, State
from liaison.keys.credentials import API_SERVER_NAME, ClientCredential
from liaison.keys.errors import KeyStoreError
from liaison.keys.sealed import PASSPHRASE_VARIABLE, Passphrase, Unlocker
from liaison.server.config import ConfigError, Limits, api_target, load_config
from liaison.v1 import node_pb2, notice_pb2

DEFAULT_TIMEOUT_SECONDS = 30.0
# The largest answer accepted from the node. A notice fills at most one envelope, and
# the node answers at most ``Limits.max_grpc_message_bytes`` (16 MiB and 64 KiB by
# default; gRPC's own default of 4 MiB would refuse a large notice). ``from_home`` raises
# it to the node's own figure if that home's limits are higher still.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# Sends (and acknowledgements, replies, forwards) are retried this many times after the
# node was unreachable or slow, with the same idempotency key; pauses double from the
# first, with jitter, up to the last.
SEND_RETRIES = 2
SEND_RETRY_SECONDS = 1.0
# The longest pause between two attempts (of a send, or of a watch reconnecting).
MAX_BACKOFF_SECONDS = 30.0
# Prefixes of the node's INVALID_ARGUMENT messages for a notice that breaks the rules.
_INVALID_NOTICE_PREFIXES = ("invalid notice: ", "invalid reply: ")

EnumValue = Any  # an IntEnum member or the wire's number: protobuf takes either


def credential_from_dir(
    folder: str | Path, passphrase: Passphrase | str | None
) -> ClientCredential:
    """The credential in ``folder``, its key opened; ``KeyStoreError`` if it does not."""
    unlocker = Unlocker(_passphrase(passphrase))
    return ClientCredential.load(Path(folder).expanduser(), unlocker)


def credential_from_home(
    home: str | Path, identity: str, passphrase: Passphrase | str | None
) -> tuple[ClientCredential, int]:
    """The credential ``init`` (or ``users add``) issued into ``home/credentials/<identity>``,
    aimed at where the home's config says the API listens now (its port may have changed
    since the credential was issued), and the largest answer to accept from that node."""
    home = Path(home).expanduser()
    credential = credential_from_dir(home / "credentials" / identity, passphrase)
    try:
        config = load_config(home)
    except ConfigError:
        return credential, max_answer_bytes(Limits())
    target = api_target(config.api_listen)
    return dataclasses.replace(credential, target=target), max_answer_bytes(config.limits)


def max_answer_bytes(limits: Limits) -> int:
    """What the client accepts from a node with ``limits``: never less than it sends."""
    return max(MAX_ANSWER_BYTES, limits.max_grpc_message_bytes)


def channel_credentials(credential: ClientCredential) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=credential.ca_certificate,
        private_key=credential.private_key,
        certificate_chain=credential.certificate,
    )


def channel_options(max_answer: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.ssl_target_name_override", API_SERVER_NAME),
        ("grpc.max_receive_message_length", max_answer),
    ]


def _passphrase(given: Passphrase | str | None) -> Passphrase:
    if isinstance(given, Passphrase):
        return given
    secret = given if given is not None else os.environ.get(PASSPHRASE_VARIABLE)
    if not secret:
        raise KeyStoreError(
            f"the credential's key is sealed: pass its passphrase or set {PASSPHRASE_VARIABLE}"
        )
    return Passphrase(secret)


def new_key() -> str:
    """A fresh idempotency key: one per call of a sending method, kept across its retries."""
    return f"lib-{uuid.uuid4()}"


def backoff_seconds(attempt: int) -> float:
    """The pause before retry ``attempt`` (from 0): doubling, with up to 25% jitter so that
    clients that lost the node together do not come back together."""
    pause = min(SEND_RETRY_SECONDS * 2.0**attempt, MAX_BACKOFF_SECONDS)
    return pause * (1 + random.random() / 4)  # noqa: S311 - jitter, not a secret


def send_request(
    recipient: str | Sequence[str],
    notice: notice_pb2.CaseNotice,
    ttl_seconds: int,
    wait_seconds: int,
    idempotency_key: str | None,
) -> node_pb2.SendNoticeRequest:
    several = not isinstance(recipient, str)
    return node_pb2.SendNoticeRequest(
        recipient="" if several else str(recipient),
        recipients=list(recipient) if several else [],
        notice=notice,
        ttl_seconds=ttl_seconds,
        wait_seconds=wait_seconds,
        idempotency_key=idempotency_key or new_key(),
    )


def acknowledge_request(
    message_id: str, status: AckStatus | str | int, comment: str, idempotency_key: str | None
) -> node_pb2.AcknowledgeRequest:
    if isinstance(status, str):
        try:
            status = AckStatus[status.upper().replace("-", "_")]
        except KeyError:
            raise UsageError(f"no acknowledgement status {status!r}") from None
    return node_pb2.AcknowledgeRequest(
        message_id=message_id,
        status=cast(EnumValue, status),
        comment=comment,
        idempotency_key=idempotency_key or new_key(),
    )


def reply_request(
    message_id: str, notice: notice_pb2.CaseNotice, ttl_seconds: int, idempotency_key: str | None
) -> node_pb2.ReplyRequest:
    return node_pb2.ReplyRequest(
        message_id=message_id,
        notice=notice,
        ttl_seconds=ttl_seconds,
        idempotency_key=idempotency_key or new_key(),
    )


def forward_request(
    message_id: str,
    to: str,
    *,
    readers: Sequence[str],
    comment: str,
    ttl_seconds: int,
    idempotency_key: str | None,
) -> node_pb2.ForwardRequest:
    return node_pb2.ForwardRequest(
        message_id=message_id,
        recipient=to,
        readers=list(readers),
        comment=comment,
        ttl_seconds=ttl_seconds,
        idempotency_key=idempotency_key or new_key(),
    )


def list_request(
    direction: EnumValue, limit: int, cursor: str, filters: Mapping[str, Any]
) -> node_pb2.ListMessagesRequest:
    try:
        return node_pb2.ListMessagesRequest(
            direction=direction, limit=limit, cursor=cursor, **filters
        )
    except (ValueError, TypeError) as error:
        raise UsageError(f"invalid listing filter: {error}") from None


def message_request(message_id: str, attachment_content: bool = True) -> node_pb2.GetMessageRequest:
    return node_pb2.GetMessageRequest(
        message_id=message_id, without_attachment_content=not attachment_content
    )


def send_result(response: node_pb2.SendNoticeResponse) -> SendResult:
    return SendResult(
        response.message_id,
        State.of(response.state),
        response.reason,
        notice_id=response.notice_id,
        recipients=[
            RecipientResult(one.recipient, one.message_id, State.of(one.state), one.reason)
            for one in response.recipients
        ],
    )


def attachment_info(first: node_pb2.AttachmentChunk) -> AttachmentInfo:
    return AttachmentInfo(first.name, first.media_type, first.size, first.sha256)


def attachment_numbers(detail: node_pb2.MessageDetail, only: int | None) -> list[int]:
    """The 1-based numbers of the attachments to save; ``AttachmentError`` if ``only`` is
    not one of them or the message holds no notice (any more)."""
    if not detail.HasField("notice"):
        raise AttachmentError(f"message {detail.summary.message_id} holds no notice")
    count = len(detail.notice.attachments)
    if only is None:
        return list(range(1, count + 1))
    if not 1 <= only <= count:
        raise AttachmentError(f"there is no attachment {only}; the notice has {count}", number=only)
    return [only]


class ChunkCheck:
    """The size and SHA-256 of a streamed attachment, checked as its chunks go by."""

    def __init__(self, number: int, info: AttachmentInfo) -> None:
        self._number = number
        self._info = info
        self._digest = hashlib.sha256()
        self._size = 0

    def add(self, data: bytes) -> bytes:
        """``data``, counted; ``AttachmentError`` once past the size announced."""
        self._size += len(data)
        if self._size > self._info.size:
            raise AttachmentError(
                f"attachment {self._number} is longer than the {self._info.size} bytes announced",
                number=self._number,
            )
        self._digest.update(data)
        return data

    def verify(self) -> None:
        """``AttachmentError`` unless the bytes seen are the attachment announced."""
        if self._size != self._info.size or self._digest.digest() != self._info.sha256:
            raise AttachmentError(
                f"attachment {self._number} does not match its size or SHA-256",
                number=self._number,
            )


def translate(error: grpc.RpcError, target: str = "") -> ClientError:
    """The library's error for a call the node (or the transport) ended with ``error``
    (``target``: the address the call went to, named when it could not get through)."""
    code: grpc.StatusCode = error.code()
    details = error.details() or ""
    fields = {"code": code.name, "details": details}
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        for prefix in _INVALID_NOTICE_PREFIXES:
            if details.startswith(prefix):
                problems = tuple(details.removeprefix(prefix).split("; "))
                return InvalidNotice(details, problems, **fields)
        return RequestRejected(details, **fields)
    if code == grpc.StatusCode.NOT_FOUND:
        return MessageNotFound(details, **fields)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"the request is too large ({code.name}): {details}", **fields)
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return PermissionDenied(f"refused by the node ({code.name}): {details}", **fields)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # UNAVAILABLE is also the node's answer while its storage is unavailable.
        return NodeUnavailable(
            f"the node's local API{' at ' + target if target else ''} is unreachable or "
            f"unavailable ({code.name}): {details}; is its node running (`liaison serve`)?",
            **fields,
        )
    if code == grpc.StatusCode.INTERNAL:
        return ClientError(f"the node failed ({code.name}): {details}", **fields)
    return ClientError(f"the node answered {code.name}: {details}", **fields)
