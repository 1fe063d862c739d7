"""A node's private keys on disk: sealed under its passphrase, changed atomically.

The keys live in generations, and ``keys/current`` (a symbolic link) names the
one in use::

    keys/current -> gen-000002
    keys/gen-000002/keystore.json        what each key is: role, id, kind, state, dates
    keys/gen-000002/passphrase-check     tells a wrong passphrase from a damaged key file
    keys/gen-000002/signing.key ...      one sealed file per private key (mode 0600)
    keys/gen-000002/tls.crt              public files that go with them

A change (a new passphrase, a rotation, a retired key destroyed) writes a
whole new generation, syncs it, and only then swaps the link with one
``rename``: a crash at any instruction leaves either the old set or the new
one in use, never a mixture. No key file is ever rewritten in place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liaison.keys.errors import KeyStoreError
from liaison.keys.sealed import (
    KdfParams,
    SealedFile,
    Unlocker,
    passphrase_check,
    seal,
    verify_passphrase,
)

FORMAT = "liaison-keystore/v1"
# States of a key: in use; kept after a rotation until nothing needs it; gone (the
# manifest keeps its entry, with no file, so that ``keys list`` shows its history).
ACTIVE, RETIRING, DESTROYED = "active", "retiring", "destroyed"
# A node home's folder of keys.
KEY_STORE_FOLDER = "keys"
CURRENT = "current"
MANIFEST = "keystore.json"
CHECK = "passphrase-check"
LOCK = "keystore.lock"


@dataclass(frozen=True)
class KeyEntry:
    """What the manifest says of one private key (no secret)."""

    role: str
    file: str
    key_id: str
    kind: str
    state: str
    created: dt.datetime
    retire_after: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "file": self.file,
            "key_id": self.key_id,
            "kind": self.kind,
            "state": self.state,
            "created": _iso(self.created),
            "retire_after": _iso(self.retire_after) if self.retire_after else None,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> KeyEntry:
        retire = value.get("retire_after")
        return cls(
            role=str(value["role"]),
            file=str(value["file"]),
            key_id=str(value["key_id"]),
            kind=str(value["kind"]),
            state=str(value["state"]),
            created=dt.datetime.fromisoformat(value["created"]),
            retire_after=dt.datetime.fromisoformat(retire) if retire else None,
        )


@dataclass(frozen=True)
class NewKey:
    """A private key to seal: its manifest entry and its PKCS#8 DER bytes."""

    entry: KeyEntry
    secret: bytes


@dataclass(frozen=True)
class KeyChange:
    """A new generation's keys and public files (``NodeKeys.change``)."""

    keys: list[NewKey]
    public: dict[str, bytes]


class OpenedKeys:
    """The current generation, unlocked: private keys are opened on request."""

    def __init__(self, folder: Path, entries: list[KeyEntry], unlocker: Unlocker) -> None:
        self._folder = folder
        self._entries = list(entries)
        self._unlocker = unlocker

    @property
    def generation(self) -> str:
        """The name of the generation these keys were opened from."""
        return self._folder.name

    def entries(self) -> list[KeyEntry]:
        return list(self._entries)

    def holds(self, role: str, key_id: str | None = None) -> bool:
        """True if the key store has an active key of ``role`` (optional keys, e.g.
        ML-DSA-65), or with ``key_id`` a key of ``role`` and that id not destroyed."""
        return self._find(role, key_id) is not None

    def _find(self, role: str, key_id: str | None) -> KeyEntry | None:
        for entry in self._entries:
            if entry.role != role or entry.state == DESTROYED:
                continue
            if (key_id is None and entry.state == ACTIVE) or entry.key_id == key_id:
                return entry
        return None

    def private(self, role: str, key_id: str | None = None) -> bytes:
        """The PKCS#8 DER key of ``role``: the active one, or with ``key_id`` the
        one of that id (active or retiring). ``KeyStoreError`` naming the file if it fails."""
        entry = self._find(role, key_id)
        if entry is None:
            which = f"{role} key {key_id}" if key_id else f"active {role} key"
            raise KeyStoreError(f"the key store in {self._folder} holds no {which}")
        path = self._folder / entry.file
        sealed = SealedFile.parse(read_private_file(path), str(path))
        if sealed.key_id != entry.key_id:
            raise KeyStoreError(f"key file {path} holds another key than its manifest names")
        try:
            return sealed.open(self._unlocker, role=role, name=str(path))
        except KeyStoreError:
            # The passphrase opened the check file: this file is what changed.
            raise KeyStoreError(
                f"key file {path} was altered or damaged (the passphrase is right); "
                "restore the key store from a backup"
            ) from None

    def has_public(self, name: str) -> bool:
        return (self._folder / name).is_file()

    def public(self, name: str) -> bytes:
        path = self._folder / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(f"{path} is unreadable: {exc.strerror}") from exc


class NodeKeys:
    """The ``keys/`` folder of a node home."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / CURRENT).is_symlink()

    def current(self) -> Path:
        link = self.folder / CURRENT
        if not link.is_symlink():
            if (self.folder / "signing.key").exists():
                raise KeyStoreError(
                    f"the keys in {self.folder} are not sealed under a passphrase (a home "
                    "made before keys were sealed); run `liaison keys seal`"
                )
            raise KeyStoreError(f"key store {self.folder} is missing; run `liaison init`")
        return self.folder / os.readlink(link)

    def params(self) -> KdfParams:
        """The scrypt parameters of the current generation."""
        try:
            return KdfParams.from_json(self._manifest(self.current())["kdf"])
        except (KeyError, ValueError) as exc:
            raise KeyStoreError(f"the manifest in {self.current()} is damaged") from exc

    def unlock_ahead(self, unlocker: Unlocker) -> None:
        """Start deriving the current generation's key from the passphrase in the
        background (``Unlocker.derive_ahead``); ``open`` reports any problem."""
        with contextlib.suppress(KeyStoreError, OSError):
            unlocker.derive_ahead(self.params())

    def entries(self) -> list[KeyEntry]:
        """The manifest of the current generation; needs no passphrase."""
        manifest = self._manifest(self.current())
        return [KeyEntry.from_json(entry) for entry in manifest["keys"]]

    def open(self, unlocker: Unlocker) -> OpenedKeys:
        """Check the passphrase against the current generation and unlock it.

        Raises ``WrongPassphrase`` or ``KeyStoreError``.
        """
        folder = self.current()  # resolved once: the manifest is this generation's too
        check = read_private_file(folder / CHECK)
        verify_passphrase(check, unlocker, name=str(folder / CHECK))
        entries = [KeyEntry.from_json(entry) for entry in self._manifest(folder)["keys"]]
        return OpenedKeys(folder, entries, unlocker)

    def generation(self) -> str:
        """The name of the current generation (it changes with every change of the store)."""
        return self.current().name

    def create(
        self,
        keys: Iterable[NewKey],
        public: dict[str, bytes],
        unlocker: Unlocker,
        *,
        log2_n: int,
        beside_unsealed: bool = False,
    ) -> None:
        """Write the first generation; refuses a folder that already holds keys.

        With ``beside_unsealed``, the folder may hold the unsealed key files of
        a home made before keys were sealed (the caller removes them after).
        """
        if self.exists() or (
            not beside_unsealed and self.folder.exists() and any(self.folder.iterdir())
        ):
            raise KeyStoreError(f"{self.folder} already holds keys; refusing to overwrite them")
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not (self.folder / LOCK).exists():
            write_private_file(self.folder / LOCK, b"")
        self._write_generation(1, list(keys), public, unlocker, KdfParams.fresh(log2_n))

    def reseal(self, old: Unlocker, new: Unlocker, *, log2_n: int) -> None:
        """Seal every key under ``new`` in a new generation, then switch to it at once.

        Changes of the key store are serialized by a lock of their own (not the
        home's, which a serving node holds).
        """
        with self._changing():
            keys, public, folder = self._current_keys(old)
            self._next_generation(folder, keys, public, new, KdfParams.fresh(log2_n))

    def add(self, new_keys: Iterable[NewKey], unlocker: Unlocker) -> None:
        """Write a new generation holding the current keys and ``new_keys``; switch at once.

        The new generation keeps the current scrypt parameters (salt and cost):
        the passphrase is the same, so the node derives one master key, not
        two, and no other key changes. Every current key is opened first (a
        wrong passphrase or an altered file changes nothing). Refuses a role
        that is already present: ``KeyStoreError``.
        """
        added = list(new_keys)

        def with_added(keys: list[NewKey], public: dict[str, bytes]) -> KeyChange:
            present = {key.entry.role for key in keys} | {key.entry.file for key in keys}
            for key in added:
                if key.entry.role in present or key.entry.file in present | set(public):
                    raise KeyStoreError(
                        f"the key store {self.folder} already holds a {key.entry.role} key"
                    )
            return KeyChange([*keys, *added], public)

        self.change(unlocker, with_added)

    def change(
        self, unlocker: Unlocker, change: Callable[[list[NewKey], dict[str, bytes]], KeyChange]
    ) -> None:
        """Write a new generation from what ``change`` makes of the current one; switch at once.

        ``change`` gets every key of the current generation (a destroyed key
        with an empty secret) and its public files, and returns the new
        generation's. A key entry whose state is ``destroyed`` is written to
        the manifest only: no file. Keeps the scrypt parameters, like ``add``.
        Every current key is opened first: a wrong passphrase or an altered
        file changes nothing. Serialized with every other change.
        """
        with self._changing():
            keys, public, folder = self._current_keys(unlocker)
            changed = change(keys, public)
            self._next_generation(folder, changed.keys, changed.public, unlocker, self.params())

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise KeyStoreError(
                    f"the key store {self.folder} is being changed already"
                ) from None
            yield
        finally:
            os.close(fd)

    def _current_keys(self, unlocker: Unlocker) -> tuple[list[NewKey], dict[str, bytes], Path]:
        """Every key of the current generation, opened, its public files, and its folder."""
        opened = self.open(unlocker)
        folder = self.current()
        entries = self.entries()
        keys = [
            NewKey(
                entry,
                b"" if entry.state == DESTROYED else opened.private(entry.role, entry.key_id),
            )
            for entry in entries
        ]
        public = {
            path.name: path.read_bytes()
            for path in folder.iterdir()
            if path.name not in {MANIFEST, CHECK, *(entry.file for entry in entries)}
        }
        return keys, public, folder

    def _next_generation(
        self,
        folder: Path,
        keys: list[NewKey],
        public: dict[str, bytes],
        unlocker: Unlocker,
        params: KdfParams,
    ) -> None:
        generation = int(folder.name.removeprefix("gen-")) + 1
        self._write_generation(generation, keys, public, unlocker, params)
        shutil.rmtree(folder)

    def _write_generation(
        self,
        number: int,
        keys: list[NewKey],
        public: dict[str, bytes],
        unlocker: Unlocker,
        params: KdfParams,
    ) -> None:
        name = f"gen-{number:06d}"
        target = self.folder / name
        if target.exists():  # left by a change that crashed before its switch
            shutil.rmtree(target)
        target.mkdir(mode=0o700)
        manifest = {
            "format": FORMAT,
            "generation": number,
            "kdf": params.to_json(),
            "keys": [key.entry.to_json() for key in keys],
        }
        for key in keys:
            if key.entry.state == DESTROYED:
                continue
            data = seal(
                key.secret,
                role=key.entry.role,
                key_id=key.entry.key_id,
                params=params,
                unlocker=unlocker,
            )
            write_private_file(target / key.entry.file, data)
        write_private_file(target / CHECK, passphrase_check(params, unlocker))
        for file, data in public.items():
            _write_synced(target / file, data, 0o644)
        _write_synced(target / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode(), 0o600)
        _sync_dir(target)
        temporary = self.folder / f"{CURRENT}.new"
        if temporary.is_symlink():
            temporary.unlink()
        temporary.symlink_to(name)
        temporary.replace(self.folder / CURRENT)  # the switch: one atomic rename
        _sync_dir(self.folder)

    @staticmethod
    def _manifest(folder: Path) -> dict[str, Any]:
        path = folder / MANIFEST
        try:
            manifest = json.loads(path.read_bytes())
            if manifest.get("format") != FORMAT or not isinstance(manifest.get("keys"), list):
                raise ValueError("not a key store manifest")
            return dict(manifest)
        except (OSError, ValueError, AttributeError) as exc:
            raise KeyStoreError(f"{path} is damaged; restore the key store from a backup") from exc


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and sync it; never overwrite an existing file.
    If writing fails once the file is created, the part written is removed."""
    _write_synced(path, data, 0o600)


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    # O_EXCL: the file is ours from here on, so a failure removes it, not a stranger's.
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def read_private_file(path: Path) -> bytes:
    """Read a key file, refusing it if group or others can read or write it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise KeyStoreError(f"key file {path} is missing") from exc
    if mode & 0o077:
        raise KeyStoreError(
            f"key file {path} is accessible to others (mode {mode & 0o777:o}); "
            "run: chmod 600 " + str(path)
        )
    try:
        return path.read_bytes()
    except OSError as exc:  # a directory, a dangling link, no permission
        raise KeyStoreError(f"key file {path} is unreadable: {exc.strerror}") from exc


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
