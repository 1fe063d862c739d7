"""Hostile clients for the peer listener: handshake floods, idle and trickling
connections, and certificates minted with a pinned peer's key.

Each function runs real sockets and real TLS against a real node and reports
what happened; the tests decide what must hold.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from liaison.keys.identity import NodeIdentity

CONNECT_TIMEOUT_SECONDS = 5.0


@dataclass
class FloodResult:
    attempts: int = 0
    completed: int = 0
    refused: int = 0
    errors: int = 0


def _client_context(cert_pem: bytes | None, key_pem: bytes | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the flood does not care who the server is
    context.set_alpn_protocols(["h2"])
    if cert_pem is not None and key_pem is not None:
        with tempfile.TemporaryDirectory() as folder:
            cert_file, key_file = Path(folder) / "c.pem", Path(folder) / "k.pem"
            cert_file.write_bytes(cert_pem)
            key_file.write_bytes(key_pem)
            context.load_cert_chain(cert_file, key_file)
    return context


def _one_handshake(context: ssl.SSLContext, address: tuple[str, int]) -> bool:
    """One full TLS handshake; True if the server let the connection stand."""
    with (
        socket.create_connection(address, timeout=CONNECT_TIMEOUT_SECONDS) as raw,
        context.wrap_socket(raw) as tls,
    ):
        # TLS 1.3: a refused client certificate shows up as an alert on the first read.
        tls.settimeout(0.5)
        try:
            data = tls.recv(1)
        except TimeoutError:
            return True
        except (ssl.SSLError, ConnectionError):
            return False
        return data != b""


def handshake_flood(
    address: tuple[str, int],
    *,
    count: int,
    threads: int,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
) -> FloodResult:
    """``count`` TLS handshakes from ``threads`` parallel clients, each on a new connection."""
    context = _client_context(cert_pem, key_pem)
    result = FloodResult()
    lock = threading.Lock()
    remaining = iter(range(count))

    def run() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
                result.attempts += 1
            try:
                stood = _one_handshake(context, address)
            except (OSError, ssl.SSLError):
                outcome = "errors"
            else:
                outcome = "completed" if stood else "refused"
            with lock:
                setattr(result, outcome, getattr(result, outcome) + 1)

    workers = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return result


@contextmanager
def idle_connections(address: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """Hold ``count`` TCP connections open that never send a byte."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(address, CONNECT_TIMEOUT_SECONDS))
            sockets.append(sock)
        yield sockets


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True if the server closes ``sock`` within ``timeout`` seconds."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sock.recv(4096) == b"":
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionError:
        return True
    return False


def mint_certificate(issuer: NodeIdentity, common_name: str = "minted") -> tuple[bytes, bytes]:
    """A client certificate signed with ``issuer``'s pinned TLS key: (cert PEM, key PEM).

    The pinned certificate says CA:FALSE; a TLS stack that uses pinned
    certificates as trust anchors accepts this one anyway.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.tls.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(issuer.agency_id.lower())]), critical=False
        )
        .sign(issuer.tls.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem
