"""Signed checkpoints (keys/checkpoint.py): C2SP tlog-checkpoint, signed-note and
tlog-cosignature.

Known answers come from other implementations' published test data, each with its
source beside it (data only; the code is ours); then round trips, and each refusal
with the reason its error names.
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from liaison.keys.checkpoint import (
    DEFAULT_LIMITS,
    Checkpoint,
    Note,
    NoteLimits,
    NoteSignature,
    add_signatures,
    cosign,
    cosignature_key_id,
    ed25519_key_id,
    mldsa65_key_id,
    origin_of,
    parse_body,
    parse_note,
    sign_checkpoint,
    verify_checkpoint,
    verify_cosignature,
    witness_name,
)
from liaison.keys.errors import CheckpointError

DASH = "\u2014"  # the em dash that starts every signature line
LOG_ID = "MA.DGSN.CCPI"
WITNESS_ID = "DE.BPOL.LO-RABAT"
ORIGIN = "liaison-exchange/v1/audit-log/MA.DGSN.CCPI"
WITNESS = "liaison-exchange/v1/witness/DE.BPOL.LO-RABAT"
ROOT = hashlib.sha256(b"a root").digest()
CHECKPOINT = Checkpoint(ORIGIN, 42, ROOT)
NOW = 1_796_000_000


def _vkey(vkey: str) -> tuple[str, bytes, ed25519.Ed25519PublicKey]:
    """A Go note verifier key ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
    name, key_id, material = vkey.split("+", 2)
    raw = base64.b64decode(material)
    assert raw[0] == 1
    return name, bytes.fromhex(key_id), ed25519.Ed25519PublicKey.from_public_bytes(raw[1:])


def _skey(skey: str) -> ed25519.Ed25519PrivateKey:
    """A Go note signer key ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``."""
    material = base64.b64decode(skey.split("+", 4)[4])
    assert material[0] == 1
    return ed25519.Ed25519PrivateKey.from_private_bytes(material[1:])


def _b64(data: str) -> bytes:
    return base64.b64decode(data)


# golang.org/x/mod, sumdb/note/note_test.go (TestNewSigner, TestSign, TestOpen): the keys of
# PeterNeumann and EnochRoot and their signatures over the same text.
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_PETER_LINE = (
    f"{DASH} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdn"
    "gotpRZb6KE6RyyBwJnAM=\n"
).encode()
GO_ENOCH_LINE = (
    f"{DASH} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGw"
    "nWLox33WWd1RvMc+QQ=\n"
).encode()

# sigsum-go, pkg/checkpoint/checkpoint_test.go (TestGoSumDBCheckpoint): a checkpoint of the
# Go checksum database, "retrieved from https://sum.golang.org/latest, 2024-09-23", and the
# database's key from Go's cmd/go/internal/modfetch/key.go.
SUMDB_NOTE = (
    "go.sum database tree\n30055305\nmXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n\n"
    f"{DASH} sum.golang.org Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevuc"
    "FcAAlWFJJYle3EJlDCrQ+y3A8=\n"
).encode()
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"

# sigsum-go, pkg/checkpoint/checkpoint_test.go (TestCheckpointSigned, TestCheckpointVerify,
# TestCheckpointVerifyCosignatureByKey): the Ed25519 seed 17, 0, ..., 0 signs a checkpoint as
# the log sigsum.org/v1/tree/<hex SHA-256 of its public key> and cosigns the checkpoint of
# example.org/log at time 1234 as the witness example.org/witness. The root hash is the
# bytes 28, 14, 71 and 29 zeros.
SIGSUM_SEED = bytes([17]) + bytes(31)
SIGSUM_ROOT = bytes([28, 14, 71]) + bytes(29)
SIGSUM_ORIGIN = (
    "sigsum.org/v1/tree/e796172b92befd62d9dc67e41c2f5bc9d3100a3023b20b1ca40288dd1c679e69"
)
SIGSUM_NOTE = (
    f"{SIGSUM_ORIGIN}\n10\nHA5HAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n"
    f"{DASH} {SIGSUM_ORIGIN} gJ2ho0n8F8olcerUF1FFdv235A/5as/coWrpLrtE7ovMeP5whgwouYExowG/lTznx"
    "u6OUGjjt5yJQ6bXtTcf718MqAQ=\n"
).encode()
SIGSUM_COSIGNED = Checkpoint("example.org/log", 10, SIGSUM_ROOT)
SIGSUM_COSIGNATURE_LINE = (
    f"{DASH} example.org/witness ys8uUAAAAAAAAATSftMzceM8zssdZ9jin9SjwIxzx9iADMf63VqirX2hafol9Rsq"
    "NqbofIz0LVRqHXI2kpEBSki5RTXFtxz1vo9+Cg==\n"
).encode()
# The same test's line under another key ID (its first bytes altered).
SIGSUM_OTHER_KEY_ID_LINE = SIGSUM_COSIGNATURE_LINE.replace(b"ys8uUA", b"yX8uUA")

# c2sp.org/tlog-cosignature and c2sp.org/tlog-checkpoint: the example checkpoint with its
# log signature and one witness cosignature; the spec's example signed message for it reads
# "time 1679315147".
C2SP_CHECKPOINT_NOTE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n"
    f"{DASH} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u"
    "5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    f"{DASH} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrD"
    "JsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
).encode()

# c2sp.org/signed-note: the example note, whose text holds an empty line and non-ASCII text.
C2SP_NOTE = (
    "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned \u00e8 subito "
    f"sera.\n\n{DASH} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+Eh"
    "fLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
).encode()

# transparency-dev/formats, note/note_verifier_test.go (TestECDSAVerifier): a Rekor
# checkpoint signed with ECDSA (signature type 0x02), under the key ID c0d23d6a of the key
# rekor.sigstore.dev. Here it is a signature line of a kind we do not verify.
REKOR_NOTE = (
    "Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n"
    f"{DASH} rekor.sigstore.dev wNI9ajBEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+G"
    "KVClgqq20uDLet7MCoTURUCRdxwWBHHufk=\n"
).encode()


@pytest.fixture(scope="module")
def log_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture(scope="module")
def log_mldsa65() -> mldsa.MLDSA65PrivateKey:
    return mldsa.MLDSA65PrivateKey.generate()


@pytest.fixture(scope="module")
def witness_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))


@pytest.fixture(scope="module")
def signed(log_key: ed25519.Ed25519PrivateKey) -> bytes:
    return sign_checkpoint(CHECKPOINT, name=ORIGIN, ed25519_key=log_key)


@pytest.fixture(scope="module")
def signed_both(log_key: ed25519.Ed25519PrivateKey, log_mldsa65: mldsa.MLDSA65PrivateKey) -> bytes:
    return sign_checkpoint(CHECKPOINT, name=ORIGIN, ed25519_key=log_key, mldsa65_key=log_mldsa65)


def _verify(
    note: bytes,
    key: ed25519.Ed25519PrivateKey,
    *,
    origin: str = ORIGIN,
    name: str = ORIGIN,
    mldsa65_public: mldsa.MLDSA65PublicKey | None = None,
    limits: NoteLimits = DEFAULT_LIMITS,
) -> Checkpoint:
    return verify_checkpoint(
        note,
        origin=origin,
        name=name,
        ed25519_public=key.public_key(),
        mldsa65_public=mldsa65_public,
        limits=limits,
    )


def _altered(note: bytes, index: int, *, key_id: bool = False) -> bytes:
    """``note`` with one byte flipped in the key ID or signature of its ``index``-th line."""
    parsed = parse_note(note)
    lines = list(parsed.signatures)
    line = lines[index]
    if key_id:
        lines[index] = NoteSignature(line.name, _flip(line.key_id, 0), line.signature)
    else:
        lines[index] = NoteSignature(line.name, line.key_id, _flip(line.signature, 10))
    return Note(parsed.body, tuple(lines)).text()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


def _signed_body(body: bytes, key: ed25519.Ed25519PrivateKey) -> bytes:
    """``body`` signed as it is, without ``Checkpoint`` normalising it first."""
    line = NoteSignature(ORIGIN, ed25519_key_id(ORIGIN, key.public_key()), key.sign(body))
    return body + b"\n" + line.line()


# Known answers: golang.org/x/mod sumdb/note -------------------------------------------


def test_go_key_ids_are_the_published_ones() -> None:
    for vkey in (GO_PETER_VKEY, GO_ENOCH_VKEY):
        name, key_id, public = _vkey(vkey)
        assert ed25519_key_id(name, public) == key_id
    assert _skey(GO_PETER_SKEY).public_key() == _vkey(GO_PETER_VKEY)[2]


def test_go_signed_note_parses_and_serializes_back() -> None:
    data = GO_TEXT + b"\n" + GO_PETER_LINE + GO_ENOCH_LINE
    note = parse_note(data)
    assert note.body == GO_TEXT
    assert [(s.name, s.key_id.hex()) for s in note.signatures] == [
        ("PeterNeumann", "c74f20a3"),
        ("EnochRoot", "af0cfe78"),
    ]
    assert note.text() == data
    for signature, vkey in zip(note.signatures, (GO_PETER_VKEY, GO_ENOCH_VKEY), strict=True):
        _vkey(vkey)[2].verify(signature.signature, note.body)  # signed: the note text


def test_go_signature_line_is_reproduced() -> None:
    private = _skey(GO_PETER_SKEY)
    key_id = ed25519_key_id("PeterNeumann", private.public_key())
    line = NoteSignature("PeterNeumann", key_id, private.sign(GO_TEXT))
    assert Note(GO_TEXT, (line,)).text() == GO_TEXT + b"\n" + GO_PETER_LINE


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        # The malformed notes of TestOpen, each with the reason we give.
        (GO_TEXT, "no empty line before its signature lines"),
        (GO_TEXT + b"\n", "no signature lines"),
        (GO_TEXT + b"\n" + GO_PETER_LINE[:-1], "does not end in a line feed"),
        (b"\x01" + GO_TEXT + b"\n" + GO_PETER_LINE, "control character U\\+0001"),
        (b"\xff" + GO_TEXT + b"\n" + GO_PETER_LINE, "not valid UTF-8"),
        (GO_TEXT + b"\n" + GO_PETER_LINE + b"Unexpected line.\n", "line 2 does not start"),
        (GO_TEXT + b"\n" + GO_PETER_LINE * 101, "101 signature lines, more than the limit"),
        # Key names: no space, no '+', not empty.
        (GO_TEXT + b"\n" + GO_PETER_LINE.replace(b"PeterNeumann", b"Bad Name"), "separated"),
        (GO_TEXT + b"\n" + GO_PETER_LINE.replace(b"PeterNeumann", b"Bad+Name"), "a '\\+'"),
        (GO_TEXT + b"\n" + GO_PETER_LINE.replace(b"PeterNeumann ", b" "), "key name is empty"),
    ],
)
def test_go_malformed_notes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(CheckpointError, match=reason):
        parse_note(data)


# Known answers: checkpoints and cosignatures of deployed logs --------------------------


def test_go_checksum_database_checkpoint_verifies() -> None:
    name, key_id, public = _vkey(SUMDB_VKEY)
    assert ed25519_key_id(name, public) == key_id
    checkpoint = verify_checkpoint(
        SUMDB_NOTE, origin="go.sum database tree", name=name, ed25519_public=public
    )
    assert checkpoint == Checkpoint(
        "go.sum database tree", 30055305, _b64("mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=")
    )
    with pytest.raises(CheckpointError, match=r"Ed25519 signature by the key 'sum.golang.org'"):
        verify_checkpoint(
            SUMDB_NOTE.replace(b"30055305", b"30055306"),
            origin="go.sum database tree",
            name=name,
            ed25519_public=public,
        )


def test_sigsum_checkpoint_is_signed_byte_for_byte() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(SIGSUM_SEED)
    checkpoint = Checkpoint(SIGSUM_ORIGIN, 10, SIGSUM_ROOT)
    assert sign_checkpoint(checkpoint, name=SIGSUM_ORIGIN, ed25519_key=key) == SIGSUM_NOTE
    verified = verify_checkpoint(
        SIGSUM_NOTE, origin=SIGSUM_ORIGIN, name=SIGSUM_ORIGIN, ed25519_public=key.public_key()
    )
    assert verified == checkpoint


def test_sigsum_cosignature_is_made_byte_for_byte_and_verifies() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(SIGSUM_SEED)
    line = cosign(SIGSUM_COSIGNED, name="example.org/witness", ed25519_key=key, timestamp=1234)
    assert line.line() == SIGSUM_COSIGNATURE_LINE
    published = parse_note(SIGSUM_COSIGNED.body() + b"\n" + SIGSUM_COSIGNATURE_LINE)
    stamp = verify_cosignature(
        SIGSUM_COSIGNED,
        published.signatures[0],
        name="example.org/witness",
        ed25519_public=key.public_key(),
    )
    assert stamp == 1234


def test_sigsum_cosignature_under_another_key_id_is_refused() -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(SIGSUM_SEED)
    other = parse_note(SIGSUM_COSIGNED.body() + b"\n" + SIGSUM_OTHER_KEY_ID_LINE).signatures[0]
    with pytest.raises(CheckpointError, match="key ID c97f2e50 is not that of the witness key"):
        verify_cosignature(
            SIGSUM_COSIGNED, other, name="example.org/witness", ed25519_public=key.public_key()
        )


def test_c2sp_cosigned_checkpoint_example_parses() -> None:
    note = parse_note(C2SP_CHECKPOINT_NOTE)
    assert parse_body(note.body) == Checkpoint(
        "example.com/behind-the-sofa",
        20852163,
        _b64("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    log, witness = note.signatures
    assert (log.name, len(log.signature)) == ("example.com/behind-the-sofa", 64)
    assert witness.name == "witness.example.com/w1"
    assert len(witness.signature) == 8 + 64
    assert int.from_bytes(witness.signature[:8], "big") == 1679315147
    assert note.text() == C2SP_CHECKPOINT_NOTE


def test_c2sp_signed_note_example_splits_at_the_last_empty_line() -> None:
    note = parse_note(C2SP_NOTE)
    assert note.body.decode().endswith("\n\ned \u00e8 subito sera.\n")
    assert [s.name for s in note.signatures] == ["quasimodo.example/salvatore"]
    assert note.text() == C2SP_NOTE
    with pytest.raises(CheckpointError, match="line 3 of the checkpoint is empty"):
        parse_body(note.body)


def test_rekor_ecdsa_checkpoint_parses() -> None:
    note = parse_note(REKOR_NOTE)
    assert parse_body(note.body).size == 798034
    (line,) = note.signatures
    assert (line.name, line.key_id.hex()) == ("rekor.sigstore.dev", "c0d23d6a")


# Key IDs, names and the checkpoint body -------------------------------------------------


def test_key_ids_hash_name_newline_type_and_public_key(
    log_key: ed25519.Ed25519PrivateKey, log_mldsa65: mldsa.MLDSA65PrivateKey
) -> None:
    def expected(signature_type: bytes, public: bytes) -> bytes:
        return hashlib.sha256(ORIGIN.encode() + b"\n" + signature_type + public).digest()[:4]

    ed_public = log_key.public_key()
    ml_public = log_mldsa65.public_key()
    identifier = b"\xffliaison-exchange/v1/checkpoint-mldsa65"
    assert ed25519_key_id(ORIGIN, ed_public) == expected(b"\x01", ed_public.public_bytes_raw())
    assert cosignature_key_id(ORIGIN, ed_public) == expected(b"\x04", ed_public.public_bytes_raw())
    assert mldsa65_key_id(ORIGIN, ml_public) == expected(identifier, ml_public.public_bytes_raw())


def test_origin_and_witness_names() -> None:
    assert origin_of(LOG_ID) == ORIGIN
    assert witness_name(WITNESS_ID) == WITNESS
    for bad in ("ma.dgsn", "A B", "A+B", "A\x00B", ""):
        with pytest.raises(CheckpointError, match="invalid agency id"):
            origin_of(bad)
        with pytest.raises(CheckpointError, match="invalid agency id"):
            witness_name(bad)


def test_body_is_the_three_lines_and_parses_back() -> None:
    body = f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n".encode()
    assert CHECKPOINT.body() == body
    assert parse_body(body) == CHECKPOINT
    extended = body + b"an extension\nanother one\n"
    parsed = parse_body(extended)
    assert parsed.extensions == ("an extension", "another one")
    assert parsed.body() == extended
    assert parse_body(Checkpoint("o", 0, bytes(32)).body()).size == 0
    assert parse_body(Checkpoint("o", 2**64 - 1, ROOT).body()).size == 2**64 - 1


# Round trips ---------------------------------------------------------------------------


def test_ed25519_checkpoint_round_trip(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    assert _verify(signed, log_key) == CHECKPOINT
    (line,) = parse_note(signed).signatures
    assert (line.name, line.key_id) == (ORIGIN, ed25519_key_id(ORIGIN, log_key.public_key()))
    assert b"\x00" not in signed  # domain separation from the node's labelled signatures


def test_hybrid_checkpoint_round_trip(
    log_key: ed25519.Ed25519PrivateKey,
    log_mldsa65: mldsa.MLDSA65PrivateKey,
    signed_both: bytes,
) -> None:
    assert _verify(signed_both, log_key, mldsa65_public=log_mldsa65.public_key()) == CHECKPOINT
    ed_line, ml_line = parse_note(signed_both).signatures
    assert ed_line.key_id == ed25519_key_id(ORIGIN, log_key.public_key())
    assert ml_line.key_id == mldsa65_key_id(ORIGIN, log_mldsa65.public_key())
    assert len(ml_line.signature) == 3309
    # The ML-DSA-65 signature takes our context: without it, it does not verify.
    log_mldsa65.public_key().verify(
        ml_line.signature, CHECKPOINT.body(), b"liaison-exchange/v1/checkpoint-mldsa65"
    )
    # A verifier that knows only the Ed25519 key ignores the ML-DSA-65 line.
    assert _verify(signed_both, log_key) == CHECKPOINT


def test_cosignature_round_trip(witness_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    line = cosign(signed, name=WITNESS, ed25519_key=witness_key, timestamp=NOW)
    assert line.key_id == cosignature_key_id(WITNESS, witness_key.public_key())
    assert int.from_bytes(line.signature[:8], "big") == NOW
    message = b"cosignature/v1\ntime %d\n" % NOW + CHECKPOINT.body()
    witness_key.public_key().verify(line.signature[8:], message)
    # The same line from the checkpoint, its body, or its signed note.
    for form in (CHECKPOINT, CHECKPOINT.body(), signed):
        assert cosign(form, name=WITNESS, ed25519_key=witness_key, timestamp=NOW) == line
        stamp = verify_cosignature(
            form, line, name=WITNESS, ed25519_public=witness_key.public_key()
        )
        assert stamp == NOW


def test_added_cosignatures_keep_the_note_verifiable(
    log_key: ed25519.Ed25519PrivateKey, witness_key: ed25519.Ed25519PrivateKey, signed: bytes
) -> None:
    line = cosign(CHECKPOINT, name=WITNESS, ed25519_key=witness_key, timestamp=NOW)
    cosigned = add_signatures(signed, line)
    assert cosigned == signed + line.line()
    assert add_signatures(cosigned, line) == cosigned  # an identical line is not repeated
    assert add_signatures(signed, line, line) == cosigned
    assert _verify(cosigned, log_key) == CHECKPOINT
    assert parse_note(cosigned).signatures[-1] == line
    assert add_signatures(CHECKPOINT.body(), line) == CHECKPOINT.body() + b"\n" + line.line()


def test_unknown_signature_lines_are_kept_and_ignored(
    log_key: ed25519.Ed25519PrivateKey, signed: bytes
) -> None:
    strangers = [
        *parse_note(REKOR_NOTE).signatures,  # ECDSA, another name
        *parse_note(GO_TEXT + b"\n" + GO_ENOCH_LINE).signatures,  # Ed25519, another name
        # Our name under another key ID: another (say, rotated) key, so not ours to check.
        NoteSignature(ORIGIN, b"\x00\x01\x02\x03", b"not a signature at all"),
        # Our key ID under another name.
        NoteSignature("elsewhere", ed25519_key_id(ORIGIN, log_key.public_key()), b"junk"),
    ]
    note = add_signatures(signed, *strangers)
    assert len(parse_note(note).signatures) == 5
    assert _verify(note, log_key) == CHECKPOINT
    # Before our own line, too.
    first = Note(CHECKPOINT.body(), (*strangers, *parse_note(signed).signatures)).text()
    assert _verify(first, log_key) == CHECKPOINT


def test_sixteen_signature_lines_are_accepted(
    log_key: ed25519.Ed25519PrivateKey, log_mldsa65: mldsa.MLDSA65PrivateKey, signed_both: bytes
) -> None:
    # signed-note: verifiers must accept at least 16 signatures, post-quantum ones included.
    extra = [NoteSignature(f"witness-{n}.example", bytes(4), bytes(3309)) for n in range(14)]
    note = add_signatures(signed_both, *extra)
    assert len(parse_note(note).signatures) == 16
    assert _verify(note, log_key, mldsa65_public=log_mldsa65.public_key()) == CHECKPOINT


# Refusals: the keys and names ----------------------------------------------------------


def test_wrong_key_is_refused(signed: bytes, witness_key: ed25519.Ed25519PrivateKey) -> None:
    with pytest.raises(
        CheckpointError, match=r"no Ed25519 signature by the key .*under that name have key IDs"
    ):
        _verify(signed, witness_key)


def test_wrong_name_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    other = origin_of("FR.DGSI")
    with pytest.raises(CheckpointError, match=f"no Ed25519 signature by the key '{other}'"):
        _verify(signed, log_key, name=other)


def test_wrong_origin_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    other = origin_of("FR.DGSI")
    with pytest.raises(CheckpointError, match=f"origin is '{ORIGIN}', not the expected '{other}'"):
        _verify(signed, log_key, origin=other)


def test_missing_mldsa65_line_is_refused(
    log_key: ed25519.Ed25519PrivateKey,
    log_mldsa65: mldsa.MLDSA65PrivateKey,
    signed: bytes,
    signed_both: bytes,
) -> None:
    stripped = Note(CHECKPOINT.body(), parse_note(signed_both).signatures[:1]).text()
    for note in (signed, stripped):
        with pytest.raises(CheckpointError, match="no ML-DSA-65 signature by the key"):
            _verify(note, log_key, mldsa65_public=log_mldsa65.public_key())


def test_mldsa65_signature_of_another_key_is_refused(
    log_key: ed25519.Ed25519PrivateKey, signed_both: bytes
) -> None:
    other = mldsa.MLDSA65PrivateKey.generate().public_key()
    with pytest.raises(CheckpointError, match="no ML-DSA-65 signature by the key"):
        _verify(signed_both, log_key, mldsa65_public=other)


# Refusals: altered bytes ---------------------------------------------------------------


def test_altered_body_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    for old, new in ((b"\n42\n", b"\n43\n"), (b"MA.DGSN", b"MA.DGSM")):
        altered = signed.replace(old, new, 1)
        assert altered != signed
        with pytest.raises(
            CheckpointError, match=r"Ed25519 signature by the key .* does not verify"
        ):
            _verify(altered, log_key)
    root = base64.b64encode(ROOT)
    altered = signed.replace(root, base64.b64encode(_flip(ROOT, 5)))
    with pytest.raises(CheckpointError, match="does not verify"):
        _verify(altered, log_key)


def test_altered_signature_is_refused(
    log_key: ed25519.Ed25519PrivateKey,
    log_mldsa65: mldsa.MLDSA65PrivateKey,
    signed: bytes,
    signed_both: bytes,
) -> None:
    with pytest.raises(CheckpointError, match=r"Ed25519 signature by the key .* does not verify"):
        _verify(_altered(signed, 0), log_key)
    with pytest.raises(CheckpointError, match=r"ML-DSA-65 signature by the key .* does not verify"):
        _verify(_altered(signed_both, 1), log_key, mldsa65_public=log_mldsa65.public_key())
    # A truncated signature is no signature either.
    (line,) = parse_note(signed).signatures
    short = NoteSignature(line.name, line.key_id, line.signature[:63])
    with pytest.raises(CheckpointError, match="does not verify"):
        _verify(Note(CHECKPOINT.body(), (short,)).text(), log_key)


def test_altered_key_id_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    with pytest.raises(CheckpointError, match="no Ed25519 signature by the key"):
        _verify(_altered(signed, 0, key_id=True), log_key)


def test_altered_cosignature_timestamp_is_refused(
    witness_key: ed25519.Ed25519PrivateKey,
) -> None:
    line = cosign(CHECKPOINT, name=WITNESS, ed25519_key=witness_key, timestamp=NOW)
    later = (NOW + 1).to_bytes(8, "big") + line.signature[8:]
    altered = NoteSignature(line.name, line.key_id, later)
    with pytest.raises(CheckpointError, match=f"cosignature by '{WITNESS}' does not verify"):
        verify_cosignature(
            CHECKPOINT, altered, name=WITNESS, ed25519_public=witness_key.public_key()
        )


def test_cosignature_of_another_checkpoint_or_witness_is_refused(
    witness_key: ed25519.Ed25519PrivateKey, log_key: ed25519.Ed25519PrivateKey
) -> None:
    line = cosign(CHECKPOINT, name=WITNESS, ed25519_key=witness_key, timestamp=NOW)
    public = witness_key.public_key()
    grown = Checkpoint(ORIGIN, 43, ROOT)
    with pytest.raises(CheckpointError, match="does not verify"):
        verify_cosignature(grown, line, name=WITNESS, ed25519_public=public)
    with pytest.raises(CheckpointError, match="the cosignature is by"):
        verify_cosignature(CHECKPOINT, line, name=witness_name("FR.DGSI"), ed25519_public=public)
    with pytest.raises(CheckpointError, match="is not that of the witness key"):
        verify_cosignature(CHECKPOINT, line, name=WITNESS, ed25519_public=log_key.public_key())
    log_line = parse_note(sign_checkpoint(CHECKPOINT, name=WITNESS, ed25519_key=witness_key))
    with pytest.raises(CheckpointError, match="is not that of the witness key"):
        # A note signature (type 0x01) by the same key is not a cosignature (type 0x04).
        verify_cosignature(CHECKPOINT, log_line.signatures[0], name=WITNESS, ed25519_public=public)
    short = NoteSignature(line.name, line.key_id, line.signature[:-1])
    with pytest.raises(CheckpointError, match="71 bytes, not a timestamp and an Ed25519"):
        verify_cosignature(CHECKPOINT, short, name=WITNESS, ed25519_public=public)


def test_cosignature_time_out_of_range_is_refused(
    witness_key: ed25519.Ed25519PrivateKey,
) -> None:
    for timestamp in (-1, 2**63):
        with pytest.raises(CheckpointError, match="not between 0 and 2\\*\\*63 - 1"):
            cosign(CHECKPOINT, name=WITNESS, ed25519_key=witness_key, timestamp=timestamp)
    line = cosign(CHECKPOINT, name=WITNESS, ed25519_key=witness_key, timestamp=NOW)
    huge = NoteSignature(line.name, line.key_id, (2**63).to_bytes(8, "big") + line.signature[8:])
    with pytest.raises(CheckpointError, match="not between 0 and 2\\*\\*63 - 1"):
        verify_cosignature(CHECKPOINT, huge, name=WITNESS, ed25519_public=witness_key.public_key())


# Refusals: the note's format -----------------------------------------------------------


def _body_and_lines(signed: bytes) -> tuple[bytes, bytes]:
    note = parse_note(signed)
    return note.body, b"".join(line.line() for line in note.signatures)


def test_truncated_note_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    body, _ = _body_and_lines(signed)
    cases = {
        signed[:-1]: "does not end in a line feed",
        signed[:-20]: "does not end in a line feed",
        body: "no empty line before its signature lines",
        body + b"\n": "no signature lines",
    }
    for truncated, reason in cases.items():
        with pytest.raises(CheckpointError, match=reason):
            _verify(truncated, log_key)


def test_extra_blank_lines_are_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    body, lines = _body_and_lines(signed)
    cases = {
        body + b"\n\n" + lines: "line 4 of the checkpoint is empty",
        b"\n" + body + b"\n" + lines: "line 1 of the checkpoint is empty",
        body + b"\n" + lines + b"\n": "no signature lines after its last empty line",
        body + b"\n" + lines + b"\n" + lines: "line 4 of the checkpoint is empty",
    }
    for note, reason in cases.items():
        with pytest.raises(CheckpointError, match=reason):
            _verify(note, log_key)


def test_trailing_garbage_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    for garbage, reason in (
        (b"garbage", "does not end in a line feed"),
        (b"garbage\n", "signature line 2 does not start with an em dash"),
        (b"\xe2\x80\x94 x\n", "signature line 2 is not a key name and a signature"),
        (DASH.encode() + b" name AAAA\n", "the signature on line 2 is 3 bytes, only a key ID"),
        (DASH.encode() + b" name AAAAAA==\n", "the signature on line 2 is 4 bytes"),
        (DASH.encode() + b" name AAAAAAB=\n", "the signature on line 2 is not canonical base64"),
        (DASH.encode() + b" name AAAAAA!=\n", "the signature on line 2 is not valid base64"),
    ):
        with pytest.raises(CheckpointError, match=reason):
            _verify(signed + garbage, log_key)


def test_non_utf8_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    for bad in (b"\xff", b"\xc3", b"\xed\xa0\x80"):  # a stray byte, a cut sequence, a surrogate
        with pytest.raises(CheckpointError, match="is not valid UTF-8"):
            _verify(signed.replace(b"MA.DGSN", b"MA." + bad), log_key)
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        Checkpoint("log\udc80", 1, ROOT)


def test_nul_byte_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    # A note text with no NUL byte can never be a labelled input of the same key.
    with pytest.raises(CheckpointError, match="line 1 of the note contains a NUL byte"):
        _verify(signed.replace(b"MA.DGSN", b"MA.\x00GSN"), log_key)
    with pytest.raises(CheckpointError, match="contains a NUL byte"):
        parse_body(CHECKPOINT.body().replace(b"42", b"4\x00"))
    with pytest.raises(CheckpointError, match="the origin contains a NUL byte"):
        Checkpoint(ORIGIN + "\x00", 1, ROOT)
    with pytest.raises(CheckpointError, match="contains a NUL byte"):
        Checkpoint(ORIGIN, 1, ROOT, ("ext\x00",))
    with pytest.raises(CheckpointError, match="contains a NUL byte"):
        Note(b"text\x00\n", parse_note(signed).signatures)


@pytest.mark.parametrize("char", ["\x07", "\r", "\t", "\x1b", "\x7f", "\x85", "\u202e", "\u2028"])
def test_control_characters_are_refused(
    log_key: ed25519.Ed25519PrivateKey, signed: bytes, char: str
) -> None:
    reason = f"control character U\\+{ord(char):04X}"
    note = signed.replace(b"MA.DGSN", f"MA.{char}DGSN".encode())
    with pytest.raises(CheckpointError, match=f"line 1 of the note contains the {reason}"):
        _verify(note, log_key)
    with pytest.raises(CheckpointError, match=reason):
        Checkpoint(f"log{char}", 1, ROOT)
    with pytest.raises(CheckpointError, match=reason):
        sign_checkpoint(CHECKPOINT, name=f"name{char}", ed25519_key=log_key)


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        (b"042", "the tree size '042' has a leading zero"),
        (b"00", "the tree size '00' has a leading zero"),
        (b"-1", "the tree size '-1' is not a decimal number"),
        (b"+1", "the tree size '\\+1' is not a decimal number"),
        (b" 42", "the tree size ' 42' is not a decimal number"),
        (b"0x2a", "the tree size '0x2a' is not a decimal number"),
        ("\u0664\u0662".encode(), "is not a decimal number"),  # Arabic-Indic digits
        (b"18446744073709551616", "not between 0 and 2\\*\\*64 - 1"),
        (b"123456789012345678901", "is more than 2\\*\\*64 - 1"),
        (b"9" * 5000, "is more than 2\\*\\*64 - 1"),
    ],
)
def test_malformed_sizes_are_refused(
    log_key: ed25519.Ed25519PrivateKey, size: bytes, reason: str
) -> None:
    body = CHECKPOINT.body().replace(b"\n42\n", b"\n" + size + b"\n")
    with pytest.raises(CheckpointError, match=reason):
        parse_body(body)
    # Through verification too, even with a valid signature over those very bytes.
    with pytest.raises(CheckpointError, match=reason):
        _verify(_signed_body(body, log_key), log_key)


@pytest.mark.parametrize(
    ("root", "reason"),
    [
        (base64.b64encode(ROOT[:31]), "the root hash is 31 bytes, not 32"),
        (base64.b64encode(ROOT + b"\x00"), "the root hash is 33 bytes, not 32"),
        (b"", "line 3 of the checkpoint is empty"),
        (base64.b64encode(ROOT).rstrip(b"="), "the root hash is not valid base64"),
        (base64.urlsafe_b64encode(b"\xfb" * 32), "the root hash is not valid base64"),
        (base64.b64encode(ROOT)[:-2] + b"B=", "the root hash is not canonical base64"),
    ],
)
def test_malformed_roots_are_refused(
    log_key: ed25519.Ed25519PrivateKey, root: bytes, reason: str
) -> None:
    body = CHECKPOINT.body().replace(base64.b64encode(ROOT), root)
    with pytest.raises(CheckpointError, match=reason):
        _verify(_signed_body(body, log_key), log_key)


def test_invalid_checkpoints_cannot_be_built() -> None:
    cases = {
        "the root hash is 31 bytes": lambda: Checkpoint(ORIGIN, 1, ROOT[:31]),
        "the origin is empty": lambda: Checkpoint("", 1, ROOT),
        "the origin contains the control character U\\+000A": lambda: Checkpoint("a\nb", 1, ROOT),
        "between 0 and 2\\*\\*64 - 1": lambda: Checkpoint(ORIGIN, -1, ROOT),
        "extension line 4 is empty": lambda: Checkpoint(ORIGIN, 1, ROOT, ("",)),
        "has 2 lines, not at least 3": lambda: parse_body(b"origin\n42\n"),
    }
    for reason, build in cases.items():
        with pytest.raises(CheckpointError, match=reason):
            build()


def test_note_without_signatures_is_refused() -> None:
    with pytest.raises(CheckpointError, match="the note has no signature lines"):
        Note(CHECKPOINT.body(), ())
    with pytest.raises(CheckpointError, match="the note has no signature lines"):
        add_signatures(CHECKPOINT.body())


def test_invalid_key_names_are_refused(log_key: ed25519.Ed25519PrivateKey) -> None:
    for name in ("", "a b", "a+b", "a\u00a0b", "a\u3000b"):
        with pytest.raises(CheckpointError, match="key name"):
            sign_checkpoint(CHECKPOINT, name=name, ed25519_key=log_key)
    with pytest.raises(CheckpointError, match="a key ID is 3 bytes, not 4"):
        NoteSignature(ORIGIN, b"abc", b"sig")
    with pytest.raises(CheckpointError, match="holds no signature"):
        NoteSignature(ORIGIN, b"abcd", b"")


# Refusals: the limits ------------------------------------------------------------------


def test_too_many_signature_lines_are_refused(
    log_key: ed25519.Ed25519PrivateKey, signed: bytes
) -> None:
    extra = [NoteSignature(f"w{n}.example", bytes(4), bytes(64)) for n in range(16)]
    too_many = Note(CHECKPOINT.body(), (*parse_note(signed).signatures, *extra)).text()
    with pytest.raises(CheckpointError, match="17 signature lines, more than the limit of 16"):
        _verify(too_many, log_key)
    with pytest.raises(CheckpointError, match="17 signature lines, more than the limit of 16"):
        add_signatures(signed, *extra)
    assert _verify(too_many, log_key, limits=NoteLimits(max_signatures=17)) == CHECKPOINT


def test_too_large_note_is_refused(log_key: ed25519.Ed25519PrivateKey, signed: bytes) -> None:
    huge = NoteSignature("big.example", bytes(4), bytes(100 * 1024))
    too_large = Note(CHECKPOINT.body(), (*parse_note(signed).signatures, huge)).text()
    assert len(too_large) > 128 * 1024
    with pytest.raises(CheckpointError, match="bytes, more than the limit of 131072"):
        _verify(too_large, log_key)
    with pytest.raises(CheckpointError, match="more than the limit of 131072"):
        add_signatures(signed, huge)
    long_extension = Checkpoint(ORIGIN, 42, ROOT, ("x" * 128 * 1024,))
    with pytest.raises(CheckpointError, match="more than the limit of 131072"):
        sign_checkpoint(long_extension, name=ORIGIN, ed25519_key=log_key)
    small = NoteLimits(max_note_bytes=len(signed) - 1)
    with pytest.raises(CheckpointError, match=re.escape(f"{len(signed)} bytes, more than")):
        _verify(signed, log_key, limits=small)
