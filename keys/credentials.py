"""Local-API client credentials: a folder an operator or agency system is handed.

ca.crt        the node's local API CA (trusted for the server)
client.crt    this client's certificate, issued by that CA
client.key    its private key (mode 0600)
target        host:port of the node's local API
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liaison.keys.errors import KeyStoreError
from liaison.keys.identity import read_private_file, write_private_file

API_SERVER_NAME = "localhost"


@dataclass(frozen=True)
class ClientCredential:
    ca_certificate: bytes
    certificate: bytes
    private_key: bytes
    target: str

    def save(self, folder: Path) -> None:
        folder.mkdir(mode=0o700, parents=True)
        (folder / "ca.crt").write_bytes(self.ca_certificate)
        (folder / "client.crt").write_bytes(self.certificate)
        write_private_file(folder / "client.key", self.private_key)
        (folder / "target").write_text(self.target + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> ClientCredential:
        """Raises ``KeyStoreError`` if a file is missing or the key is unsafe."""
        try:
            return cls(
                ca_certificate=(folder / "ca.crt").read_bytes(),
                certificate=(folder / "client.crt").read_bytes(),
                private_key=read_private_file(folder / "client.key"),
                target=(folder / "target").read_text(encoding="utf-8").strip(),
            )
        except FileNotFoundError as exc:
            raise KeyStoreError(f"{folder} is not a complete client credential") from exc
