"""Signed checkpoints of an append-only audit log, in the C2SP formats.

A checkpoint (c2sp.org/tlog-checkpoint) is a log's tree head as lines of text:
its origin, its size in leaves, and the base64 RFC 9162 root hash, then any
extension lines (we write none, but read them). It travels as a signed note
(c2sp.org/signed-note): the text, an empty line, and one line per signature,
``— <key name> <base64(4-byte key ID || signature)>``. Witnesses append their
cosignature lines (c2sp.org/tlog-cosignature) to the same note.

Key IDs and signature types
    key ID = SHA-256(key name || 0x0A || signature type || public key)[:4]

    * The log's Ed25519 signature over the note text: type 0x01 (signed-note).
    * A witness's cosignature: type 0x04 (tlog-cosignature). Ed25519 over
      ``cosignature/v1\\ntime <seconds>\\n`` followed by the note text; the
      line holds key ID || 8-byte big-endian seconds || signature.
    * The log's ML-DSA-65 signature over the note text, beside the Ed25519 one
      when the log has an ML-DSA-65 key. signed-note assigns ML-DSA-65 no type
      byte (tlog-cosignature's 0x06 is ML-DSA-44 over a binary "subtree/v1"
      message, neither our algorithm nor our message), so the type is 0xff, the
      byte signed-note reserves for types without one, followed as it recommends
      by a longer identifier: ``liaison-exchange/v1/checkpoint-mldsa65``, the
      same string that is passed to ML-DSA as its context. The key ID hashes
      name || 0x0A || 0xff || that identifier || the 1,952-byte public key
      (``CHECKPOINT_MLDSA65_SIGNATURE_TYPE``).

    A log's key name is its origin, ``liaison-exchange/v1/audit-log/<agency
    id>``; a witness's is ``liaison-exchange/v1/witness/<agency id>``.
    Verification needs the expected key's Ed25519 line, and its ML-DSA-65 line
    when the caller gives an ML-DSA-65 key. Lines under other names or key IDs
    are kept and ignored, as signed-note requires; a line under the expected
    name and key ID that fails to verify rejects the whole note.

Why the node's one Ed25519 key may sign checkpoints (domain separation)
    The same key signs envelopes, receipts and cards, and each of those inputs
    begins with a ``liaison-exchange/v1/...`` label and a 0x00 byte
    (liaison.keys.labels). Here it signs only note texts and cosignature
    messages, and neither can hold a 0x00 byte: every constructor and parser
    below refuses one. So no checkpoint signature or cosignature is a valid
    signature over anything else the node signs, nor the reverse. Between the
    two kinds here: a cosignature message's second line is ``time <seconds>``,
    never the bare decimal a checkpoint's second line must be, so a node acting
    as log and as witness cannot have one taken for the other. ML-DSA-65
    signatures are kept apart by their context parameter.

Strictness (stricter than the specs where they allow a choice)
    A note is valid UTF-8 with no NUL, no control character but the line feed
    (nor DEL, C1, bidi controls or U+2028/U+2029: liaison.keys.text's one-line
    set), at most ``NoteLimits.max_note_bytes`` bytes and
    ``NoteLimits.max_signatures`` signature lines. A tree size is ASCII decimal
    without a leading zero, below 2**64; the root hash and every signature line
    are canonical standard base64, the root exactly 32 bytes. Each field has one
    encoding, so ``parse_body(body).body() == body``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from liaison.keys.errors import CheckpointError
from liaison.keys.ids import is_agency_id
from liaison.keys.labels import (
    AUDIT_LOG_ORIGIN_PREFIX,
    CHECKPOINT_MLDSA65_CONTEXT,
    CHECKPOINT_MLDSA65_SIGNATURE_TYPE,
    COSIGNATURE_V1_HEADER,
    WITNESS_KEY_NAME_PREFIX,
)
from liaison.keys.text import code_point, first_control_character

__all__ = [
    "DEFAULT_LIMITS",
    "Checkpoint",
    "Note",
    "NoteLimits",
    "NoteSignature",
    "add_signatures",
    "cosign",
    "cosignature_key_id",
    "ed25519_key_id",
    "mldsa65_key_id",
    "origin_of",
    "parse_body",
    "parse_note",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_cosignature",
    "witness_name",
]

ED25519_SIGNATURE_TYPE = b"\x01"
COSIGNATURE_SIGNATURE_TYPE = b"\x04"
KEY_ID_BYTES = 4
ROOT_HASH_BYTES = 32
TIMESTAMP_BYTES = 8
ED25519_SIGNATURE_BYTES = 64
MAX_TREE_SIZE = 2**64 - 1
MAX_TIMESTAMP = 2**63 - 1  # tlog-cosignature's bound on a cosignature's time
_MAX_TREE_SIZE_DIGITS = len(str(MAX_TREE_SIZE))
_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class NoteLimits:
    """Bounds on every signed note read or written here.

    signed-note requires accepting at least 16 signatures and warns that
    post-quantum ones near 5 kB: 16 ML-DSA-65 lines (3,313 bytes, 4,420 base64
    characters each) make about 72 kB, which the byte limit admits.
    """

    max_note_bytes: int = 128 * 1024
    max_signatures: int = 16


DEFAULT_LIMITS = NoteLimits()


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, size in leaves, RFC 9162 root hash, extension lines.

    Construction checks every field (raising ``CheckpointError``), so ``body()``
    is always a note text that ``parse_body`` accepts and returns unchanged.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "the origin")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"the tree size {self.size} is not between 0 and 2**64 - 1")
        if len(self.root) != ROOT_HASH_BYTES:
            raise CheckpointError(f"the root hash is {len(self.root)} bytes, not {ROOT_HASH_BYTES}")
        for number, line in enumerate(self.extensions, start=4):
            _check_line(line, f"extension line {number}")

    def body(self) -> bytes:
        """The note text: each line followed by a line feed."""
        root = base64.b64encode(self.root).decode()
        lines = [self.origin, str(self.size), root, *self.extensions]
        return "".join(line + "\n" for line in lines).encode()


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID, and the signature bytes after the ID.

    Construction refuses (``CheckpointError``) a key name that is empty or holds a
    space, a '+' or a control character, a key ID not 4 bytes long, and an empty
    signature.
    """

    name: str
    key_id: bytes
    signature: bytes

    def __post_init__(self) -> None:
        _check_key_name(self.name)
        if len(self.key_id) != KEY_ID_BYTES:
            raise CheckpointError(f"a key ID is {len(self.key_id)} bytes, not {KEY_ID_BYTES}")
        if not self.signature:
            raise CheckpointError(f"the signature line of {self.name!r} holds no signature")

    def line(self) -> bytes:
        """``— <name> <base64(key ID || signature)>`` and a line feed."""
        value = base64.b64encode(self.key_id + self.signature).decode()
        return f"{_SIGNATURE_PREFIX}{self.name} {value}\n".encode()


@dataclass(frozen=True)
class Note:
    """A signed note: the text the signatures cover (``body``), then its signature lines.

    Construction refuses (``CheckpointError``) a body that is not UTF-8, holds a
    NUL or another control character, or does not end in a line feed, and a note
    without signatures. The body may be any note text, not only a checkpoint.
    """

    body: bytes
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        _check_text(_decode(self.body, "the note text"), "the note text")
        if not self.signatures:
            raise CheckpointError("the note has no signature lines")

    def text(self) -> bytes:
        """The whole signed note: body, an empty line, the signature lines in order."""
        return self.body + b"\n" + b"".join(signature.line() for signature in self.signatures)


def origin_of(agency_id: str) -> str:
    """The origin of an agency's audit-log checkpoints, which is also its log's key name.

    Raises ``CheckpointError`` if ``agency_id`` is not a valid agency id.
    """
    _check_agency_id(agency_id)
    return AUDIT_LOG_ORIGIN_PREFIX + agency_id


def witness_name(agency_id: str) -> str:
    """The key name under which an agency cosigns other logs' checkpoints as a witness.

    Raises ``CheckpointError`` if ``agency_id`` is not a valid agency id.
    """
    _check_agency_id(agency_id)
    return WITNESS_KEY_NAME_PREFIX + agency_id


def ed25519_key_id(name: str, public: ed25519.Ed25519PublicKey) -> bytes:
    """Key ID of an Ed25519 note signer (signature type 0x01)."""
    return _key_id(name, ED25519_SIGNATURE_TYPE, public.public_bytes_raw())


def cosignature_key_id(name: str, public: ed25519.Ed25519PublicKey) -> bytes:
    """Key ID of an Ed25519 witness for tlog-cosignature/v1 (signature type 0x04)."""
    return _key_id(name, COSIGNATURE_SIGNATURE_TYPE, public.public_bytes_raw())


def mldsa65_key_id(name: str, public: mldsa.MLDSA65PublicKey) -> bytes:
    """Key ID of an ML-DSA-65 note signer (0xff and our identifier; see the module doc)."""
    return _key_id(name, CHECKPOINT_MLDSA65_SIGNATURE_TYPE, public.public_bytes_raw())


def parse_body(body: bytes, *, limits: NoteLimits = DEFAULT_LIMITS) -> Checkpoint:
    """The checkpoint a note text states; nothing is verified.

    Raises ``CheckpointError`` naming the fault: over the size limit, not UTF-8,
    no final line feed, fewer than three lines, an empty line, a NUL or another
    control character, a size that is not canonical decimal below 2**64, a root
    hash that is not canonical base64 of 32 bytes.
    """
    if len(body) > limits.max_note_bytes:
        raise CheckpointError(
            f"the checkpoint is {len(body)} bytes, more than the limit of {limits.max_note_bytes}"
        )
    lines = _decode(body, "the checkpoint")[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError(f"the checkpoint has {len(lines)} lines, not at least 3")
    for number, line in enumerate(lines, start=1):
        _check_line(line, f"line {number} of the checkpoint")
    origin, size, root, *extensions = lines
    return Checkpoint(
        origin, _parse_size(size), _decode_base64(root, "the root hash"), tuple(extensions)
    )


def parse_note(data: bytes, *, limits: NoteLimits = DEFAULT_LIMITS) -> Note:
    """Split a signed note into its text and signature lines; nothing is verified.

    The text ends at the note's last empty line (signed-note). Raises
    ``CheckpointError`` naming the fault: over the size limit, not UTF-8, no
    final line feed, a NUL or another control character, no empty line, no
    signature line or more than the limit, a malformed signature line.
    """
    if len(data) > limits.max_note_bytes:
        raise CheckpointError(
            f"the note is {len(data)} bytes, more than the limit of {limits.max_note_bytes}"
        )
    text = _decode(data, "the note")
    _check_text(text, "the note")
    split = text.rfind("\n\n")
    if split < 0:
        raise CheckpointError("the note has no empty line before its signature lines")
    lines = text[split + 2 :].split("\n")[:-1]
    if not lines:
        raise CheckpointError("the note has no signature lines after its last empty line")
    if len(lines) > limits.max_signatures:
        raise CheckpointError(
            f"the note has {len(lines)} signature lines, "
            f"more than the limit of {limits.max_signatures}"
        )
    signatures = tuple(
        _parse_signature_line(line, number) for number, line in enumerate(lines, start=1)
    )
    return Note(text[: split + 1].encode(), signatures)


def sign_checkpoint(
    checkpoint: Checkpoint,
    *,
    name: str,
    ed25519_key: ed25519.Ed25519PrivateKey,
    mldsa65_key: mldsa.MLDSA65PrivateKey | None = None,
) -> bytes:
    """The signed note of ``checkpoint``: its Ed25519 line, then its ML-DSA-65 line if given.

    ``name`` is the log's key name, its origin for our logs. The result is
    accepted by ``parse_note`` under the default limits; raises
    ``CheckpointError`` for an invalid key name or a note over those limits.
    """
    body = checkpoint.body()
    signatures = [
        NoteSignature(name, ed25519_key_id(name, ed25519_key.public_key()), ed25519_key.sign(body))
    ]
    if mldsa65_key is not None:
        signature = mldsa65_key.sign(body, context=CHECKPOINT_MLDSA65_CONTEXT)
        key_id = mldsa65_key_id(name, mldsa65_key.public_key())
        signatures.append(NoteSignature(name, key_id, signature))
    return _checked(Note(body, tuple(signatures)).text(), DEFAULT_LIMITS)


def verify_checkpoint(
    note: bytes,
    *,
    origin: str,
    name: str,
    ed25519_public: ed25519.Ed25519PublicKey,
    mldsa65_public: mldsa.MLDSA65PublicKey | None = None,
    limits: NoteLimits = DEFAULT_LIMITS,
) -> Checkpoint:
    """The checkpoint of a signed note by the log ``name`` whose origin is ``origin``.

    Requires a line under ``name`` and the Ed25519 key's key ID, and with
    ``mldsa65_public`` also one under its ML-DSA-65 key ID; every such line must
    verify over the note text. Other lines are ignored. Raises
    ``CheckpointError`` naming what failed: the note or body format (see
    ``parse_note``, ``parse_body``), a missing or invalid Ed25519 or ML-DSA-65
    signature, or another origin.
    """
    parsed = parse_note(note, limits=limits)
    checkpoint = parse_body(parsed.body, limits=limits)

    def verify_ed25519(signature: bytes) -> None:
        ed25519_public.verify(signature, parsed.body)

    _require_signature(
        parsed, "Ed25519", name, ed25519_key_id(name, ed25519_public), verify_ed25519
    )
    if mldsa65_public is not None:
        mldsa65 = mldsa65_public

        def verify_mldsa65(signature: bytes) -> None:
            mldsa65.verify(signature, parsed.body, context=CHECKPOINT_MLDSA65_CONTEXT)

        key_id = mldsa65_key_id(name, mldsa65_public)
        _require_signature(parsed, "ML-DSA-65", name, key_id, verify_mldsa65)
    if checkpoint.origin != origin:
        raise CheckpointError(
            f"the checkpoint's origin is {checkpoint.origin!r}, not the expected {origin!r}"
        )
    return checkpoint


def cosign(
    checkpoint: Checkpoint | bytes,
    *,
    name: str,
    ed25519_key: ed25519.Ed25519PrivateKey,
    timestamp: int,
) -> NoteSignature:
    """A witness's tlog-cosignature/v1 line for ``checkpoint`` at ``timestamp`` (POSIX seconds).

    ``checkpoint`` may be a ``Checkpoint``, its note text, or a signed note (whose
    own signatures are not checked here: verify it first). Raises
    ``CheckpointError`` for a malformed checkpoint, an invalid key name, or a
    timestamp outside 0 to 2**63 - 1.
    """
    body = _checkpoint_of(checkpoint).body()
    _check_timestamp(timestamp)
    signature = ed25519_key.sign(_cosigned_message(body, timestamp))
    key_id = cosignature_key_id(name, ed25519_key.public_key())
    return NoteSignature(name, key_id, timestamp.to_bytes(TIMESTAMP_BYTES, "big") + signature)


def verify_cosignature(
    checkpoint: Checkpoint | bytes,
    signature: NoteSignature,
    *,
    name: str,
    ed25519_public: ed25519.Ed25519PublicKey,
) -> int:
    """The time (POSIX seconds) at which the witness ``name`` cosigned ``checkpoint``.

    ``checkpoint`` is as for ``cosign``; only the cosignature is checked here.
    Raises ``CheckpointError`` if the line is by another name or key ID, is not a
    timestamp and an Ed25519 signature, or does not verify.
    """
    body = _checkpoint_of(checkpoint).body()
    if signature.name != name:
        raise CheckpointError(f"the cosignature is by {signature.name!r}, not {name!r}")
    expected = cosignature_key_id(name, ed25519_public)
    if signature.key_id != expected:
        raise CheckpointError(
            f"the cosignature's key ID {signature.key_id.hex()} is not that of the "
            f"witness key {name!r} ({expected.hex()})"
        )
    value = signature.signature
    if len(value) != TIMESTAMP_BYTES + ED25519_SIGNATURE_BYTES:
        raise CheckpointError(
            f"the cosignature by {name!r} is {len(value)} bytes, not a timestamp "
            f"and an Ed25519 signature ({TIMESTAMP_BYTES + ED25519_SIGNATURE_BYTES})"
        )
    timestamp = int.from_bytes(value[:TIMESTAMP_BYTES], "big")
    _check_timestamp(timestamp)
    try:
        ed25519_public.verify(value[TIMESTAMP_BYTES:], _cosigned_message(body, timestamp))
    except InvalidSignature as exc:
        raise CheckpointError(f"the cosignature by {name!r} does not verify") from exc
    return timestamp


def add_signatures(
    note: bytes, *signatures: NoteSignature, limits: NoteLimits = DEFAULT_LIMITS
) -> bytes:
    """``note`` with ``signatures`` appended, each unless an identical line is already there.

    ``note`` is a signed note, or a bare note text holding no empty line (a
    checkpoint body) to which the first signatures are added. Existing lines are
    kept as they are; nothing is verified. Raises ``CheckpointError`` if ``note``
    is malformed or the result exceeds ``limits``.
    """
    if b"\n\n" in note:
        parsed = parse_note(note, limits=limits)
        body, kept = parsed.body, list(parsed.signatures)
    else:
        body, kept = note, []
    for signature in signatures:
        if signature not in kept:
            kept.append(signature)
    return _checked(Note(body, tuple(kept)).text(), limits)


def _require_signature(
    note: Note, algorithm: str, name: str, key_id: bytes, verify: Callable[[bytes], None]
) -> None:
    """At least one line under (``name``, ``key_id``), and every such line verifies."""
    lines = [line for line in note.signatures if line.name == name and line.key_id == key_id]
    if not lines:
        others = sorted({line.key_id.hex() for line in note.signatures if line.name == name})
        under = f"; its lines under that name have key IDs {', '.join(others)}" if others else ""
        raise CheckpointError(
            f"the note carries no {algorithm} signature by the key {name!r} "
            f"(key ID {key_id.hex()}){under}"
        )
    for line in lines:
        try:
            verify(line.signature)
        except InvalidSignature as exc:
            raise CheckpointError(
                f"the {algorithm} signature by the key {name!r} does not verify"
            ) from exc


def _checkpoint_of(value: Checkpoint | bytes) -> Checkpoint:
    if isinstance(value, Checkpoint):
        return value
    # A checkpoint body holds no empty line; a signed note always does.
    body = parse_note(value).body if b"\n\n" in value else value
    return parse_body(body)


def _cosigned_message(body: bytes, timestamp: int) -> bytes:
    return COSIGNATURE_V1_HEADER + b"\ntime " + str(timestamp).encode() + b"\n" + body


def _check_timestamp(timestamp: int) -> None:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise CheckpointError(f"the cosignature time {timestamp} is not between 0 and 2**63 - 1")


def _checked(note: bytes, limits: NoteLimits) -> bytes:
    parse_note(note, limits=limits)
    return note


def _key_id(name: str, signature_type: bytes, public_key: bytes) -> bytes:
    _check_key_name(name)
    material = name.encode() + b"\n" + signature_type + public_key
    return hashlib.sha256(material).digest()[:KEY_ID_BYTES]


def _parse_signature_line(line: str, number: int) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise CheckpointError(f"signature line {number} does not start with an em dash and a space")
    parts = line[len(_SIGNATURE_PREFIX) :].split(" ")
    if len(parts) != 2:
        raise CheckpointError(
            f"signature line {number} is not a key name and a signature separated by a space"
        )
    name, value = parts
    raw = _decode_base64(value, f"the signature on line {number}")
    if len(raw) <= KEY_ID_BYTES:
        raise CheckpointError(f"the signature on line {number} is {len(raw)} bytes, only a key ID")
    return NoteSignature(name, raw[:KEY_ID_BYTES], raw[KEY_ID_BYTES:])


def _parse_size(text: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise CheckpointError(f"the tree size {text!r} is not a decimal number")
    if len(text) > 1 and text.startswith("0"):
        raise CheckpointError(f"the tree size {text!r} has a leading zero")
    if len(text) > _MAX_TREE_SIZE_DIGITS:  # before int(), which is slow on long strings
        raise CheckpointError(f"the tree size {text!r} is more than 2**64 - 1")
    return int(text)


def _decode_base64(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError as exc:  # binascii.Error, or a character outside ASCII
        raise CheckpointError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


def _decode(data: bytes, what: str) -> str:
    """``data`` as text: valid UTF-8 ending in a line feed (its lines are checked apart)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{what} is not valid UTF-8 (byte {exc.start})") from exc
    if not text.endswith("\n"):
        raise CheckpointError(f"{what} does not end in a line feed")
    return text


def _check_text(text: str, what: str) -> None:
    """No control character in any line of ``text`` (which ends in a line feed)."""
    for number, line in enumerate(text[:-1].split("\n"), start=1):
        _check_controls(line, f"line {number} of {what}")


def _check_line(line: str, what: str) -> None:
    if not line:
        raise CheckpointError(f"{what} is empty")
    _check_controls(line, what)


def _check_controls(line: str, what: str) -> None:
    if "\x00" in line:
        raise CheckpointError(f"{what} contains a NUL byte")
    char = first_control_character(line)
    if char is not None:
        raise CheckpointError(f"{what} contains the control character {code_point(char)}")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise CheckpointError(f"{what} is not valid UTF-8") from exc


def _check_key_name(name: str) -> None:
    _check_line(name, "a key name")
    if any(char.isspace() or char == "+" for char in name):
        raise CheckpointError(f"the key name {name!r} contains a space or a '+'")


def _check_agency_id(agency_id: str) -> None:
    if not is_agency_id(agency_id):
        raise CheckpointError(f"invalid agency id {agency_id!r}")
