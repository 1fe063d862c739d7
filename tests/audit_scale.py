"""The audit log at scale: build a log of N events, then time `verify`, an inclusion
proof and a consistency proof against it.

    python -m tests.audit_scale --events 1000000 [--database PATH]

Used for the figures in docs/ARCHITECTURE.md and by test_audit_scale.py (a small log, no
timing asserted). The events are realistic in shape (a notice's life: sealed, sent,
receipt-verified, delivered) with UUIDv7 message ids and envelope digests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from liaison.keys.ids import new_message_id
from liaison.keys.merkle import MemoryTree, inclusion_proof, leaf_hash, verify_inclusion
from liaison.server.store.auditlog import StoredTree, entry_bytes, verify
from liaison.server.store.models import AuditLeaf
from liaison.server.store.store import Store, sqlite_url

KINDS = ("sealed", "sent", "receipt-verified", "delivered")
PEERS = ("DE.BPOL.LO-RABAT", "FR.DCPJ.OCLTIC", "ES.CNP.UCRIF")
BATCH = 20_000


def build(path: Path, events: int) -> None:
    """A migrated database at ``path`` whose audit log holds ``events`` events."""
    store = Store(sqlite_url(path))
    store.migrate()
    store.close()
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    tree = MemoryTree()
    db = sqlite3.connect(path)
    try:
        (seq,) = db.execute("SELECT coalesce(max(seq), 0) FROM audit_events").fetchone()
        for (entry,) in db.execute("SELECT entry FROM audit_entries ORDER BY seq"):
            tree.append(leaf_hash(entry))
        rows, leaves, nodes = [], [], []
        message_id, digest = "", ""
        while seq < events:
            seq += 1
            kind = KINDS[seq % len(KINDS)]
            if kind == "sealed":
                message_id = new_message_id()
                digest = hashlib.sha256(message_id.encode()).hexdigest()
            at = start + dt.timedelta(milliseconds=seq * 37)
            peer = PEERS[seq % len(PEERS)]
            actor = "system" if kind == "sealed" else None
            entry = entry_bytes(
                seq=seq,
                at=at,
                event=kind,
                actor=actor,
                peer=peer,
                message_id=message_id,
                envelope_sha256=digest,
                reason=None,
                detail=None,
            )
            rows.append(
                (seq, at.strftime("%Y-%m-%d %H:%M:%S.%f"), kind, message_id, peer, actor, digest)
            )
            leaves.append((seq, entry))
            nodes.extend(node for node in tree.append(leaf_hash(entry)) if node[0] > 0)
            if len(rows) == BATCH or seq == events:
                _flush(db, rows, leaves, nodes)
                rows, leaves, nodes = [], [], []
        db.commit()
    finally:
        db.close()


def _flush(db: sqlite3.Connection, rows: list, leaves: list, nodes: list) -> None:  # type: ignore[type-arg]
    db.executemany(
        "INSERT INTO audit_events (seq, at, event, message_id, peer, actor, envelope_sha256) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.executemany("INSERT INTO audit_entries (seq, entry) VALUES (?, ?)", leaves)
    db.executemany("INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)", nodes)


@dataclass(frozen=True)
class Figures:
    events: int
    verify_seconds: float
    proof_ms: float
    verified: bool


def measure(path: Path, proofs: int = 200) -> Figures:
    store = Store(sqlite_url(path))
    try:
        with store.read() as session:
            began = time.perf_counter()
            verdict = verify(session)
            verify_seconds = time.perf_counter() - began
        size = verdict.size
        began = time.perf_counter()
        for number in range(proofs):
            index = (number * 7919) % size
            with store.read() as session:
                tree = StoredTree(session)
                proof = inclusion_proof(tree, index, size)
                entry = session.get_one(AuditLeaf, index + 1).entry
            assert verify_inclusion(leaf_hash(entry), index, size, proof, verdict.root)
        proof_ms = (time.perf_counter() - began) / proofs * 1000
    finally:
        store.close()
    return Figures(size, verify_seconds, proof_ms, verdict.ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--database", help="where to build it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.database) if args.database else Path(scratch) / "audit.db"
        if not path.exists():
            began = time.perf_counter()
            build(path, args.events)
            print(f"built {args.events} events in {time.perf_counter() - began:.1f} s")
        figures = measure(path)
        print(
            f"verify: {figures.events} events in {figures.verify_seconds:.2f} s "
            f"({'verified' if figures.verified else 'NOT VERIFIED'}); "
            f"inclusion proof (with its entry): {figures.proof_ms:.2f} ms"
        )


if __name__ == "__main__":
    main()
