"""A node's configuration (``config.toml`` in its home) and its hard limits."""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from liaison.keys.envelope import EnvelopeLimits
from liaison.keys.ids import is_agency_id

CONFIG_FILE = "config.toml"


class ConfigError(Exception):
    """The node's configuration is missing or invalid."""


@dataclass(frozen=True)
class Limits:
    """Every bound the node enforces, in one place."""

    max_envelope_bytes: int = 16 * 1024 * 1024
    max_lifetime_days: int = 30
    clock_skew_seconds: int = 300
    default_ttl_seconds: int = 7 * 24 * 3600
    # Messages in flight to one peer at a time (pipelining window). Below the peers'
    # peer_calls and peer_streams_per_connection (their defaults are these of ours):
    # a call past a receiver's stream limit is refused (REFUSED_STREAM, UNAVAILABLE),
    # which a sender takes for the peer being down.
    delivery_window: int = 64
    # Envelope bytes in flight to one peer at a time: past it, a message waits in the
    # queue (on disk), not in memory. One envelope is always let through, whatever its
    # size, when nothing else is in flight.
    delivery_window_bytes: int = 16 * 1024 * 1024
    delivery_timeout_seconds: float = 30.0
    # HTTP/2 keepalive on connections to peers: a ping after this long without one, and
    # the connection dropped if the ping has no answer within the timeout.
    keepalive_seconds: float = 20.0
    keepalive_timeout_seconds: float = 10.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    # Most writes folded into one database transaction.
    commit_batch: int = 256
    # Threads for the database lookups and the sealing of local API calls. More help
    # only when lookups wait on a remote database.
    worker_threads: int = 2
    list_default: int = 50
    list_max: int = 1000
    # Rows one listing page may look at when it filters on sealed fields (case, text).
    list_scan_max: int = 100_000
    max_wait_seconds: int = 120
    # Both listeners: a TLS handshake must finish within this time.
    handshake_timeout_seconds: float = 5.0
    # Peer listener: all connections, and HTTP/2 streams on one connection.
    peer_max_connections: int = 1024
    peer_streams_per_connection: int = 128
    # A connection with no call for this long is closed.
    peer_idle_seconds: float = 300.0
    # Per pinned peer: connections with calls in flight, calls in flight, rate.
    peer_connections: int = 4
    peer_calls: int = 128
    # Not below the throughput a node is built for (issue 10: 500 notices/s to one peer);
    # a flood is bounded by peer_calls and the byte limits as well.
    peer_rate_per_second: float = 1000.0
    peer_rate_burst: int = 2000
    # Per pinned peer: envelope bytes stored (quota) and held in memory at once.
    peer_quota_bytes: int = 8 * 1024**3
    peer_receive_bytes: int = 16 * 1024 * 1024
    # A request must have arrived this long after its call began.
    peer_read_timeout_seconds: float = 60.0
    # All peers together: envelope bytes being checked and stored at once.
    receive_bytes: int = 64 * 1024 * 1024
    # A checkpoint of the audit log is signed this often when the log grew (and on demand),
    # and sent to every active peer to cosign.
    checkpoint_interval_seconds: float = 300.0

    def envelope(self) -> EnvelopeLimits:
        return EnvelopeLimits(
            max_envelope_bytes=self.max_envelope_bytes,
            max_lifetime=dt.timedelta(days=self.max_lifetime_days),
            clock_skew=dt.timedelta(seconds=self.clock_skew_seconds),
        )

    @property
    def max_grpc_message_bytes(self) -> int:
        # The envelope travels inside a DeliverRequest; leave room for framing.
        return self.max_envelope_bytes + 64 * 1024


@dataclass(frozen=True)
class NodeConfig:
    agency_id: str
    name: str
    # host:port that peers dial (published on the card).
    endpoint: str
    # host:port the peer listener binds.
    peer_listen: str
    # host:port of the local API (loopback by default).
    api_listen: str
    created_at: dt.datetime
    database_url: str = ""
    limits: Limits = field(default_factory=Limits)
    # Tell a peer when an operator first opens its notice (a READ acknowledgement). Some
    # agencies will not disclose reads: then READ stays local.
    disclose_reads: bool = True
    # The local API on an address other than loopback is served only if said here.
    api_public: bool = False

    def to_toml(self) -> str:
        lines = [
            "[node]",
            f"agency_id = {_quote(self.agency_id)}",
            f"name = {_quote(self.name)}",
            f"endpoint = {_quote(self.endpoint)}",
            f"created_at = {self.created_at.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            "",
            "[listen]",
            f"peer = {_quote(self.peer_listen)}",
            f"api = {_quote(self.api_listen)}",
            "# The local API beyond this machine (an address other than loopback): say so.",
            f"api_public = {'true' if self.api_public else 'false'}",
            "",
            "[database]",
            "# Empty: SQLite in the node's home.",
            f"url = {_quote(self.database_url)}",
            "",
            "[policy]",
            "# Send the peer a read notification when an operator first opens its notice.",
            f"disclose_reads = {'true' if self.disclose_reads else 'false'}",
            "",
            "[limits]",
            *(f"{f.name} = {getattr(self.limits, f.name)!r}" for f in fields(Limits)),
        ]
        return "\n".join(lines) + "\n"


def api_target(api_listen: str) -> str:
    """The address a client dials for an API that listens on ``api_listen`` (loopback
    when it listens on every address)."""
    host, _, port = api_listen.rpartition(":")
    return api_listen if host not in ("0.0.0.0", "::", "[::]") else f"127.0.0.1:{port}"  # noqa: S104


def _quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    if any(ord(c) < 0x20 for c in escaped):
        raise ConfigError("configuration values may not contain control characters")
    return f'"{escaped}"'


def load_config(home: Path) -> NodeConfig:
    """Read and validate ``home/config.toml``; raises ``ConfigError``."""
    path = home / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{home} is not a node home (no {CONFIG_FILE}); run `liaison init`"
        ) from exc
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is unreadable: {exc}") from exc
    try:
        node, listen = data["node"], data["listen"]
        created = node["created_at"]
        if not isinstance(created, dt.datetime) or created.tzinfo is None:
            raise ConfigError(f"{path}: node.created_at must be a UTC date-time")
        config = NodeConfig(
            agency_id=_str(node, "agency_id"),
            name=_str(node, "name"),
            endpoint=_str(node, "endpoint"),
            peer_listen=_str(listen, "peer"),
            api_listen=_str(listen, "api"),
            created_at=created.astimezone(dt.UTC),
            database_url=check_no_password(
                _str(data.get("database", {}), "url", default=""), setting="database.url"
            ),
            limits=_limits(data.get("limits", {})),
            disclose_reads=_bool(data.get("policy", {}), "disclose_reads", default=True),
            api_public=_bool(listen, "api_public", default=False),
        )
    except KeyError as exc:
        raise ConfigError(f"{path}: missing setting {exc}") from exc
    if not is_agency_id(config.agency_id):
        raise ConfigError(f"{path}: invalid agency id {config.agency_id!r}")
    check_api_listen(config.api_listen, public=config.api_public, setting=f"{path}: listen.api")
    return config


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_listen(api_listen: str, *, public: bool, setting: str) -> None:
    """Refuse (``ConfigError``) a local API beyond this machine that nobody asked for."""
    host = api_listen.rpartition(":")[0]
    if not public and not is_loopback(host):
        raise ConfigError(
            f"{setting} {api_listen} is not a loopback address: the local API would be "
            "reachable beyond this machine; if that is meant, say so (init --api-public, or "
            "api_public = true under [listen])"
        )


def _str(table: dict[str, Any], key: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise KeyError(key)
    if not isinstance(value, str):
        raise ConfigError(f"setting {key} must be a string")
    return value


def _bool(table: dict[str, Any], key: str, *, default: bool) -> bool:
    value = table.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"setting {key} must be true or false")
    return value


# A home whose config.toml says ``url = "env:LIAISON_DATABASE_URL"`` takes its database
# URL from that variable (replicas set up from their environment). Only such a home:
# a variable left exported must not move another node (a demo, a new init) into the
# database of a production node.
DATABASE_URL_VARIABLE = "LIAISON_DATABASE_URL"
DATABASE_FROM_ENVIRONMENT = f"env:{DATABASE_URL_VARIABLE}"


def check_no_password(url: str, *, setting: str) -> str:
    """``url`` if it holds no password; a password belongs in libpq's passfile
    (``~/.pgpass`` or ``PGPASSFILE``) or ``PGPASSWORD``, never in a file of settings."""
    if url and _password_of(url):
        raise ConfigError(
            f"{setting}: the URL holds a password; take it out and put it in a libpq "
            "passfile (~/.pgpass, or PGPASSFILE) or PGPASSWORD"
        )
    return url


def _password_of(url: str) -> str | None:
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - the CLI's fast start
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None  # not a URL at all: check_database_url says so
    # libpq also takes it as a parameter: ...?password=...
    password = parsed.password or parsed.query.get("password")
    if isinstance(password, tuple):
        password = password[0] if password else None
    return None if not password else str(password)


def _limits(table: dict[str, Any]) -> Limits:
    known = {f.name: f for f in fields(Limits)}
    unknown = set(table) - set(known)
    if unknown:
        raise ConfigError(f"unknown limits: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, given in table.items():
        expected = type(getattr(Limits(), name))
        value = float(given) if expected is float and type(given) is int else given
        if type(value) is not expected or value <= 0:
            raise ConfigError(f"limit {name} must be a positive {expected.__name__}")
        values[name] = value
    return Limits(**values)


# `liaison config set`: the settings that may change after init. The agency id, name and
# endpoint are published in the node's card; they change with a new card, not here.
SETTABLE = (
    "listen.peer",
    "listen.api",
    "listen.api_public",
    "database.url",
    "policy.disclose_reads",
    *(f"limits.{f.name}" for f in fields(Limits)),
)


def with_setting(config: NodeConfig, key: str, text: str) -> NodeConfig:
    """``config`` with ``key`` set from the text ``text``, checked as ``load_config``
    checks it; raises ``ConfigError`` naming what is wrong."""
    if key not in SETTABLE:
        published = key in ("node.agency_id", "node.name", "node.endpoint")
        raise ConfigError(
            f"{key} is published in the node's card and cannot change here"
            if published
            else f"{key} is not a setting; one of: {', '.join(SETTABLE[:5])}, limits.NAME"
        )
    section, name = key.split(".", 1)
    if key in ("listen.api_public", "policy.disclose_reads"):
        if text not in ("true", "false"):
            raise ConfigError(f"{key} must be true or false")
        flag = text == "true"
        if key == "listen.api_public":
            changed = dataclasses.replace(config, api_public=flag)
        else:
            changed = dataclasses.replace(config, disclose_reads=flag)
    elif section == "listen":
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{key} must be HOST:PORT with a port from 1 to 65535")
        if name == "api":
            changed = dataclasses.replace(config, api_listen=text)
        else:
            changed = dataclasses.replace(config, peer_listen=text)
    elif section == "database":
        changed = dataclasses.replace(
            config, database_url=check_no_password(text, setting="database.url")
        )
    else:
        expected = type(getattr(Limits(), name))
        try:
            value: Any = expected(text)
        except ValueError:
            raise ConfigError(f"{key} must be a positive {expected.__name__}") from None
        changed = dataclasses.replace(config, limits=_limits({**_given(config), name: value}))
    check_api_listen(changed.api_listen, public=changed.api_public, setting="listen.api")
    return changed


def _given(config: NodeConfig) -> dict[str, Any]:
    return {f.name: getattr(config.limits, f.name) for f in fields(Limits)}


def write_config(home: Path, config: NodeConfig) -> None:
    """Replace ``home/config.toml`` (mode 0600) in one rename."""
    path = home / CONFIG_FILE
    fresh = path.with_name(CONFIG_FILE + ".new")
    fresh.unlink(missing_ok=True)
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, config.to_toml().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fresh.replace(path)
