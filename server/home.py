"""A node's home folder: configuration, keys, local-API credentials and database.

config.toml              settings (server/config.py)
node.db                  SQLite database (unless database.url is set)
keys/                    the key store: every private key sealed under the passphrase
                         (keys/current -> gen-NNNNNN/, see liaison.keys.keystore)
api/                     local API CA and server certificates (their keys are in keys/)
credentials/<name>/      client credentials for the local API (ca.crt, client.crt, a
                         sealed client.key, target)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import os
import re
import shutil
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from liaison.keys.card import parse_card
from liaison.keys.certs import (
    IssuedCertificate,
    certificate_sha256,
    issue_api_client_certificate,
    issue_api_server_certificate,
    local_certificate_authority,
)
from liaison.keys.credentials import ClientCredential
from liaison.keys.errors import CardError, KeyStoreError
from liaison.keys.identity import (
    CARD_FILE,
    TLS_CERT_FILE,
    NodeIdentity,
    generate_identity,
    identity_keys,
    identity_public_files,
    load_private_key,
)
from liaison.keys.ids import is_agency_id
from liaison.keys.keyring import KeyRing, load_keyring
from liaison.keys.keystore import (
    KEY_STORE_FOLDER,
    KeyEntry,
    NewKey,
    NodeKeys,
    OpenedKeys,
    read_private_file,
    write_private_file,
)
from liaison.keys.sealed import (
    CREDENTIAL_LOG2_N,
    NODE_KEYS_LOG2_N,
    Passphrase,
    SealedFile,
    Unlocker,
)
from liaison.keys.storage import STORAGE_KEY_FILE, STORAGE_KEY_KIND, STORAGE_ROLE, StorageKey
from liaison.server.config import (
    CONFIG_FILE,
    DATABASE_FROM_ENVIRONMENT,
    DATABASE_URL_VARIABLE,
    ConfigError,
    NodeConfig,
    api_target,
    check_api_listen,
    check_no_password,
    load_config,
    write_config,
)
from liaison.server.store import users
from liaison.server.store.audit import AuditKind, append
from liaison.server.store.store import Store, sqlite_url

ADMIN = "admin"
# Reads of a key store that another process keeps switching, before giving up.
KEYRING_READS = 3
DATABASE_FILE = "node.db"
LOCK_FILE = "node.lock"
# Roles of the local API's keys in the key store.
API_CA, API_SERVER = "api-ca", "api-server"


class HomeLock:
    """An exclusive lock on a node home, held by the one node serving from it."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


@dataclass(frozen=True)
class NodeHome:
    """A node's home folder; ``unlocker`` holds the passphrase of its keys, if given."""

    path: Path
    unlocker: Unlocker | None = field(default=None, compare=False, repr=False)

    @classmethod
    def unlocked(cls, path: Path, passphrase: Passphrase) -> NodeHome:
        return cls(path, Unlocker(passphrase))

    @property
    def keys(self) -> NodeKeys:
        return NodeKeys(self.keys_dir)

    def open_keys(self) -> OpenedKeys:
        """The key store, unlocked; ``KeyStoreError`` without a passphrase or with a wrong one."""
        if self.unlocker is None:
            raise KeyStoreError(
                "the node's keys are sealed: give the passphrase (LIAISON_PASSPHRASE, "
                "--passphrase-file, or at the prompt)"
            )
        return self.keys.open(self.unlocker)

    @property
    def keys_dir(self) -> Path:
        return self.path / KEY_STORE_FOLDER

    @property
    def api_dir(self) -> Path:
        return self.path / "api"

    def credential_dir(self, name: str) -> Path:
        return self.path / "credentials" / name

    def config(self) -> NodeConfig:
        return load_config(self.path)

    def lock(self) -> HomeLock:
        """Take the home's exclusive lock; ``ConfigError`` if a node already holds it."""
        path = self.path / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(
                f"another node is already serving from {self.path}"
                + (f" (process {holder})" if holder.isdigit() else "")
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return HomeLock(fd)

    def check_private(self) -> None:
        """Refuse a home, configuration or database file that others can write.

        Whoever can write them can replace keys, pins or settings. Raises
        ``ConfigError`` naming the ``chmod`` that fixes it.
        """
        for path, mode in (
            (self.path, 0o700),
            (self.path / CONFIG_FILE, 0o600),
            (self.path / DATABASE_FILE, 0o600),
        ):
            try:
                current = path.stat().st_mode
            except FileNotFoundError:
                continue
            if current & (stat.S_IWGRP | stat.S_IWOTH):
                raise ConfigError(
                    f"{path} can be written by others (mode {current & 0o777:o}); "
                    f"run: chmod {mode:o} {path}"
                )

    def database_url(self, config: NodeConfig | None = None) -> str:
        """config.toml's ``database.url`` (``$LIAISON_DATABASE_URL`` if it says
        ``env:LIAISON_DATABASE_URL``), else the SQLite file in the home."""
        config = config or self.config()
        return resolve_database_url(config.database_url) or sqlite_url(self.path / DATABASE_FILE)

    def open_store(self, config: NodeConfig | None = None, *, upgrade: bool = False) -> Store:
        """The node's database, at the schema this version needs: brought there with
        ``upgrade`` (``init``, ``liaison db upgrade``), else ``SchemaMismatch``."""
        store = Store(self.database_url(config))
        try:
            if upgrade:
                store.migrate()
            else:
                store.check_schema()
        except BaseException:
            store.close()
            raise
        return store

    def identity(self, config: NodeConfig | None = None) -> NodeIdentity:
        """The node's current identity: its keys and the card they make."""
        return self.keyring(config).current

    def keyring(self, config: NodeConfig | None = None) -> KeyRing:
        """Every key the node holds, across rotations (liaison.keys.keyring).

        A generation switched while it is being read (a running node retiring a
        key, ``keys rotate`` in another process) leaves the reader with files that
        are gone: it reads the new generation instead, a few times at most.
        """
        config = config or self.config()
        for attempt in range(KEYRING_READS):
            generation = self.keys.generation()
            try:
                return load_keyring(
                    self.open_keys(),
                    agency_id=config.agency_id,
                    name=config.name,
                    endpoint=config.endpoint,
                    created_at=config.created_at,
                )
            except KeyStoreError:
                if attempt + 1 == KEYRING_READS or self.keys.generation() == generation:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def card_sequence(self) -> int:
        """The sequence of the node's current card, read without the passphrase."""
        path = self.keys.current() / CARD_FILE
        if not path.is_file():
            return 0  # never rotated
        try:
            return parse_card(path.read_bytes()).sequence
        except CardError as error:
            raise KeyStoreError(f"{path} does not verify: {error}") from None

    def storage_key(self) -> StorageKey:
        """The node's storage key, which wraps the data keys of stored notices.

        A key store without one (a home made before notices were sealed at
        rest, or sealed by ``liaison keys seal``) gets one now: a new
        generation holding the current keys and the new one, switched
        atomically, audited ``key-created``. Raises ``KeyStoreError``.
        """
        opened = self.open_keys()
        if not any(entry.role == STORAGE_ROLE for entry in self.keys.entries()):
            assert self.unlocker is not None  # open_keys() needs it
            created = StorageKey.generate()
            self.keys.add([storage_key_entry(created)], self.unlocker)
            _audit(self, AuditKind.KEY_CREATED, f"storage key {created.key_id}")
            return created
        entry = next(entry for entry in self.keys.entries() if entry.role == STORAGE_ROLE)
        return StorageKey(opened.private(STORAGE_ROLE), entry.key_id)

    def api_server_credential(self) -> tuple[bytes, bytes, bytes]:
        """(CA certificate, server certificate, server key), PEM."""
        key = load_private_key(
            self.open_keys().private(API_SERVER), ec.EllipticCurvePrivateKey, API_SERVER
        )
        return (
            (self.api_dir / "ca.crt").read_bytes(),
            (self.api_dir / "server.crt").read_bytes(),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def client_credential(self, name: str = ADMIN) -> ClientCredential:
        if self.unlocker is None:
            raise KeyStoreError("the credential's key is sealed: give the passphrase")
        return ClientCredential.load(self.credential_dir(name), self.unlocker)


def init_home(
    path: Path,
    *,
    agency_id: str,
    name: str,
    endpoint: str,
    peer_listen: str | None = None,
    api_listen: str | None = None,
    database_url: str = "",
    passphrase: Passphrase,
    kdf_log2_n: int = NODE_KEYS_LOG2_N,
    credential_log2_n: int = CREDENTIAL_LOG2_N,
    mldsa65: bool = False,
    api_public: bool = False,
    api_names: tuple[str, ...] = (),
) -> NodeHome:
    """Create a new node home with fresh keys, credentials and an empty database.

    With ``mldsa65`` the node also gets an ML-DSA-65 key and its card is signed with both.

    Every private key is sealed under ``passphrase`` (scrypt cost ``2**kdf_log2_n``
    for the node's keys, ``2**credential_log2_n`` for the admin credential's).
    Refuses to touch a folder that already holds a configuration.
    """
    if not is_agency_id(agency_id):
        raise ConfigError(
            f"invalid agency id {agency_id!r}: use upper-case letters and digits in parts "
            "separated by '.' or '-', e.g. MA.DGSN.CCPI"
        )
    _check_endpoint("--endpoint", endpoint)
    api_listen = api_listen or default_api_listen()
    _check_endpoint("--api", api_listen)
    check_api_listen(api_listen, public=api_public, setting="--api")
    for host in api_names:
        if not _HOST_NAME.fullmatch(host):
            raise ConfigError(f"--api-name {host!r} is not a host name")
    if peer_listen is not None:
        _check_endpoint("--listen", peer_listen)
    home = NodeHome.unlocked(path, passphrase)
    leftovers = [
        p.name
        for p in (
            path / CONFIG_FILE,
            home.keys_dir,
            home.api_dir,
            path / "credentials",
            path / DATABASE_FILE,
        )
        if p.exists()
    ]
    if leftovers:
        raise ConfigError(
            f"{path} already holds a node or part of one ({', '.join(leftovers)}); "
            "refusing to overwrite it"
        )
    if database_url:
        check_database_url(resolve_database_url(database_url))
    existed = path.exists()
    if existed and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a folder")
    if not existed:
        try:
            path.mkdir(mode=0o700, parents=True)
        except FileExistsError:  # another init made it a moment ago: it is not ours
            raise ConfigError(f"{path} appeared while init ran; nothing was changed") from None
    try:
        _create_home(
            home,
            agency_id=agency_id,
            name=name,
            endpoint=endpoint,
            peer_listen=peer_listen,
            api_listen=api_listen,
            database_url=database_url,
            kdf_log2_n=kdf_log2_n,
            credential_log2_n=credential_log2_n,
            mldsa65=mldsa65,
            api_public=api_public,
            api_names=api_names,
        )
    except BaseException:
        _remove_partial_home(path, existed=existed)
        raise
    return home


def resolve_database_url(url: str) -> str:
    """``url``, or for ``env:LIAISON_DATABASE_URL`` the variable's value (which must be
    set, and hold no password)."""
    if url != DATABASE_FROM_ENVIRONMENT:
        return url
    from_environment = os.environ.get(DATABASE_URL_VARIABLE, "")
    if not from_environment:
        raise ConfigError(
            f"the node's database.url says {DATABASE_FROM_ENVIRONMENT}, and "
            f"{DATABASE_URL_VARIABLE} is not set"
        )
    return check_no_password(from_environment, setting=DATABASE_URL_VARIABLE)


def replicate_home(source: NodeHome, target: Path, *, peer_listen: str, api_listen: str) -> Path:
    """A home for another replica of ``source``'s node: the same keys, credentials and
    settings (so the same database), in ``target``, listening on its own addresses.

    One node runs per home (its lock), so each replica has a home of its own; the
    node's card, with its one endpoint, is the same for all (README, "Running in
    production"). ``target`` must not exist. The database must not be a SQLite file
    inside ``source``: replicas share a database by its URL.
    """
    config = source.config()
    if source.database_url(config) == sqlite_url(source.path / DATABASE_FILE):
        raise ConfigError(
            "replicas share one database by its URL: give the node a database.url first"
        )
    _check_endpoint("--listen", peer_listen)
    _check_endpoint("--api", api_listen)
    if target.exists():
        raise ConfigError(f"{target} exists; refusing to overwrite it")
    shutil.copytree(source.path, target, symlinks=True, ignore=shutil.ignore_patterns("node.lock"))
    write_config(
        target, dataclasses.replace(config, peer_listen=peer_listen, api_listen=api_listen)
    )
    for file in (target / "credentials").glob("*/target"):
        file.write_text(api_target(api_listen) + "\n", encoding="utf-8")
    return target


def check_database_url(url: str) -> None:
    """Refuse (``ConfigError``) a database URL that is malformed, of another kind than
    SQLite or PostgreSQL (or of an asynchronous driver), in memory, whose driver is not
    installed, that does not connect, or whose database holds a node's tables already.
    A SQLite file that does not exist yet is not created here."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError("--database-url is not a database URL") from None
    check_no_password(url, setting="--database-url")
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"--database-url: {backend} is not supported (SQLite or PostgreSQL)")
    if "async" in driver:
        raise ConfigError(f"--database-url: the driver {driver} is asynchronous; use psycopg")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError("--database-url: an in-memory database would not outlive init")
        if not Path(parsed.database).exists():
            return
    try:
        engine = create_engine(parsed)
    except ImportError as error:
        raise ConfigError(f"--database-url: its driver is not installed ({error.name})") from None
    try:
        with engine.connect() as connection:
            taken = inspect(connection).has_table("alembic_version")
    except SQLAlchemyError as error:
        first = str(error.orig if hasattr(error, "orig") else error).strip().splitlines()
        raise ConfigError(
            f"--database-url: cannot connect ({first[0] if first else type(error).__name__})"
        ) from None
    finally:
        engine.dispose()
    if taken:
        raise ConfigError(
            "--database-url: that database holds a node's tables already; give an empty one"
        )


def _remove_partial_home(path: Path, *, existed: bool) -> None:
    """After a failed ``init``: what it wrote goes (the folder too, if it made it)."""
    if not existed:
        shutil.rmtree(path, ignore_errors=True)
        return
    for name in (CONFIG_FILE, "keys", "api", "credentials", DATABASE_FILE):
        target = path / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm"):
        (path / f"{DATABASE_FILE}{suffix}").unlink(missing_ok=True)


def _create_home(
    home: NodeHome,
    *,
    agency_id: str,
    name: str,
    endpoint: str,
    peer_listen: str | None,
    api_listen: str,
    database_url: str,
    kdf_log2_n: int,
    credential_log2_n: int,
    mldsa65: bool,
    api_public: bool,
    api_names: tuple[str, ...],
) -> None:
    path = home.path
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The home holds keys and notices: only its owner may enter, even if it existed.
    path.chmod(0o700)
    identity = generate_identity(agency_id, name, endpoint, mldsa65=mldsa65)
    api_keys = _init_api(home, agency_id, api_listen, credential_log2_n, api_names)
    assert home.unlocker is not None
    new_keys = [*identity_keys(identity), *api_keys, storage_key_entry(StorageKey.generate())]
    home.keys.create(
        new_keys,
        identity_public_files(identity),
        home.unlocker,
        log2_n=kdf_log2_n,
    )
    config = NodeConfig(
        agency_id=agency_id,
        name=name,
        endpoint=endpoint,
        peer_listen=peer_listen or _bind_all(endpoint),
        api_listen=api_listen,
        created_at=identity.created_at,
        database_url=database_url,
        api_public=api_public,
    )
    write_private_file(path / CONFIG_FILE, config.to_toml().encode())
    if home.database_url(config) == sqlite_url(path / DATABASE_FILE):
        # SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(path / DATABASE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    store = home.open_store(config, upgrade=True)
    now = dt.datetime.now(dt.UTC)
    try:
        register_admin(home, store, now=now)
        with store.write() as session:
            append(
                session,
                AuditKind.NODE_INITIALISED,
                at=now,
                peer=agency_id,
                actor=ADMIN,
                detail=f"card {identity.card.fingerprint.replace(' ', '')}",
            )
            for key in new_keys:  # ids and roles only: a key id reveals nothing of the key
                append(
                    session,
                    AuditKind.KEY_CREATED,
                    at=now,
                    actor=ADMIN,
                    detail=f"{key.entry.role} key {key.entry.key_id}",
                )
    finally:
        store.close()


def register_admin(home: NodeHome, store: Store, *, now: dt.datetime) -> bool:
    """Register the home's ``admin`` credential (a new home, or one made before named
    identities) unless an ``admin`` identity exists already (registered, rotated or
    revoked: a revoked admin is not brought back) or the home holds no admin credential
    any more. True if it registered it."""
    path = home.credential_dir(ADMIN) / "client.crt"
    if not path.is_file():
        return False
    with store.read() as session:
        if users.exists(session, ADMIN):
            return False
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    fingerprint = certificate_sha256(certificate.public_bytes(serialization.Encoding.DER))
    with store.write() as session:
        if users.exists(session, ADMIN):
            return False
        users.add(
            session,
            name=ADMIN,
            role=ADMIN,  # the role of the same name (server/access.py)
            certificate_sha256=fingerprint,
            expires_at=certificate.not_valid_after_utc,
            actor="node",
            now=now,
        )
    return True


def storage_key_entry(key: StorageKey) -> NewKey:
    """The key-store entry of a new storage key."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    entry = KeyEntry(STORAGE_ROLE, STORAGE_KEY_FILE, key.key_id, STORAGE_KEY_KIND, "active", now)
    return NewKey(entry, key.secret())


def change_passphrase(home: NodeHome, new: Passphrase) -> None:
    """Seal every key of ``home`` under ``new``.

    The key store switches in one atomic step (a crash leaves the old set in
    use); then each credential folder whose key opens with the old passphrase
    gets its key file replaced by one rename. Audited.
    """
    if home.unlocker is None:
        raise KeyStoreError("changing the passphrase needs the current one")
    fresh = Unlocker(new)
    home.keys.reseal(home.unlocker, fresh, log2_n=home.keys.params().log2_n)
    credentials = home.path / "credentials"
    folders = sorted(p for p in credentials.iterdir() if p.is_dir()) if credentials.is_dir() else []
    for folder in folders:
        try:
            credential = ClientCredential.load(folder, home.unlocker)
            log2_n = SealedFile.parse((folder / "client.key").read_bytes(), "").params.log2_n
        except KeyStoreError:
            continue  # sealed under another passphrase: its holder's to change
        credential.reseal(folder, fresh, log2_n=log2_n)
    _audit(home, AuditKind.KEYS_PASSPHRASE_CHANGED, f"key store {home.keys.current().name}")


DEFAULT_API_PORT = 7700


def default_api_listen() -> str:
    """``127.0.0.1:7700`` if that port is free now, else a port the kernel has free.

    A second node set up on the same machine then gets its own local API port
    instead of failing at its first ``serve``.
    """
    for port in (DEFAULT_API_PORT, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return f"127.0.0.1:{probe.getsockname()[1]}"
    raise ConfigError("no free port on 127.0.0.1 for the local API; give one with --api")


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _check_endpoint(option: str, value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option} must be HOST:PORT with a port from 1 to 65535, not {value!r}")


def _bind_all(endpoint: str) -> str:
    _host, _, port = endpoint.rpartition(":")
    return f"0.0.0.0:{port}"


def _init_api(
    home: NodeHome,
    agency_id: str,
    api_listen: str,
    credential_log2_n: int,
    api_names: tuple[str, ...] = (),
) -> list[NewKey]:
    """The local API's certificates and the admin credential; returns the keys to seal."""
    home.api_dir.mkdir(mode=0o700, parents=True)
    ca = local_certificate_authority(agency_id)
    host = api_listen.rpartition(":")[0] or "127.0.0.1"
    server = issue_api_server_certificate(ca, host, api_names)
    (home.api_dir / "ca.crt").write_bytes(ca.certificate_pem())
    (home.api_dir / "server.crt").write_bytes(server.certificate_pem())
    issue_client_credential(home, ADMIN, ca, api_target(api_listen), log2_n=credential_log2_n)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return [
        _api_key(API_CA, ca, "ECDSA P-256 key of the local API's certificate authority", now),
        _api_key(API_SERVER, server, "ECDSA P-256 TLS key of the local API", now),
    ]


def _api_key(role: str, issued: IssuedCertificate, kind: str, now: dt.datetime) -> NewKey:
    der = issued.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_id = certificate_sha256(issued.certificate.public_bytes(serialization.Encoding.DER))
    return NewKey(KeyEntry(role, f"{role}.key", key_id, kind, "active", now), der)


def issue_client_credential(
    home: NodeHome,
    name: str,
    ca: IssuedCertificate,
    target: str,
    *,
    log2_n: int = CREDENTIAL_LOG2_N,
) -> Path:
    """Issue a local-API client credential ``name`` into ``credentials/<name>/``.

    Its key is sealed under the home's passphrase.
    """
    if home.unlocker is None:
        raise KeyStoreError("issuing a credential needs the passphrase to seal its key")
    (home.path / "credentials").mkdir(mode=0o700, exist_ok=True)
    issued = issue_api_client_certificate(ca, name)
    folder = home.credential_dir(name)
    ClientCredential(
        ca_certificate=ca.certificate_pem(),
        certificate=issued.certificate_pem(),
        private_key=issued.key_pem(),
        target=target,
    ).save(folder, home.unlocker, log2_n=log2_n)
    return folder


# Files of a home made before keys were sealed: PEM private keys in clear.
_UNSEALED_NODE_KEYS = ("signing.key", "kem-mlkem768.key", "kem-x25519.key", "tls.key", "tls.crt")
_UNSEALED_API_KEYS = ("ca.key", "server.key")


def seal_unsealed_home(path: Path, passphrase: Passphrase, *, log2_n: int) -> NodeHome:
    """Seal the clear private keys of a home made before keys were sealed, then delete them.

    The key store is written and switched to first; the clear files are
    removed only after it opens with ``passphrase``, and credential folders
    whose key is still in clear are sealed under it too. Run again after a
    crash, it finishes the job. Audited.
    """
    unlocker = Unlocker(passphrase)
    home = NodeHome(path, unlocker)
    config = home.config()
    keys_dir, api_dir = home.keys_dir, home.api_dir
    if not home.keys.exists():
        if not (keys_dir / "signing.key").exists():
            raise KeyStoreError(f"{keys_dir} holds no keys to seal")
        identity = NodeIdentity(
            agency_id=config.agency_id,
            name=config.name,
            endpoint=config.endpoint,
            created_at=config.created_at,
            signing_key=_clear_key(keys_dir / "signing.key"),
            kem_mlkem=_clear_key(keys_dir / "kem-mlkem768.key"),
            kem_x25519=_clear_key(keys_dir / "kem-x25519.key"),
            tls=IssuedCertificate(
                _clear_key(keys_dir / "tls.key"),
                x509.load_pem_x509_certificate((keys_dir / TLS_CERT_FILE).read_bytes()),
            ),
        )
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        api = [
            _api_key(role, _clear_issued(api_dir, name), kind, now)
            for role, name, kind in (
                (API_CA, "ca", "ECDSA P-256 key of the local API's certificate authority"),
                (API_SERVER, "server", "ECDSA P-256 TLS key of the local API"),
            )
        ]
        home.keys.create(
            [*identity_keys(identity), *api],
            {TLS_CERT_FILE: identity.tls.certificate_pem()},
            unlocker,
            log2_n=log2_n,
            beside_unsealed=True,
        )
    home.identity(config)  # the sealed set opens and parses before anything is deleted
    for name in _UNSEALED_NODE_KEYS:
        (keys_dir / name).unlink(missing_ok=True)
    for name in _UNSEALED_API_KEYS:
        (api_dir / name).unlink(missing_ok=True)
    credentials = path / "credentials"
    for folder in sorted(credentials.iterdir()) if credentials.is_dir() else []:
        key = folder / "client.key"
        if key.is_file() and key.read_bytes().startswith(b"-----BEGIN"):
            ClientCredential(
                ca_certificate=(folder / "ca.crt").read_bytes(),
                certificate=(folder / "client.crt").read_bytes(),
                private_key=read_private_file(key),
                target=(folder / "target").read_text(encoding="utf-8").strip(),
            ).reseal(folder, unlocker, log2_n=max(CREDENTIAL_LOG2_N, log2_n - 1))
    _audit(home, AuditKind.KEYS_SEALED, f"key store {home.keys.current().name}")
    return home


def _clear_key(path: Path) -> Any:
    try:
        return serialization.load_pem_private_key(read_private_file(path), password=None)
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"key file {path} is unreadable") from exc


def _clear_issued(api_dir: Path, name: str) -> IssuedCertificate:
    certificate = x509.load_pem_x509_certificate((api_dir / f"{name}.crt").read_bytes())
    return IssuedCertificate(_clear_key(api_dir / f"{name}.key"), certificate)


def _audit(home: NodeHome, kind: AuditKind, detail: str) -> None:
    store = home.open_store()
    try:
        with store.write() as session:
            append(session, kind, at=dt.datetime.now(dt.UTC), actor=ADMIN, detail=detail)
    finally:
        store.close()
