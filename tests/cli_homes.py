"""The ``liaison`` CLI in tests: run it in-process, make homes with it, and
fingerprint a home's files to show that a refused command changed nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from liaison.client.cli import main
from liaison.client.demo import free_port
from liaison.keys.sealed import Passphrase
from liaison.server.home import NodeHome
from tests.conftest import TEST_PASSPHRASE

FINGERPRINT = re.compile(r"[0-9a-f]{4}( [0-9a-f]{4}){15}")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``liaison ARGV`` in-process; (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@dataclass(frozen=True)
class CliHome:
    agency_id: str
    path: Path
    api: str
    card_file: Path
    fingerprint: str

    @property
    def home(self) -> NodeHome:
        return NodeHome.unlocked(self.path, Passphrase(TEST_PASSPHRASE))


def run_init(
    capsys: pytest.CaptureFixture[str],
    path: Path,
    agency_id: str,
    *,
    name: str = "Agency",
    endpoint: str = "127.0.0.1:7001",
    extra: tuple[str, ...] = (),
) -> tuple[int, str, str]:
    """``liaison init --home PATH --agency ID --name NAME --endpoint ENDPOINT [extra]``."""
    return run(
        capsys,
        "init",
        "--home",
        str(path),
        "--agency",
        agency_id,
        "--name",
        name,
        "--endpoint",
        endpoint,
        "--kdf-cost",
        "10",
        *extra,
    )


def cli_init(capsys: pytest.CaptureFixture[str], root: Path, agency_id: str) -> CliHome:
    """``liaison init`` on loopback ports, then ``liaison card export`` into a file."""
    path = root / agency_id
    peer, api = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    code, out, err = run_init(
        capsys,
        path,
        agency_id,
        name=f"Agency {agency_id}",
        endpoint=peer,
        extra=("--listen", peer, "--api", api),
    )
    assert code == 0, err
    assert f"Initialised node {agency_id} in {path}" in out
    code, armored, err = run(capsys, "card", "export", "--home", str(path))
    assert code == 0, err
    fingerprint = err.removeprefix("card fingerprint: ").strip()
    assert FINGERPRINT.fullmatch(fingerprint)
    assert f"card           {fingerprint}" in out
    card_file = root / f"{agency_id}.card"
    card_file.write_text(armored, encoding="utf-8")
    return CliHome(agency_id, path, api, card_file, fingerprint)


def peers_add(
    capsys: pytest.CaptureFixture[str], home: CliHome, card: CliHome | Path, *extra: str
) -> tuple[int, str, str]:
    """``liaison peers add CARD [extra]`` on ``home``; a ``CliHome`` card comes with its
    fingerprint."""
    if isinstance(card, CliHome):
        extra = ("--fingerprint", card.fingerprint, *extra)
        card = card.card_file
    return run(capsys, "peers", "add", "--home", str(home.path), str(card), *extra)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` by SHA-256 (links by their target): keys, config,
    node.db and its WAL. Equal snapshots mean nothing on disk changed."""
    found = {}
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def a_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> CliHome:
    return cli_init(capsys, tmp_path, "MA.DGSN.CCPI")


@pytest.fixture
def b_home(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> CliHome:
    return cli_init(capsys, tmp_path, "DE.BPOL.LO-RABAT")
