"""``liaison bench`` runs and reports what issue 10 asks for (no figure is asserted:
a benchmark is not a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli_homes import run

KEYS = {
    "notices_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "grpc_mtls_echo_per_s",
    "crypto_floor_per_s",
    "ratio_vs_echo",
    "ratio_vs_crypto_floor",
    "rss_mb_max",
    "cpu_ms_per_notice_sender",
    "cpu_ms_per_notice_receiver",
    "n",
    "payload_bytes",
}


def _bench(tmp_path: Path, *options: str) -> tuple[dict[str, Any], str]:
    """``liaison bench --quick --json OPTIONS`` in a process: its report, and its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "liaison.client.cli", "bench", "--quick", "--json", *options],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report, done.stderr


def test_bench_quick_json_prints_every_figure(tmp_path: Path) -> None:
    report, stderr = _bench(tmp_path, "-n", "60")
    assert report.keys() >= KEYS | {"large"}
    assert report["large"].keys() >= KEYS
    assert report["n"] == 60
    assert report["payload_bytes"] < report["large"]["payload_bytes"]
    for figures in (report, report["large"]):
        assert figures["notices_per_s"] > 0
        assert figures["grpc_mtls_echo_per_s"] > 0
        assert figures["crypto_floor_per_s"] > 0
        ratio = figures["notices_per_s"] / figures["grpc_mtls_echo_per_s"]
        assert figures["ratio_vs_echo"] == pytest.approx(ratio, abs=0.001)
    assert "bench:" in stderr  # the progress line
    assert list(tmp_path.iterdir()) == []  # the nodes' homes are removed


def test_bench_keep_refuses_a_folder_that_exists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "bench", "--quick", "--keep", str(tmp_path))
    assert code == 2
    assert out == ""
    assert "exists already" in err


def test_bench_on_postgresql_with_two_replicas(tmp_path: Path, postgres_url: str) -> None:
    """Issue 11's mode: the sending node on PostgreSQL, two replicas of it."""
    report, _ = _bench(tmp_path, "-n", "40", "--database-url", postgres_url, "--replicas", "2")
    assert (report["database"], report["replicas"]) == ("postgresql", 2)
    assert report.keys() >= KEYS
    assert report["notices_per_s"] > 0
    assert list(tmp_path.iterdir()) == []


def test_bench_replicas_need_a_shared_database(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "bench", "--quick", "--replicas", "2")
    assert code == 2
    assert "--database-url" in err
