"""Group commit: many small write units, one database transaction.

Callers on the event loop submit a unit of write work (a function of a
session). One task drains whatever has queued up, runs it all in a single
transaction on a worker thread, and resolves each caller's future. While that
commit is on disk, the next batch gathers, so the cost of a durable commit is
shared by every message that arrived meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from liaison.server.store.store import Store

T = TypeVar("T")
Work = Callable[[Session], Any]

log = logging.getLogger(__name__)


class GroupCommitter:
    def __init__(
        self, store: Store, *, max_batch: int, on_commit: Callable[[], None] | None = None
    ) -> None:
        self._store = store
        self._max_batch = max_batch
        # Told after every commit (the audit feed wakes its followers).
        self._on_commit = on_commit
        self._queue: asyncio.Queue[tuple[Work, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # Its own thread: commits are serial anyway, and must not queue behind reads.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="group-commit")
        self.batches = 0
        self.units = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-committer")

    async def stop(self) -> None:
        """Finish what was submitted, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        self._thread.shutdown()

    async def submit(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in the next group transaction; returns its result once committed."""
        if self._task is None:
            raise RuntimeError("the group committer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put((work, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Work whose caller has gone (its call cancelled, e.g. by the client's deadline)
            # is dropped if it has not started; once started, it is committed.
            for item in [item for item in batch if item[1].cancelled()]:
                batch.remove(item)
                self._queue.task_done()
            if not batch:
                continue
            loop = asyncio.get_running_loop()
            try:
                outcomes = await loop.run_in_executor(
                    self._thread, self._commit, [work for work, _ in batch]
                )
            except Exception:
                # One bad unit must not fail the others: commit them one by one.
                log.exception("group commit of %d units failed; retrying singly", len(batch))
                outcomes = [
                    await loop.run_in_executor(self._thread, self._commit_one, work)
                    for work, _ in batch
                ]
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if not future.done():
                    if ok:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
                self._queue.task_done()
            if self._on_commit is not None:
                self._on_commit()
            self.batches += 1
            self.units += len(batch)

    def _commit(self, works: list[Work]) -> list[tuple[bool, Any]]:
        with self._store.write() as session:
            return [(True, work(session)) for work in works]

    def _commit_one(self, work: Work) -> tuple[bool, Any]:
        try:
            return self._commit([work])[0]
        except Exception as exc:  # handed to the submitter, who maps it to an RPC error
            return False, exc
