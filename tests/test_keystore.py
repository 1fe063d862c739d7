"""Private keys at rest: sealed under a passphrase, refused clearly when anything
is wrong, and re-sealed atomically. Unit tests on a key store folder, and the
CLI on real homes (each refusal one line, exit 2, nothing changed on disk)."""

from __future__ import annotations

import gc
import json
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from liaison.keys.errors import KeyStoreError
from liaison.keys.identity import (
    CARD_MLDSA65_SIGNATURE_FILE,
    KEM_X25519_FILE,
    MLDSA65_KEY_FILE,
    SIGNING_KEY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    NodeIdentity,
    generate_identity,
    identity_keys,
    identity_public_files,
    load_identity,
)
from liaison.keys.ids import mldsa65_key_id
from liaison.keys.keystore import NodeKeys
from liaison.keys.sealed import KdfParams, Passphrase, Unlocker, WrongPassphrase
from liaison.server.home import NodeHome
from tests.cli_homes import run, snapshot
from tests.conftest import TEST_PASSPHRASE, Inspector, make_home

A_ID = "MA.DGSN.CCPI"
RIGHT = "correct horse battery staple"
WRONG = "incorrect horse battery staple"
RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
KEY_FILES = [SIGNING_KEY_FILE, "kem-mlkem768.key", KEM_X25519_FILE, TLS_KEY_FILE]


def unlocker(secret: str = RIGHT) -> Unlocker:
    return Unlocker(Passphrase(secret))


@pytest.fixture(scope="module")
def a() -> NodeIdentity:
    return generate_identity(A_ID, "Agency A", "127.0.0.1:7001")


@pytest.fixture
def keys(tmp_path: Path, a: NodeIdentity) -> NodeKeys:
    store = NodeKeys(tmp_path / "keys")
    store.create(identity_keys(a), {TLS_CERT_FILE: a.tls.certificate_pem()}, unlocker(), log2_n=4)
    return store


def load(keys: NodeKeys, a: NodeIdentity, secret: str = RIGHT) -> NodeIdentity:
    return opened_as(keys, a, unlocker(secret))


def opened_as(keys: NodeKeys, a: NodeIdentity, with_unlocker: Unlocker) -> NodeIdentity:
    """``a``'s identity from ``keys`` opened with ``with_unlocker``."""
    return load_identity(
        keys.open(with_unlocker),
        agency_id=a.agency_id,
        name=a.name,
        endpoint=a.endpoint,
        created_at=a.created_at,
    )


def test_keys_round_trip_sealed(keys: NodeKeys, a: NodeIdentity) -> None:
    folder = keys.current()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in KEY_FILES:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
        sealed = json.loads((folder / name).read_bytes())
        assert sealed["format"] == "liaison-sealed-key/v1"
        assert "PRIVATE KEY" not in (folder / name).read_text()
    loaded = load(keys, a)
    assert loaded.signing_key.private_bytes_raw() == a.signing_key.private_bytes_raw()
    assert loaded.kem_x25519.private_bytes_raw() == a.kem_x25519.private_bytes_raw()
    assert loaded.kem_mlkem.public_key().public_bytes(*RAW) == (
        a.kem_mlkem.public_key().public_bytes(*RAW)
    )
    assert loaded.tls.key_pem() == a.tls.key_pem()
    assert loaded.card.signed_card == a.card.signed_card


def test_no_private_key_is_written_in_clear(keys: NodeKeys, a: NodeIdentity) -> None:
    secrets = [
        a.signing_key.private_bytes_raw(),
        a.kem_x25519.private_bytes_raw(),
        a.tls.key.private_numbers().private_value.to_bytes(32, "big"),
    ]
    for path in keys.folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path


def test_the_keys_list_needs_no_passphrase(keys: NodeKeys, a: NodeIdentity) -> None:
    entries = {entry.role: entry for entry in keys.entries()}
    assert set(entries) == {"signing", "kem-mlkem768", "kem-x25519", "tls"}
    assert entries["signing"].key_id == a.card.signing_key_id
    assert entries["kem-x25519"].key_id == a.card.encryption_key_id
    assert {entry.state for entry in entries.values()} == {"active"}


def test_a_wrong_passphrase_is_told_apart_from_a_damaged_file(
    keys: NodeKeys, a: NodeIdentity
) -> None:
    before = snapshot(keys.folder)
    with pytest.raises(WrongPassphrase, match="the passphrase is wrong"):
        load(keys, a, WRONG)
    assert snapshot(keys.folder) == before


def test_the_passphrase_can_be_derived_ahead_on_a_thread_of_its_own(
    keys: NodeKeys, a: NodeIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``liaison serve`` starts scrypt before it imports the server (issue 10): the keys
    then open with the key that thread derived, derived once."""
    threads: list[str] = []
    real = Unlocker._scrypt

    def counted(self: Unlocker, params: KdfParams) -> bytes:
        threads.append(threading.current_thread().name)
        return real(self, params)

    monkeypatch.setattr(Unlocker, "_scrypt", counted)
    ahead = unlocker()
    keys.unlock_ahead(ahead)
    opened = opened_as(keys, a, ahead)
    assert opened.card.signing_key_id == a.card.signing_key_id
    assert threads == ["scrypt"]


def test_a_derivation_ahead_that_failed_is_made_again_when_needed(
    keys: NodeKeys, a: NodeIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Unlocker._scrypt

    def failing_on_its_thread(self: Unlocker, params: KdfParams) -> bytes:
        if threading.current_thread().name == "scrypt":
            raise MemoryError("no memory for scrypt")
        return real(self, params)

    monkeypatch.setattr(Unlocker, "_scrypt", failing_on_its_thread)
    ahead = unlocker()
    keys.unlock_ahead(ahead)
    opened = opened_as(keys, a, ahead)
    assert opened.card.signing_key_id == a.card.signing_key_id


def test_a_wrong_passphrase_derived_ahead_is_refused_as_ever(keys: NodeKeys) -> None:
    before = snapshot(keys.folder)
    wrong = unlocker(WRONG)
    keys.unlock_ahead(wrong)
    with pytest.raises(WrongPassphrase, match="the passphrase is wrong"):
        keys.open(wrong)
    assert snapshot(keys.folder) == before


def test_deriving_ahead_leaves_a_damaged_manifest_to_open(keys: NodeKeys) -> None:
    (keys.current() / "keystore.json").write_text("{")
    ahead = unlocker()
    keys.unlock_ahead(ahead)  # says nothing: opening says what is wrong
    with pytest.raises(KeyStoreError, match="is damaged"):
        keys.open(ahead)


def _flip(path: Path) -> None:
    body = json.loads(path.read_bytes())
    ciphertext = bytearray(body["ciphertext"].encode())
    ciphertext[10] = ord("A") if ciphertext[10] != ord("A") else ord("B")
    body["ciphertext"] = ciphertext.decode()
    path.write_text(json.dumps(body))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _raise_cost(path: Path) -> None:
    body = json.loads(path.read_bytes())
    body["kdf"]["log2_n"] += 1
    path.write_text(json.dumps(body))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_flip, "was altered or damaged \\(the passphrase is right\\)"),
        (_truncate, "is damaged or not a Liaison sealed key"),
        (_raise_cost, "was altered or damaged"),
    ],
)
def test_an_altered_or_truncated_key_file_is_refused(
    keys: NodeKeys, a: NodeIdentity, damage: Callable[[Path], None], message: str
) -> None:
    damage(keys.current() / SIGNING_KEY_FILE)
    with pytest.raises(KeyStoreError, match=message):
        load(keys, a)


def test_a_key_file_swapped_for_another_role_is_refused(keys: NodeKeys, a: NodeIdentity) -> None:
    folder = keys.current()
    signing = (folder / SIGNING_KEY_FILE).read_bytes()
    (folder / KEM_X25519_FILE).write_bytes(signing)
    with pytest.raises(KeyStoreError, match="holds another key than its manifest names"):
        load(keys, a)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused(keys: NodeKeys, a: NodeIdentity, mode: int) -> None:
    path = keys.current() / TLS_KEY_FILE
    path.chmod(mode)
    with pytest.raises(KeyStoreError, match=f"accessible to others \\(mode {mode:o}\\)"):
        load(keys, a)


@pytest.mark.parametrize("name", [*KEY_FILES, TLS_CERT_FILE, "passphrase-check"])
def test_a_missing_file_is_refused(keys: NodeKeys, a: NodeIdentity, name: str) -> None:
    (keys.current() / name).unlink()
    with pytest.raises(KeyStoreError):
        load(keys, a)


@pytest.fixture(scope="module")
def pq() -> NodeIdentity:
    return generate_identity(A_ID, "Agency A", "127.0.0.1:7001", mldsa65=True)


@pytest.fixture
def pq_keys(tmp_path: Path, pq: NodeIdentity) -> NodeKeys:
    store = NodeKeys(tmp_path / "pq-keys")
    store.create(identity_keys(pq), identity_public_files(pq), unlocker(), log2_n=4)
    return store


def test_an_mldsa65_key_is_sealed_like_the_others_and_keeps_its_card(
    pq_keys: NodeKeys, pq: NodeIdentity
) -> None:
    assert pq.mldsa65_key is not None
    public = pq.mldsa65_key.public_key().public_bytes_raw()
    entries = {entry.role: entry for entry in pq_keys.entries()}
    assert entries["signing-mldsa65"].kind == "ML-DSA-65 card signing key"
    assert entries["signing-mldsa65"].key_id == mldsa65_key_id(public)
    sealed = (pq_keys.current() / MLDSA65_KEY_FILE).read_bytes()
    assert json.loads(sealed)["format"] == "liaison-sealed-key/v1"
    for path in pq_keys.folder.rglob("*"):
        if path.is_file():
            assert pq.mldsa65_key.private_bytes_raw() not in path.read_bytes(), path
    loaded = load(pq_keys, pq)
    assert loaded.mldsa65_key is not None
    assert loaded.mldsa65_key.private_bytes_raw() == pq.mldsa65_key.private_bytes_raw()
    # The kept ML-DSA-65 signature gives the same card bytes, also after a reseal.
    assert loaded.card.signed_card == pq.card.signed_card
    pq_keys.reseal(unlocker(), unlocker(WRONG), log2_n=4)
    assert load(pq_keys, pq, WRONG).card.signed_card == pq.card.signed_card


@pytest.mark.parametrize("name", [MLDSA65_KEY_FILE, CARD_MLDSA65_SIGNATURE_FILE])
def test_a_missing_mldsa65_file_is_refused(pq_keys: NodeKeys, pq: NodeIdentity, name: str) -> None:
    (pq_keys.current() / name).unlink()
    with pytest.raises(KeyStoreError):
        load(pq_keys, pq)


def test_a_store_without_an_mldsa65_key_loads_a_classic_identity(
    keys: NodeKeys, a: NodeIdentity
) -> None:
    loaded = load(keys, a)
    assert loaded.mldsa65_key is None
    assert not loaded.card.post_quantum_signed


def test_create_refuses_a_folder_that_holds_keys(keys: NodeKeys, a: NodeIdentity) -> None:
    before = snapshot(keys.folder)
    with pytest.raises(KeyStoreError, match="already holds keys"):
        keys.create(identity_keys(a), {}, unlocker(), log2_n=4)
    assert snapshot(keys.folder) == before


def test_reseal_switches_to_the_new_passphrase_and_keeps_the_keys(
    keys: NodeKeys, a: NodeIdentity
) -> None:
    old_generation = keys.current()
    keys.reseal(unlocker(), unlocker(WRONG), log2_n=4)
    assert keys.current() != old_generation
    assert not old_generation.exists()
    assert load(keys, a, WRONG).card.signed_card == a.card.signed_card
    with pytest.raises(WrongPassphrase):
        load(keys, a, RIGHT)


def test_a_reseal_cut_off_before_its_switch_leaves_the_old_set_in_use(
    keys: NodeKeys, a: NodeIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch is one rename; a crash at any instruction before it changes nothing."""
    old_generation = keys.current()

    def crash(self: Path, target: Path) -> Path:
        raise OSError("the process died here")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "replace", crash)
        with pytest.raises(OSError, match="died here"):
            keys.reseal(unlocker(), unlocker(WRONG), log2_n=4)
    assert keys.current() == old_generation
    assert load(keys, a, RIGHT).card.signed_card == a.card.signed_card
    # The half-written generation is no obstacle to the next change.
    keys.reseal(unlocker(), unlocker(WRONG), log2_n=4)
    assert load(keys, a, WRONG).card.signed_card == a.card.signed_card


def test_the_passphrase_never_shows(keys: NodeKeys) -> None:
    secret = Passphrase(RIGHT)
    assert RIGHT not in repr(secret)
    assert RIGHT not in str(secret)
    assert RIGHT not in repr(Unlocker(secret))
    with pytest.raises(WrongPassphrase) as refused:
        keys.open(unlocker(WRONG))
    assert WRONG not in str(refused.value)


# The CLI on a real home ---------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> NodeHome:
    return make_home(tmp_path, A_ID)


@pytest.mark.parametrize(
    "command", [["serve"], ["card", "export"], ["inbox"], ["keys", "passphrase"]]
)
def test_a_wrong_passphrase_is_one_line_and_exit_2(
    home: NodeHome,
    command: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LIAISON_PASSPHRASE", WRONG)
    monkeypatch.setenv("LIAISON_NEW_PASSPHRASE", "a new passphrase, long enough")
    before = snapshot(home.path)
    code, out, err = run(capsys, *command, "--home", str(home.path))
    assert code == 2
    assert gc.isenabled()  # serve keeps the collector off only while it loads
    assert err.count("\n") == 1
    assert "passphrase" in err
    assert WRONG not in err + out
    assert "Traceback" not in err
    assert snapshot(home.path) == before


def test_without_a_passphrase_and_no_terminal_the_cli_says_how_to_give_one(
    home: NodeHome, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIAISON_PASSPHRASE")
    code, _, err = run(capsys, "card", "export", "--home", str(home.path))
    assert code == 2
    assert "set LIAISON_PASSPHRASE or use --passphrase-file" in err


def test_a_passphrase_file_others_can_read_is_refused(
    home: NodeHome, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(TEST_PASSPHRASE + "\n")
    secret.chmod(0o644)
    args = ["card", "export", "--home", str(home.path), "--passphrase-file", str(secret)]
    code, _, err = run(capsys, *args)
    assert code == 2
    assert f"run: chmod 600 {secret}" in err
    secret.chmod(0o600)
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "BEGIN LIAISON AGENCY CARD" in out


def test_keys_list(home: NodeHome, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keys", "list", "--home", str(home.path), "--json")
    assert code == 0
    rows = json.loads(out)
    assert {row["role"] for row in rows} == {
        "signing",
        "kem-mlkem768",
        "kem-x25519",
        "tls",
        "api-ca",
        "api-server",
        "storage",
    }
    assert {row["state"] for row in rows} == {"active"}
    assert all(row["retire_after"] is None for row in rows)


def test_keys_passphrase_reseals_the_node_and_its_admin_credential(
    home: NodeHome, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    new = "a new passphrase, long enough"
    monkeypatch.setenv("LIAISON_NEW_PASSPHRASE", new)
    code, _, err = run(capsys, "keys", "passphrase", "--home", str(home.path))
    assert code == 0, err
    monkeypatch.setenv("LIAISON_PASSPHRASE", new)
    assert run(capsys, "card", "export", "--home", str(home.path))[0] == 0
    NodeHome.unlocked(home.path, Passphrase(new)).client_credential()
    monkeypatch.setenv("LIAISON_PASSPHRASE", TEST_PASSPHRASE)
    code, _, err = run(capsys, "card", "export", "--home", str(home.path))
    assert code == 2
    assert "the passphrase is wrong" in err
    with pytest.raises(KeyStoreError):
        home.client_credential()


def test_a_new_passphrase_must_be_long_enough(
    home: NodeHome, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIAISON_NEW_PASSPHRASE", "short")
    before = snapshot(home.path)
    code, _, err = run(capsys, "keys", "passphrase", "--home", str(home.path))
    assert code == 2
    assert "shorter than 12 characters" in err
    assert snapshot(home.path) == before


def _unseal_as_a_home_of_the_previous_version(home: NodeHome) -> None:
    """Rewrite ``home`` the way homes were before keys were sealed: PEM keys in clear."""
    identity = home.identity()
    pem = (serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8)
    clear = serialization.NoEncryption()
    opened = home.open_keys()
    keys = home.path / "keys"
    files = {
        keys / "signing.key": identity.signing_key.private_bytes(*pem, clear),
        keys / "kem-mlkem768.key": identity.kem_mlkem.private_bytes(*pem, clear),
        keys / "kem-x25519.key": identity.kem_x25519.private_bytes(*pem, clear),
        keys / "tls.key": identity.tls.key_pem(),
        home.path / "api" / "ca.key": _pem(opened.private("api-ca")),
        home.path / "api" / "server.key": _pem(opened.private("api-server")),
        home.path / "credentials" / "admin" / "client.key": home.client_credential().private_key,
    }
    certificate = identity.tls.certificate_pem()
    for path in keys.iterdir():
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
    (home.path / "credentials" / "admin" / "client.key").unlink()
    for path, data in files.items():
        path.write_bytes(data)
        path.chmod(0o600)
    (keys / "tls.crt").write_bytes(certificate)


def _pem(der: bytes) -> bytes:
    key = serialization.load_der_private_key(der, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_keys_seal_seals_a_home_of_the_previous_version_and_deletes_the_clear_keys(
    home: NodeHome, capsys: pytest.CaptureFixture[str]
) -> None:
    card = home.identity().card
    _unseal_as_a_home_of_the_previous_version(home)
    code, _, err = run(capsys, "card", "export", "--home", str(home.path))
    assert code == 2
    assert "not sealed under a passphrase" in err
    assert "run `liaison keys seal`" in err

    code, _, err = run(capsys, "keys", "seal", "--home", str(home.path), "--kdf-cost", "10")
    assert code == 0, err
    leftovers = [
        path
        for path in home.path.rglob("*")
        if path.is_file() and path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    ]
    assert leftovers == []
    assert home.identity().card.signed_card == card.signed_card
    assert home.client_credential().certificate
    assert {entry.role for entry in home.keys.entries()} >= {"signing", "api-ca", "api-server"}
    with Inspector(home) as inspector:
        assert [e.event for e in inspector.audit_since(0)][-1] == "keys-sealed"


def test_init_audits_every_key_it_creates_by_role_and_id(home: NodeHome) -> None:
    with Inspector(home) as inspector:
        created = [e.detail for e in inspector.audit_since(0) if e.event == "key-created"]
    expected = {f"{entry.role} key {entry.key_id}" for entry in home.keys.entries()}
    assert set(created) == expected
    assert len(expected) == 7
