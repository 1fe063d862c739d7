"""A notice written in a TOML file, so that nothing it says is on a command line.

Command lines are visible to every user of the machine (``ps``) and stay in
shell histories; a case reference or subject does not belong there.
``liaison send --notice FILE`` (or ``-`` for standard input) reads::

    case_reference = "CCPI-2026-0412"
    category = "migrant-smuggling"
    tlp = "amber"
    priority = "urgent"                  # optional, default routine
    subject = "Crossing network"
    body = '''
    Text of the notice.
    '''
    source_reliability = "b"             # optional, default x
    information = "2"                    # optional, default 4
    references = ["0194…"]               # optional: earlier message ids
    attachments = ["scan.pdf"]           # optional: paths, relative to the file
    readers = ["amrani"]                 # TLP:RED only: who at the recipient may read it
    forwardable_to = ["FR.DGPN.SCCOPOL"] # optional: agencies it may be forwarded to
    unit = "CCPI Rabat"                  # optional
    officer = "duty officer"             # optional

Options given on the command line win over the file.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liaison.client.errors import UsageError

_TEXT = (
    "case_reference",
    "category",
    "tlp",
    "priority",
    "subject",
    "body",
    "source_reliability",
    "information",
    "unit",
    "officer",
)
_LISTS = ("references", "attachments", "readers", "forwardable_to")


@dataclass(frozen=True)
class NoticeFile:
    """What a notice file gives; ``None`` where it is silent."""

    text: dict[str, str] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    attachments: list[Path] = field(default_factory=list)
    readers: list[str] = field(default_factory=list)
    forwardable_to: list[str] = field(default_factory=list)


def load_notice_file(path: str) -> NoticeFile:
    """Read and check a notice file; raises ``UsageError`` naming the problem."""
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read the notice file {path}: {exc}") from exc
    unknown = sorted(set(data) - set(_TEXT) - set(_LISTS))
    if unknown:
        raise UsageError(f"the notice file {path} has unknown keys: {', '.join(unknown)}")
    text: dict[str, str] = {}
    for key in _TEXT:
        if key in data:
            text[key] = _string(path, key, data[key])
    lists = {key: _strings(path, key, data.get(key, [])) for key in _LISTS}
    base = Path.cwd() if path == "-" else Path(path).parent
    return NoticeFile(
        text=text,
        references=lists["references"],
        attachments=[base / name for name in lists["attachments"]],
        readers=lists["readers"],
        forwardable_to=lists["forwardable_to"],
    )


def _string(path: str, key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # information = 2 reads as well as "2"
    if not isinstance(value, str):
        raise UsageError(f"the notice file {path}: {key} must be a string")
    return value


def _strings(path: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"the notice file {path}: {key} must be a list of strings")
    return list(value)
