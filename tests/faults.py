"""A TCP proxy that injects network faults between a client and a server.

It forwards bytes and never looks at them, so it works under TLS and HTTP/2.
Tests use it to freeze live connections without closing them, to hold a
server's responses back, and to refuse new connections.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")

LISTEN_HOST = "127.0.0.1"
CHUNK_BYTES = 64 * 1024
CALL_TIMEOUT_SECONDS = 10.0


@dataclass(eq=False)
class _Link:
    """One proxied connection: the writer towards each side and the two pumps."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    held: bytearray = field(default_factory=bytearray)


class FaultProxy:
    """A TCP proxy on 127.0.0.1 forwarding each accepted connection to ``target``.

    The proxy runs its own event loop in a daemon thread; every public method
    may be called from any other thread.
    """

    def __init__(self, target: str, *, listen_port: int = 0) -> None:
        host, _, port = target.rpartition(":")
        self._target_host = host.strip("[]")
        self._target_port = int(port)
        self._listen_port = listen_port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._port: int | None = None
        # Live links, and frozen ones kept here so their sockets stay open.
        self._links: set[_Link] = set()
        self._frozen: list[_Link] = []
        # Plain flags read by the loop thread; assigning a bool needs no lock.
        self._holding = False
        self._refusing = False
        self._accepted = threading.Condition()
        self._connections = 0

    def start(self) -> FaultProxy:
        """Bind the listening socket and serve in a background thread."""
        if self._loop is not None:
            raise RuntimeError("a FaultProxy can be started only once")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        self._server = self._call(
            asyncio.start_server(self._accept, LISTEN_HOST, self._listen_port)
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def port(self) -> int:
        """The port the proxy listens on; raises RuntimeError before start()."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``, ready for a gRPC channel target."""
        return f"{LISTEN_HOST}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted so far, refused ones included."""
        with self._accepted:
            return self._connections

    def wait_for_connections(self, count: int, timeout: float) -> bool:
        """Block until at least ``count`` connections were accepted; False on timeout."""
        with self._accepted:
            return self._accepted.wait_for(lambda: self._connections >= count, timeout)

    def freeze(self) -> None:
        """Stop forwarding on every open connection, both ways, without closing it.

        The sockets stay open until stop(); connections accepted later work normally.
        """
        self._call(self._freeze_links())

    def hold_responses(self) -> None:
        """Keep bytes from the target in a buffer instead of forwarding them."""
        self._holding = True

    def release_responses(self) -> None:
        """Forward every held byte, in order, and stop holding."""
        self._call(self._release_links())

    def refuse_new(self, refuse: bool = True) -> None:
        """Accept and close new connections at once; open ones are untouched."""
        self._refusing = refuse

    def stop(self) -> None:
        """Close every socket, frozen ones included, and end the thread. Idempotent."""
        if self._loop is None or self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_SECONDS)
        self._loop.close()
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` on the proxy's loop and wait for its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        return future.result(CALL_TIMEOUT_SECONDS)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._accepted:
            self._connections += 1
            self._accepted.notify_all()
        if self._refusing:
            writer.close()
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(
                self._target_host, self._target_port
            )
        except OSError:
            writer.close()
            return
        except asyncio.CancelledError:  # stop() while connecting to the target
            writer.transport.abort()
            raise
        link = _Link(client=writer, target=target_writer)
        self._links.add(link)
        link.pumps = [
            asyncio.create_task(self._pump(link, reader, target_writer, from_target=False)),
            asyncio.create_task(self._pump(link, target_reader, writer, from_target=True)),
        ]

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        from_target: bool,
    ) -> None:
        """Copy ``source`` to ``sink`` until either side closes, then close both.

        Cancellation (freeze or stop) leaves the sockets alone.
        """
        try:
            while data := await source.read(CHUNK_BYTES):
                if from_target and self._holding:
                    link.held += data
                else:
                    sink.write(data)
                    await sink.drain()
        except OSError:
            pass
        self._links.discard(link)
        link.client.close()
        link.target.close()

    async def _freeze_links(self) -> None:
        for link in self._links:
            for pump in link.pumps:
                pump.cancel()
        self._frozen.extend(self._links)
        self._links.clear()

    async def _release_links(self) -> None:
        self._holding = False
        for link in self._links:
            if link.held:
                link.client.write(bytes(link.held))
                link.held.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in [*self._links, *self._frozen]:
            link.client.transport.abort()
            link.target.transport.abort()
        self._links.clear()
        self._frozen.clear()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await asyncio.sleep(0)  # aborted transports close their sockets on the next turn
