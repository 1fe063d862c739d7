"""``liaison bench``: how fast two real nodes exchange notices, against two ceilings.

Two nodes (``liaison serve`` processes: real mutual TLS, SQLite in WAL mode with the
durability of production) on loopback; notices sent from A to B through A's local API
by concurrent senders, and timed until every one is DELIVERED with a verified receipt
(A's audit trail says so, followed with ``watch``). In the same run, with the same
payload sizes, the two ceilings of ``liaison.server.bench``: ``grpc_mtls_echo`` (a
bare gRPC unary echo over mutual TLS between two processes: the transport) and
``crypto_floor`` (the per-notice cryptography alone, in-process: the cryptography).

What is measured (bench/README.md keeps the results):

- throughput: N notices, from the first send to the last delivery;
- latency: send to delivery of each notice, at a fixed offered load below
  saturation (open loop, timed from each notice's scheduled send, so a stall is not
  hidden by the senders waiting for it);
- CPU seconds per notice of each node (``/proc``), and the peak RSS of each;
- ``liaison serve`` start-up (process start to the local API answering, the key
  passphrase's scrypt included), and one notice at a time, send to delivered.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import dataclasses
import datetime as dt
import functools
import hashlib
import importlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liaison.client import render
from liaison.client.aio import AsyncLiaisonClient
from liaison.client.demo import free_port
from liaison.client.errors import UsageError
from liaison.keys.keystore import write_private_file
from liaison.keys.sealed import PASSPHRASE_VARIABLE, Passphrase
from liaison.server.home import NodeHome, init_home, replicate_home
from liaison.v1 import notice_pb2

A_ID, B_ID = "BENCH.SENDER", "BENCH.RECEIVER"
SMALL_BODY_BYTES = 2048
LARGE_ATTACHMENT_BYTES = 1024 * 1024
READY_TIMEOUT_SECONDS = 60.0
DELIVERY_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    small_n: int
    large_n: int
    small_in_flight: int = 32
    large_in_flight: int = 8
    latency_seconds: float = 10.0
    latency_rate_max: float = 100.0
    single_sends: int = 20
    echo_calls_small: int = 4000
    echo_calls_large: int = 200
    floor_seconds: float = 2.0


FULL = Plan(small_n=3000, large_n=200)
QUICK = Plan(
    small_n=600,
    large_n=30,
    latency_seconds=4.0,
    single_sends=10,
    echo_calls_small=2000,
    echo_calls_large=60,
    floor_seconds=1.0,
)


@dataclass
class Run:
    """The figures of one payload size."""

    payload_bytes: int
    n: int
    notices_per_s: float = 0.0
    offered_per_s: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms_per_notice_sender: float = 0.0
    cpu_ms_per_notice_receiver: float = 0.0
    grpc_mtls_echo_per_s: float = 0.0
    crypto_floor_per_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "notices_per_s": round(self.notices_per_s, 1),
            "offered_per_s": round(self.offered_per_s, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p95_ms": round(self.p95_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "grpc_mtls_echo_per_s": round(self.grpc_mtls_echo_per_s, 1),
            "crypto_floor_per_s": round(self.crypto_floor_per_s, 1),
            "ratio_vs_echo": _ratio(self.notices_per_s, self.grpc_mtls_echo_per_s),
            "ratio_vs_crypto_floor": _ratio(self.notices_per_s, self.crypto_floor_per_s),
            "cpu_ms_per_notice_sender": round(self.cpu_ms_per_notice_sender, 3),
            "cpu_ms_per_notice_receiver": round(self.cpu_ms_per_notice_receiver, 3),
            "n": self.n,
            "payload_bytes": self.payload_bytes,
        }


@dataclass
class Report:
    small: Run
    large: Run
    rss_mb_max: float = 0.0
    rss_mb: dict[str, float] = field(default_factory=dict)
    startup_s: float = 0.0
    single_send_median_ms: float = 0.0
    quick: bool = False
    database: str = "sqlite"
    replicas: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "replicas": self.replicas,
            **self.small.figures(),
            "rss_mb_max": round(self.rss_mb_max, 1),
            "rss_mb": {name: round(mb, 1) for name, mb in self.rss_mb.items()},
            "startup_s": round(self.startup_s, 3),
            "single_send_median_ms": round(self.single_send_median_ms, 2),
            "large": {**self.large.figures(), "rss_mb_max": round(self.rss_mb_max, 1)},
            "quick": self.quick,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": _commit(),
            "cpus": os.cpu_count(),
        }


def _ratio(value: float, ceiling: float) -> float:
    return round(value / ceiling, 3) if ceiling else 0.0


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except OSError:
        return ""
    return done.stdout.strip()


# The nodes ---------------------------------------------------------------------------


class BenchNode:
    """One ``liaison serve`` process and what /proc says of it."""

    def __init__(self, home: NodeHome, secret: str, log: Path) -> None:
        self.home = home
        self._secret = secret
        self._log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, PASSPHRASE_VARIABLE: self._secret}
        command = [sys.executable, "-m", "liaison.client.cli", "serve"]
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--home", str(self.home.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def client(self) -> AsyncLiaisonClient:
        return AsyncLiaisonClient.from_home(self.home.path, passphrase=self._secret)

    def cpu_seconds(self) -> float:
        """User and system CPU seconds of the process so far."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def peak_rss_mb(self) -> float:
        """The process's peak resident set (VmHWM), in MiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _homes(root: Path, secret: str, database_url: str) -> tuple[NodeHome, NodeHome]:
    """Two homes on loopback ports that pin each other (production key costs); the
    sender's database is ``database_url`` if given."""
    homes = []
    for agency in (A_ID, B_ID):
        peer, api = free_port(), free_port()
        homes.append(
            init_home(
                root / agency,
                agency_id=agency,
                name=f"Benchmark {agency}",
                endpoint=f"127.0.0.1:{peer}",
                peer_listen=f"127.0.0.1:{peer}",
                api_listen=f"127.0.0.1:{api}",
                passphrase=Passphrase(secret),
                database_url=database_url if agency == A_ID else "",
            )
        )
    now = dt.datetime.now(dt.UTC)
    for home, other in ((homes[0], homes[1]), (homes[1], homes[0])):
        store = home.open_store()
        try:
            store.pin_peer(other.identity().card, actor="admin", now=now)
        finally:
            store.close()
    return homes[0], homes[1]


def notice_of(payload: str) -> notice_pb2.CaseNotice:
    """A typical notice: ``small`` has a 2 KiB body; ``large`` also a 1 MiB attachment."""
    notice = notice_pb2.CaseNotice(
        case_reference="BENCH-1",
        category=notice_pb2.CATEGORY_CYBERCRIME,
        priority=notice_pb2.PRIORITY_ROUTINE,
        handling=notice_pb2.TLP_GREEN,
        subject="Benchmark notice",
        body="x" * SMALL_BODY_BYTES,
        originator=notice_pb2.Originator(unit="bench"),
    )
    if payload == "large":
        content = os.urandom(LARGE_ATTACHMENT_BYTES)
        notice.attachments.add(
            name="evidence.bin",
            media_type="application/octet-stream",
            content=content,
            sha256=hashlib.sha256(content).digest(),
        )
    return notice


# Delivery timing ------------------------------------------------------------------------


class Deliveries:
    """When each message was delivered, from the sender's audit trail (``watch``): on
    every replica of the sender, the first to tell (each sees its own commits at once,
    another replica's within its poll)."""

    def __init__(self, clients: list[AsyncLiaisonClient], after: int) -> None:
        self._clients = clients
        self._after = after
        self.at: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._follow(client)) for client in self._clients]

    async def _follow(self, client: AsyncLiaisonClient) -> None:
        async for event in client.watch(self._after, events=["delivered"]):
            moment = time.perf_counter()
            if event.message_id in self.at:
                continue
            self.at[event.message_id] = moment
            waiter = self._waiters.pop(event.message_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(moment)

    async def of(self, message_id: str) -> float:
        """When ``message_id`` was delivered (waits for it)."""
        if message_id in self.at:
            return self.at[message_id]
        waiter = self._waiters.setdefault(message_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(waiter), DELIVERY_TIMEOUT_SECONDS)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _last_seq(client: AsyncLiaisonClient) -> int:
    last = 0
    async for event in client.audit_events(after=0):
        last = event.seq
    return last


async def _throughput(
    clients: list[AsyncLiaisonClient],
    deliveries: Deliveries,
    notice: notice_pb2.CaseNotice,
    *,
    n: int,
    in_flight: int,
    progress: Callable[[str], None],
    label: str,
) -> tuple[float, list[str]]:
    """``n`` notices by ``in_flight`` concurrent senders; notices/s to the last delivery."""
    sent: list[str] = []
    remaining = iter(range(n))

    async def sender(client: AsyncLiaisonClient) -> None:
        for _ in remaining:
            result = await client.send_notice(B_ID, notice)
            sent.append(result.message_id)
            if len(sent) % 100 == 0:
                progress(f"{label}: {len(sent)}/{n} sent, {len(deliveries.at)} delivered")

    start = time.perf_counter()
    # The senders spread over the replicas' local APIs.
    await asyncio.gather(*(sender(clients[i % len(clients)]) for i in range(in_flight)))
    last = max([await deliveries.of(message_id) for message_id in sent])
    return n / (last - start), sent


async def _latency(
    clients: list[AsyncLiaisonClient],
    deliveries: Deliveries,
    notice: notice_pb2.CaseNotice,
    rate: float,
    seconds: float,
) -> list[float]:
    """Send at ``rate`` per second for ``seconds`` (open loop); each notice's send-to-
    delivery time in ms, from when it was due to be sent."""
    count = max(1, int(rate * seconds))
    start = time.perf_counter()

    async def one(index: int) -> float:
        due = start + index / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        result = await clients[index % len(clients)].send_notice(B_ID, notice)
        return (await deliveries.of(result.message_id) - due) * 1000

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def _measure_payload(
    senders: list[BenchNode],
    b: BenchNode,
    payload: str,
    notice: notice_pb2.CaseNotice,
    *,
    plan: Plan,
    progress: Callable[[str], None],
) -> Run:
    large = payload == "large"
    n = plan.large_n if large else plan.small_n
    run = Run(payload_bytes=notice.ByteSize(), n=n)
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(a.client()) for a in senders]
        deliveries = Deliveries(clients, await _last_seq(clients[0]))
        deliveries.start()
        try:
            progress(f"{payload}: warming up")
            await _throughput(
                clients, deliveries, notice, n=10, in_flight=4, progress=progress, label=payload
            )
            cpu_a, cpu_b = _cpu(senders), b.cpu_seconds()
            run.notices_per_s, _ = await _throughput(
                clients,
                deliveries,
                notice,
                n=n,
                in_flight=plan.large_in_flight if large else plan.small_in_flight,
                progress=progress,
                label=payload,
            )
            run.cpu_ms_per_notice_sender = (_cpu(senders) - cpu_a) * 1000 / n
            run.cpu_ms_per_notice_receiver = (b.cpu_seconds() - cpu_b) * 1000 / n
            if not large:
                run.offered_per_s = min(plan.latency_rate_max, run.notices_per_s / 2)
                progress(f"{payload}: latency at {run.offered_per_s:.0f} notices/s offered")
                times = await _latency(
                    clients, deliveries, notice, run.offered_per_s, plan.latency_seconds
                )
                run.p50_ms = _percentile(times, 0.50)
                run.p95_ms = _percentile(times, 0.95)
                run.p99_ms = _percentile(times, 0.99)
        finally:
            await deliveries.stop()
    return run


def _cpu(nodes: list[BenchNode]) -> float:
    """CPU seconds of all the sending node's replicas together."""
    return sum(node.cpu_seconds() for node in nodes)


async def _single_sends(a: BenchNode, count: int) -> float:
    """Median ms from ``send`` to delivered, one notice at a time."""
    notice = notice_of("small")
    times = []
    async with a.client() as client:
        for _ in range(count):
            start = time.perf_counter()
            result = await client.send_notice(B_ID, notice, wait_seconds=30)
            times.append((time.perf_counter() - start) * 1000)
            if result.state != "delivered":
                raise RuntimeError(f"a notice was not delivered: {result.state}")
    return statistics.median(times)


async def _wait_ready(node: BenchNode, client: AsyncLiaisonClient | None = None) -> float:
    """Seconds from now until the node's local API answers (asked through ``client``, if
    given: made before the clock starts, its credential's unlocking is not the node's).

    The port is tried every 20 ms first: gRPC's own reconnection waits a second after
    a refused attempt, which would be measured instead of the node.
    """
    host, _, port = node.home.config().api_listen.rpartition(":")
    async with client or node.client() as ready:  # closed whatever happens
        start = time.perf_counter()
        while True:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                if time.perf_counter() - start > READY_TIMEOUT_SECONDS:
                    raise RuntimeError(
                        f"the node at {node.home.path} did not open its API port in "
                        f"{READY_TIMEOUT_SECONDS:g} s (its log is beside its home)"
                    ) from None
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            break
        await ready.wait_ready(READY_TIMEOUT_SECONDS)
        return time.perf_counter() - start


def _byte_compile() -> None:
    """Byte-compile liaison's modules, as installing the package does: a start-up is timed,
    and a node run from sources that cannot keep bytecode (``PYTHONDONTWRITEBYTECODE``,
    a read-only checkout) compiles every changed module again at each start."""
    for name in ("liaison", "liaison.client", "liaison.keys", "liaison.server"):
        for folder in importlib.import_module(name).__path__:
            compileall.compile_dir(folder, quiet=2, workers=1)


async def run_bench(
    plan: Plan,
    *,
    keep: Path | None,
    progress: Callable[[str], None],
    database_url: str = "",
    replicas: int = 1,
) -> Report:
    """The whole benchmark; the nodes are stopped and (without ``keep``) removed after.

    With ``database_url`` the sending node keeps its data there (an empty database);
    with ``replicas`` above one, that many replicas of it share the database and the
    senders are spread over their local APIs."""
    from liaison.server.bench.echo import measure_echo  # noqa: PLC0415 - loaded when run
    from liaison.server.bench.floor import measure_crypto_floor  # noqa: PLC0415

    _byte_compile()
    root = keep or Path(tempfile.mkdtemp(prefix="liaison-bench-"))
    secret = secrets.token_urlsafe(24)
    nodes: list[BenchNode] = []
    try:
        progress("creating two node homes")
        a_home, b_home = _homes(root, secret, database_url)
        if keep is not None:  # the kept homes open with it (as `liaison demo --keep`)
            write_private_file(root / "passphrase", secret.encode() + b"\n")
        a = BenchNode(a_home, secret, root / "sender.log")
        b = BenchNode(b_home, secret, root / "receiver.log")
        senders = [a]
        for number in range(2, replicas + 1):
            path = replicate_home(
                a_home,
                root / f"{A_ID}-replica-{number}",
                peer_listen=f"127.0.0.1:{free_port()}",
                api_listen=f"127.0.0.1:{free_port()}",
            )
            senders.append(BenchNode(NodeHome(path), secret, root / f"sender-{number}.log"))
        nodes = [*senders, b]
        b.start()
        await _wait_ready(b)
        client = a.client()
        started = time.perf_counter()
        a.start()
        await _wait_ready(a, client)
        startup = time.perf_counter() - started
        for replica in senders[1:]:
            replica.start()
            await _wait_ready(replica)
        reports = {}
        # The same notices go end to end and through the crypto floor.
        notices = {payload: notice_of(payload) for payload in ("small", "large")}
        for payload, notice in notices.items():
            reports[payload] = await _measure_payload(
                senders, b, payload, notice, plan=plan, progress=progress
            )
        progress("one notice at a time")
        single = await _single_sends(a, plan.single_sends)
        rss = {"sender": max(s.peak_rss_mb() for s in senders), "receiver": b.peak_rss_mb()}
        for node in nodes:
            node.stop()
        for payload, run in reports.items():
            envelope_bytes = run.payload_bytes + 1400  # header, HPKE enc and tag, signatures
            calls = plan.echo_calls_large if payload == "large" else plan.echo_calls_small
            in_flight = plan.large_in_flight if payload == "large" else plan.small_in_flight
            progress(f"{payload}: grpc_mtls_echo")
            echo = await measure_echo(
                envelope_bytes, calls=calls, in_flight=in_flight, workdir=root
            )
            run.grpc_mtls_echo_per_s = echo.calls_per_s
            progress(f"{payload}: crypto_floor")
            floor = await asyncio.to_thread(
                functools.partial(
                    measure_crypto_floor,
                    run.payload_bytes,
                    seconds=plan.floor_seconds,
                    notice=notices[payload],
                )
            )
            run.crypto_floor_per_s = floor.per_s
        return Report(
            small=reports["small"],
            large=reports["large"],
            rss_mb_max=max(rss.values()),
            rss_mb=rss,
            startup_s=startup,
            single_send_median_ms=single,
            quick=plan is QUICK,
            database=a_home.database_url().split(":", 1)[0].split("+", 1)[0],
            replicas=replicas,
        )
    finally:
        for node in nodes:
            node.stop()
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


# Output --------------------------------------------------------------------------------


def table(report: Report) -> str:
    """The report as a readable table."""
    rows = [("", "2 KiB notice", "1 MiB notice")]

    def row(name: str, key: str, unit: str = "") -> None:
        small, large = report.small.figures()[key], report.large.figures()[key]
        rows.append((name, f"{small}{unit}", f"{large}{unit}"))

    row("payload (bytes)", "payload_bytes")
    row("notices", "n")
    row("notices/s end to end", "notices_per_s")
    row("grpc_mtls_echo calls/s", "grpc_mtls_echo_per_s")
    row("crypto_floor notices/s", "crypto_floor_per_s")
    row("ratio vs echo", "ratio_vs_echo")
    row("ratio vs crypto floor", "ratio_vs_crypto_floor")
    row("CPU ms/notice, sender", "cpu_ms_per_notice_sender")
    row("CPU ms/notice, receiver", "cpu_ms_per_notice_receiver")
    width = max(len(r[0]) for r in rows)
    lines = [f"{a:<{width}}  {b:>14}  {c:>14}" for a, b, c in rows]
    small = report.small
    lines += [
        "",
        f"latency at {small.offered_per_s:.0f} notices/s offered (2 KiB): "
        f"p50 {small.p50_ms:.1f} ms, p95 {small.p95_ms:.1f} ms, p99 {small.p99_ms:.1f} ms",
        f"one notice at a time, send to delivered: median {report.single_send_median_ms:.1f} ms",
        f"liaison serve start-up: {report.startup_s:.2f} s",
        "peak RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in report.rss_mb.items()),
        f"sending node: {report.database}, {report.replicas} "
        + ("replica" if report.replicas == 1 else "replicas (CPU of all together)"),
    ]
    return "\n".join(lines)


def report_json(report: Report) -> str:
    return json.dumps(report.to_json(), sort_keys=True)


def cmd_bench(args: Any) -> int:
    """``liaison bench``: the table (or with ``--json`` one JSON object on the last line),
    and a progress line on standard error while it runs."""
    plan = QUICK if args.quick else FULL
    if args.n:
        plan = dataclasses.replace(plan, small_n=args.n)
    keep = Path(args.keep).expanduser() if args.keep else None
    if keep is not None and keep.exists():
        raise UsageError(f"{render.safe(str(keep))} exists already; --keep makes a new folder")
    if args.replicas > 1 and not args.database_url:
        raise UsageError("--replicas share one database: give it with --database-url")
    line = _ProgressLine()
    report = asyncio.run(
        run_bench(
            plan,
            keep=keep,
            progress=line,
            database_url=args.database_url or "",
            replicas=args.replicas,
        )
    )
    line.done()
    print(report_json(report) if args.json else table(report))
    return 0


class _ProgressLine:
    """One line on standard error, rewritten on a terminal, a line per step otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._start = time.perf_counter()

    def __call__(self, text: str) -> None:
        stamp = f"[{time.perf_counter() - self._start:5.1f} s] bench: {text}"
        if self._tty:
            sys.stderr.write(f"\r\x1b[K{stamp}")
        else:
            sys.stderr.write(stamp + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self._tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
