"""``liaison demo``: two agencies on loopback exchange sealed notices both ways."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liaison.client.api import LiaisonClient
from liaison.client.errors import NodeUnavailable
from liaison.keys.keystore import write_private_file
from liaison.keys.sealed import PASSPHRASE_VARIABLE, Passphrase
from liaison.server.home import NodeHome, init_home
from liaison.v1 import node_pb2, notice_pb2

READY_TIMEOUT_SECONDS = 30.0
DELIVERY_WAIT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 15.0

N = notice_pb2


@dataclass(frozen=True)
class DemoAgency:
    agency_id: str
    name: str


MOROCCO = DemoAgency("MA.DGSN.CCPI", "DGSN - Centre de Coopération Policière Internationale")
GERMANY = DemoAgency("DE.BPOL.LO-RABAT", "Bundespolizei - Verbindungsbüro Rabat")


def free_port() -> int:
    """A port the kernel just had free on loopback (the demo binds it right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _notices() -> list[tuple[DemoAgency, DemoAgency, N.CaseNotice]]:
    smuggling = N.CaseNotice(
        case_reference="CCPI-2026-0412",
        category=N.CATEGORY_MIGRANT_SMUGGLING,
        priority=N.PRIORITY_URGENT,
        handling=N.TLP_AMBER,
        evaluation=N.Evaluation(
            source_reliability=N.SOURCE_RELIABILITY_B,
            information_assessment=N.INFORMATION_ASSESSMENT_2,
        ),
        subject="Smuggling network moving passengers Tangier - Algeciras - Frankfurt",
        body="Demo text: a network arranges crossings and onward travel by bus.",
        subjects=[
            N.Subject(
                kind=N.SUBJECT_KIND_PERSON,
                name="DEMO PERSON A",
                role="facilitator",
                identifiers=[
                    N.Identifier(
                        type=N.IDENTIFIER_TYPE_PASSPORT_NUMBER,
                        value="X0000001",
                        issuing_country="MAR",
                    )
                ],
            )
        ],
        originator=N.Originator(unit="CCPI Rabat", officer="duty officer"),
    )
    scan = b"%PDF-1.4 demo scan of a counterfeit residence permit\n"
    fraud = N.CaseNotice(
        case_reference="BPOL-LO-RBT-77",
        category=N.CATEGORY_DOCUMENT_FRAUD,
        priority=N.PRIORITY_PRIORITY,
        handling=N.TLP_GREEN,
        evaluation=N.Evaluation(
            source_reliability=N.SOURCE_RELIABILITY_A,
            information_assessment=N.INFORMATION_ASSESSMENT_1,
        ),
        subject="Counterfeit residence permits detected at Frankfurt airport",
        body="Demo text: three counterfeit permits with the same security-feature defect.",
        attachments=[
            N.Attachment(
                name="permit-scan.pdf",
                media_type="application/pdf",
                content=scan,
                sha256=hashlib.sha256(scan).digest(),
            )
        ],
        originator=N.Originator(unit="LO Rabat", officer="liaison officer"),
    )
    follow_up = N.CaseNotice(
        case_reference="CCPI-2026-0412",
        category=N.CATEGORY_MIGRANT_SMUGGLING,
        priority=N.PRIORITY_ROUTINE,
        handling=N.TLP_AMBER_STRICT,
        subject="Follow-up: departure dates confirmed",
        body="Demo text: departures confirmed for the coming week.",
        originator=N.Originator(unit="CCPI Rabat"),
    )
    return [(MOROCCO, GERMANY, smuggling), (GERMANY, MOROCCO, fraud), (MOROCCO, GERMANY, follow_up)]


def run_demo(keep: Path | None = None) -> int:
    """Run the demo; returns 0 if every notice was delivered with a verified receipt."""
    root = keep or Path(tempfile.mkdtemp(prefix="liaison-demo-"))
    processes: list[subprocess.Popen[bytes]] = []
    # The demo's homes seal their keys under a passphrase made for this run.
    secret = secrets.token_urlsafe(24)
    env = {**os.environ, PASSPHRASE_VARIABLE: secret}
    try:
        homes = _set_up(root, Passphrase(secret))
        if keep is not None:
            write_private_file(root / "passphrase", secret.encode() + b"\n")
        for agency, home in homes.items():
            log = (root / f"{agency.agency_id}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "liaison.client.cli", "serve", "--home", str(home.path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            )
        clients = {
            agency: LiaisonClient.from_home(home.path, passphrase=secret)
            for agency, home in homes.items()
        }
        for (agency, client), process in zip(clients.items(), processes, strict=True):
            try:
                client.wait_ready(READY_TIMEOUT_SECONDS)
            except NodeUnavailable:
                process.poll()
                log_tail = (root / f"{agency.agency_id}.log").read_text(errors="replace")[-2000:]
                print(f"{agency.agency_id} did not start (exit {process.returncode}):\n{log_tail}")
                raise
        print("Both nodes are up; mutual TLS with pinned certificates between them.\n")
        ok = _exchange(clients)
        print(f"\n{GERMANY.agency_id} inbox:")
        for summary in clients[GERMANY].list_messages(node_pb2.DIRECTION_INBOUND):
            print(f"  {summary.message_id}  from {summary.peer}  {summary.case_reference}")
        for client in clients.values():
            client.close()
        print(
            "\nDemo "
            + (
                "complete: every notice delivered, every receipt verified."
                if ok
                else "FAILED: not every notice was delivered."
            )
        )
        return 0 if ok else 1
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(
                f"Node homes and logs kept in {root}; their passphrase is in "
                f"{root / 'passphrase'} (LIAISON_PASSPHRASE=$(cat {root / 'passphrase'}))"
            )


def _set_up(root: Path, passphrase: Passphrase) -> dict[DemoAgency, NodeHome]:
    homes = {}
    for agency in (MOROCCO, GERMANY):
        peer_port, api_port = free_port(), free_port()
        homes[agency] = init_home(
            root / agency.agency_id,
            agency_id=agency.agency_id,
            name=agency.name,
            endpoint=f"127.0.0.1:{peer_port}",
            peer_listen=f"127.0.0.1:{peer_port}",
            api_listen=f"127.0.0.1:{api_port}",
            passphrase=passphrase,
        )
        print(f"Initialised {agency.agency_id} ({agency.name}) on 127.0.0.1:{peer_port}")
    now = dt.datetime.now(dt.UTC)
    for agency, home in homes.items():
        for other, other_home in homes.items():
            if other is agency:
                continue
            card = other_home.identity().card
            store = home.open_store()
            try:
                store.pin_peer(card, actor="admin", now=now)
            finally:
                store.close()
            print(f"{agency.agency_id} pinned {other.agency_id}, card {card.fingerprint}")
    return homes


def _exchange(clients: dict[DemoAgency, LiaisonClient]) -> bool:
    ok = True
    for sender, recipient, notice in _notices():
        result = clients[sender].send_notice(
            recipient.agency_id, notice, wait_seconds=DELIVERY_WAIT_SECONDS
        )
        status = clients[sender].get_status(result.message_id)
        events = [event.event for event in status.timeline]
        verified = "receipt-verified" in events
        print(
            f"{sender.agency_id} -> {recipient.agency_id}  {result.message_id}  "
            f"{notice.case_reference}: sealed, sent, {result.state}"
            + (", receipt verified" if verified else "")
        )
        received = clients[recipient].get_message(result.message_id)
        print(
            f"    {recipient.agency_id} holds it: {len(received.notice.body)} body characters, "
            f"{len(received.notice.attachments)} attachment(s), receipt "
            + received.receipt.receiver
        )
        ok = ok and result.state == "delivered" and verified
    return ok
