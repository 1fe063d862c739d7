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
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from liaison.client.errors import ClientError
from liaison.client.types import AttachmentInfo
from liaison.keys.text import control_characters
from liaison.v1 import notice_pb2

__all__ = ["AttachmentError", "AttachmentFile", "safe_file_name", "save_attachments"]

# Bytes of UTF-8, under the 255 of common file systems with room for " (100)".
MAX_NAME_BYTES = 200
# A suffix longer than this is part of the name, not an extension to keep.
MAX_EXTENSION_CHARS = 16
# "name (2).ext" up to "name (100).ext"; past that, saving fails rather than searching on.
MAX_COPIES = 100

# A new file: never an existing entry, never through a symbolic link.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# The hidden file an attachment received in parts is written to before it is named.
PARTIAL_PREFIX = ".liaison-partial-"

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
    notice: notice_pb2.CaseNotice, folder: str | Path, *, only: int | None = None
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
    folder = Path(folder)
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


class AttachmentFile:
    """One attachment received in parts (``GetAttachment``), saved by the rules above.

    Its bytes go to a hidden temporary file in ``folder`` (``.liaison-partial-…``:
    new, mode 0600, never through a symbolic link). ``finish`` checks their size
    and SHA-256 against ``info`` and only then names the file (``safe_file_name``;
    ``name (2).ext`` and so on when taken, by a hard link, so nothing is ever
    overwritten) and syncs it. A mismatch, a failed write, or leaving the ``with``
    block without ``finish`` removes the temporary file: nothing is left.

    Raises ``AttachmentError`` (naming attachment ``number``) for each of these.
    """

    def __init__(self, folder: str | Path, number: int, info: AttachmentInfo) -> None:
        self.folder = Path(folder)
        self.number = number
        self.info = info
        self._digest = hashlib.sha256()
        self._size = 0
        self._temporary = PARTIAL_PREFIX + uuid.uuid4().hex
        self._directory = _open_directory(self.folder)
        try:
            self._fd: int | None = os.open(
                self._temporary, _NEW_FILE, 0o600, dir_fd=self._directory
            )
        except OSError as exc:
            os.close(self._directory)
            raise self._failed(exc) from exc

    def __enter__(self) -> AttachmentFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.discard()

    def write(self, data: bytes) -> None:
        """Append ``data``; refused once the bytes exceed the size announced."""
        assert self._fd is not None, "written after finish or discard"
        self._size += len(data)
        if self._size > self.info.size:
            self.discard()
            raise AttachmentError(
                f"attachment {self.number} is longer than the {self.info.size} bytes "
                "announced; nothing was saved",
                number=self.number,
            )
        self._digest.update(data)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self.discard()
            raise self._failed(exc) from exc

    def finish(self) -> Path:
        """Check the bytes written against ``info``; name and sync the file; its path."""
        assert self._fd is not None, "finished twice or after discard"
        if self._size != self.info.size or self._digest.digest() != self.info.sha256:
            self.discard()
            raise AttachmentError(
                f"attachment {self.number} does not match its size or SHA-256; nothing was saved",
                number=self.number,
            )
        try:
            os.fsync(self._fd)
            name = _link(
                self._directory, self._temporary, safe_file_name(self.info.name, self.number)
            )
            os.unlink(self._temporary, dir_fd=self._directory)
            os.fsync(self._directory)
        except OSError as exc:
            self.discard()
            raise self._failed(exc) from exc
        self._close()
        return self.folder / name

    def discard(self) -> None:
        """Remove the temporary file unless ``finish`` named it; safe to call again."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temporary, dir_fd=self._directory)
        self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            os.close(self._directory)
            self._fd = None

    def _failed(self, exc: OSError) -> AttachmentError:
        return AttachmentError(
            f"attachment {self.number} could not be saved in {self.folder}: {exc.strerror}",
            number=self.number,
        )


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
    for candidate in _candidates(name):
        try:
            fd = os.open(candidate, _NEW_FILE, 0o600, dir_fd=directory)
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


def _link(directory: int, source: str, name: str) -> str:
    """Give the file ``source`` of ``directory`` the first free name from ``name`` and
    return it: a hard link, which like ``O_EXCL`` never replaces an existing entry."""
    for candidate in _candidates(name):
        try:
            os.link(source, candidate, src_dir_fd=directory, dst_dir_fd=directory)
        except FileExistsError:
            continue
        return candidate
    raise OSError(errno.EEXIST, f"{MAX_COPIES} files of that name exist already")


def _candidates(name: str) -> Iterator[str]:
    """``name``, then ``name (2).ext`` up to ``name (100).ext``."""
    stem, suffix = _split_extension(name)
    yield name
    for copy in range(2, MAX_COPIES + 1):
        yield f"{stem} ({copy}){suffix}"


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
