"""Saving a notice's attachments as files, under names the client makes itself.

An attachment comes from another agency: its name is a label a peer wrote
(``../../etc/passwd``, ``invoice\\u202efdp.exe``), never a path, and its
content is checked against its SHA-256 before a byte of it is written. Files
are only ever created, never overwritten, and never through a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import unicodedata
from pathlib import Path

from liaison.client.errors import ClientError
from liaison.keys.text import control_characters
from liaison.v1 import notice_pb2

__all__ = ["AttachmentError", "safe_file_name", "save_attachments"]

# Bytes of UTF-8, under the 255 of common file systems with room for " (100)".
MAX_NAME_BYTES = 200
# A suffix longer than this is part of the name, not an extension to keep.
MAX_EXTENSION_CHARS = 16
# "name (2).ext" up to "name (100).ext"; past that, saving fails rather than searching on.
MAX_COPIES = 100

_DIRECTORY_SEPARATORS = re.compile(r"[/\\]")
_KEPT_PUNCTUATION = frozenset(" ._-()[]+,")
# Unicode letters, combining marks and decimal digits: officers' names are not all ASCII.
_KEPT_CATEGORIES = frozenset(["Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Nd"])
# Names Windows gives to devices, whatever the extension: files may move to a share.
_WINDOWS_DEVICES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{n}" for n in range(1, 10)]
    + [f"LPT{n}" for n in range(1, 10)]
)


class AttachmentError(ClientError):
    """An attachment could not be saved: its content does not match its SHA-256, the
    number asked for does not exist, the folder is not a directory, or writing failed.

    ``number`` is the attachment's 1-based number, where one is concerned;
    ``written`` the files saved before the error, which stay.
    """

    def __init__(
        self, message: str, *, number: int | None = None, written: tuple[Path, ...] = ()
    ) -> None:
        super().__init__(message)
        self.number = number
        self.written = written


def safe_file_name(name: str, number: int) -> str:
    """A file name made from attachment ``number``'s ``name``, safe to create in a folder.

    The directory part (up to the last ``/`` or ``\\``) and every control or
    bidi character (``liaison.keys.text``) are dropped; a character other than
    a letter, a combining mark, a decimal digit or one of `` ._-()[]+,``
    becomes ``_``; leading and trailing dots and spaces are dropped (no hidden
    file, no ``.`` or ``..``); the result is cut to ``MAX_NAME_BYTES`` of UTF-8
    keeping a short extension, and a Windows device name (``CON``, ``NUL.txt``)
    gets a leading ``_``. When nothing is left, the name is
    ``attachment-<number>``. The same ``name`` always gives the same result.
    """
    base = _DIRECTORY_SEPARATORS.split(name)[-1]
    base = unicodedata.normalize("NFC", control_characters().sub("", base))
    base = "".join(char if _is_kept(char) else "_" for char in base).strip(". ")
    stem, suffix = _split_extension(base)
    stem = _cut(stem, MAX_NAME_BYTES - len(suffix.encode())).rstrip(". ")
    if not stem:
        return f"attachment-{number}"
    if stem.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES:
        stem = f"_{stem}"
    return stem + suffix


def save_attachments(
    notice: notice_pb2.CaseNotice, folder: Path, *, only: int | None = None
) -> list[Path]:
    """Write the notice's attachments (all, or only the 1-based number ``only``) into
    ``folder`` and return the paths written, in attachment order.

    Every attachment to save is checked against its SHA-256 before any is
    written. Each file is new (``O_EXCL``, mode 0600, never through a
    symbolic link) and synced; a name already taken becomes ``name (2).ext``,
    ``name (3).ext`` and so on. Nothing but these files is created.

    Raises ``AttachmentError`` if ``only`` is not an attachment's number,
    ``folder`` is not an existing directory, an attachment does not match its
    SHA-256 (naming its number; then nothing is written), or a write fails.
    """
    numbered = list(enumerate(notice.attachments, 1))
    if only is not None:
        if not 1 <= only <= len(numbered):
            raise AttachmentError(
                f"there is no attachment {only}; the notice has {len(numbered)}", number=only
            )
        numbered = [numbered[only - 1]]
    for number, attachment in numbered:
        if hashlib.sha256(attachment.content).digest() != attachment.sha256:
            raise AttachmentError(
                f"attachment {number} does not match its SHA-256; nothing was saved",
                number=number,
            )
    directory = _open_directory(folder)
    written: list[Path] = []
    try:
        for number, attachment in numbered:
            try:
                name = _create(directory, safe_file_name(attachment.name, number), attachment)
            except OSError as exc:
                raise AttachmentError(
                    f"attachment {number} could not be saved in {folder}: {exc.strerror}",
                    number=number,
                    written=tuple(written),
                ) from exc
            written.append(folder / name)
        _sync_directory(directory, folder, written)
    finally:
        os.close(directory)
    return written


def _is_kept(char: str) -> bool:
    """A letter, a combining mark (Devanagari and Arabic names need them), a decimal
    digit, or one of the few punctuation characters kept."""
    return char in _KEPT_PUNCTUATION or unicodedata.category(char) in _KEPT_CATEGORIES


def _split_extension(name: str) -> tuple[str, str]:
    """``("report", ".pdf")``; ``(name, "")`` when the suffix is missing or too long."""
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > MAX_EXTENSION_CHARS:
        return name, ""
    return stem, f".{extension}"


def _cut(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    return text.encode()[:max_bytes].decode(errors="ignore")


def _open_directory(folder: Path) -> int:
    """A descriptor of ``folder``, so every file lands in the directory checked here."""
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise AttachmentError(f"{folder} is not an existing folder: {exc.strerror}") from exc


def _create(directory: int, name: str, attachment: notice_pb2.Attachment) -> str:
    """Create a new file for ``attachment`` in ``directory`` and return its name.

    ``O_EXCL`` fails on any existing entry, a symbolic link included (dangling
    or not), so a planted link or a file made meanwhile is skipped, never
    written through; a file only partly written is removed.
    """
    stem, suffix = _split_extension(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for copy in range(1, MAX_COPIES + 1):
        candidate = name if copy == 1 else f"{stem} ({copy}){suffix}"
        try:
            fd = os.open(candidate, flags, 0o600, dir_fd=directory)
        except FileExistsError:
            continue
        try:
            _write_all(fd, attachment.content)
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(candidate, dir_fd=directory)
            raise
        finally:
            os.close(fd)
        return candidate
    raise OSError(errno.EEXIST, f"{MAX_COPIES} files of that name exist already")


def _sync_directory(directory: int, folder: Path, written: list[Path]) -> None:
    """Make the new names durable, as ``fsync`` of each file made their content."""
    try:
        os.fsync(directory)
    except OSError as exc:
        raise AttachmentError(
            f"{folder} could not be synced: {exc.strerror}", written=tuple(written)
        ) from exc


def _write_all(fd: int, content: bytes) -> None:
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view) :]
