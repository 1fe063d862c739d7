"""A case notice built from plain arguments, and checked before anything is sent::

    notice = build_notice(
        case_reference="RABAT-2026-118",
        subject="Victims recruited with false job offers",
        body="...",
        category=Category.HUMAN_TRAFFICKING,
        priority="urgent",
        handling="amber+strict",
        attachments=["statement.pdf", attachment(b"...", name="notes.txt")],
    )

The node completes what is its own to fill: the originator's agency id, the time
the notice was made and the identity that sends it.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import mimetypes
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from liaison.client.errors import InvalidNotice, UsageError
from liaison.client.types import Category, Priority, Tlp
from liaison.keys.notice import notice_problems
from liaison.v1 import notice_pb2

__all__ = ["attachment", "build_notice", "check_notice"]

# Stands in for the originator agency the node fills in, while the notice is checked.
_PLACEHOLDER_AGENCY = "XX.PLACEHOLDER"
DEFAULT_MEDIA_TYPE = "application/octet-stream"
E = TypeVar("E", bound=enum.IntEnum)


def attachment(
    source: bytes | str | Path, *, name: str | None = None, media_type: str | None = None
) -> notice_pb2.Attachment:
    """An attachment of ``source``: bytes, or the path of a file to read.

    ``name`` defaults to the file's name (bytes need one); ``media_type`` is guessed
    from the name (``mimetypes``), else ``application/octet-stream``. The SHA-256 is
    that of the content. Raises ``UsageError`` if the file cannot be read.
    """
    if isinstance(source, bytes):
        content = source
        name = name or ""
    else:
        path = Path(source).expanduser()
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"attachment {path} cannot be read: {exc.strerror}") from exc
        name = name or path.name
    guessed = mimetypes.guess_type(name, strict=False)[0] if name else None
    return notice_pb2.Attachment(
        name=name,
        media_type=media_type or guessed or DEFAULT_MEDIA_TYPE,
        content=content,
        sha256=hashlib.sha256(content).digest(),
    )


def build_notice(
    *,
    case_reference: str,
    subject: str,
    category: Category | str | int,
    priority: Priority | str | int,
    handling: Tlp | str | int,
    body: str = "",
    subjects: Iterable[notice_pb2.Subject] = (),
    attachments: Iterable[notice_pb2.Attachment | str | Path] = (),
    references: Iterable[str] = (),
    readers: Iterable[str] = (),
    forwardable_to: Iterable[str] = (),
    evaluation: notice_pb2.Evaluation | None = None,
    unit: str = "",
    officer: str = "",
) -> notice_pb2.CaseNotice:
    """A ``CaseNotice`` to pass to ``send_notice``, valid by ``liaison.keys.notice``.

    ``category``, ``priority`` and ``handling`` take an enum of ``liaison.client``,
    its name (``"HUMAN_TRAFFICKING"``, ``"human-trafficking"``, ``"amber+strict"``,
    ``"TLP:RED"``) or its number. An attachment is the path of a file, or an
    ``Attachment`` such as ``attachment(data, name="notes.txt")`` makes. ``references`` are
    message ids this notice follows up; ``readers`` (TLP:RED only, and then at least
    one) the identities of the receiving node who may read it; ``forwardable_to`` the
    agencies its recipient may forward it to.

    Raises ``InvalidNotice`` naming every problem (nothing is sent, the node is not
    asked), or ``UsageError`` if an attachment file cannot be read.
    """
    notice = notice_pb2.CaseNotice(
        case_reference=case_reference,
        subject=subject,
        body=body,
        category=_member(Category, category, "category"),
        priority=_member(Priority, priority, "priority"),
        handling=_member(Tlp, handling, "handling"),
        subjects=list(subjects),
        attachments=[
            one if isinstance(one, notice_pb2.Attachment) else attachment(one)
            for one in attachments
        ],
        references=list(references),
        readers=list(readers),
        forwardable_to=list(forwardable_to),
        originator=notice_pb2.Originator(unit=unit, officer=officer),
    )
    if evaluation is not None:
        notice.evaluation.CopyFrom(evaluation)
    check_notice(notice)
    return notice


def check_notice(notice: notice_pb2.CaseNotice) -> None:
    """``InvalidNotice`` with every problem of ``notice`` as its node will check it, once
    completed (originator agency and creation time filled in where unset)."""
    completed = notice_pb2.CaseNotice()
    completed.CopyFrom(notice)
    if not completed.originator.agency_id:
        completed.originator.agency_id = _PLACEHOLDER_AGENCY
    if not completed.HasField("created_at"):
        completed.created_at.FromDatetime(dt.datetime.now(dt.UTC).replace(microsecond=0))
    problems = notice_problems(completed)
    if problems:
        raise InvalidNotice("invalid notice: " + "; ".join(problems), tuple(problems))


def _member(kind: type[E], value: E | str | int, field: str) -> Any:
    """``value`` as a member of ``kind``: given as one, by name or label, or by number."""
    if isinstance(value, kind):
        return value
    try:
        if isinstance(value, str):
            name = value.strip().upper().removeprefix("TLP:")
            return kind[name.replace("-", "_").replace("+", "_").replace(" ", "_")]
        return kind(value)
    except (KeyError, ValueError):
        known = ", ".join(m.name.lower().replace("_", "-") for m in kind if m.value)
        problem = f"{field} {value!r} is not one of {known}"
        raise InvalidNotice(f"invalid notice: {problem}", (problem,)) from None
