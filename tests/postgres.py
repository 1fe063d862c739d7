"""A throwaway PostgreSQL cluster for the tests that run against the real thing.

The cluster is made with the machine's ``initdb`` in a temporary folder, listens on
a free loopback port and a socket in that folder, and is removed after the run. As
root it runs as the ``postgres`` user (PostgreSQL refuses to run as root). Each test
gets a database of its own.

Without PostgreSQL's server programs the tests that need it are skipped, unless
``LIAISON_REQUIRE_POSTGRES=1`` (CI sets it after installing Debian's ``postgresql``):
then they fail, saying what is missing.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE = "LIAISON_REQUIRE_POSTGRES"
_START_TRIES = 5
_databases = itertools.count(1)


def server_programs() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: Debian's newest, else the PATH's."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


def missing() -> str | None:
    """Why PostgreSQL tests cannot run here, or None."""
    if server_programs() is None:
        return "PostgreSQL's server programs are not installed (apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401, PLC0415 - whether the driver is there is the question
    except ImportError:
        return "the psycopg driver is not installed (pip install -e '.[dev]')"
    return None


def skip_or_fail() -> None:
    why = missing()
    if why is None:
        return
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{why}; {REQUIRE}=1 asks for the PostgreSQL tests")
    pytest.skip(why)


class Cluster:
    """One running cluster; ``database()`` makes a fresh database and gives its URL."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.port = port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        name = f"liaison_{os.getpid()}_{next(_databases)}"
        import psycopg  # noqa: PLC0415 - only where PostgreSQL runs

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    """Start a cluster in a temporary folder; stop and remove it afterwards."""
    programs = server_programs()
    assert programs is not None
    folder = Path(tempfile.mkdtemp(prefix="liaison-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = folder / "data"
    initdb = [str(programs / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"]
    subprocess.run(
        _as_postgres([*initdb, "-E", "UTF8", "--no-sync"]),
        check=True,
        capture_output=True,
        text=True,
    )
    cluster = None
    try:
        for _ in range(_START_TRIES):  # another process may take the port first
            port = _free_port()
            started = subprocess.run(
                _as_postgres(
                    [
                        str(programs / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        str(folder / "log"),
                        "-w",
                        "-o",
                        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
                        "start",
                    ]
                ),
                capture_output=True,
                text=True,
                check=False,
            )
            if started.returncode == 0:
                cluster = Cluster(folder, port)
                break
        if cluster is None:
            log = (folder / "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start:\n{log}")
        yield cluster
    finally:
        if cluster is not None:
            subprocess.run(
                _as_postgres([str(programs / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(folder, ignore_errors=True)
