"""Worker threads kept from one save or load to the next.

``Thread.start`` blocks until the new thread has run, so each thread a save starts costs a trip
through the scheduler: on a busy machine, or with several ranks sharing the cores, about 3 ms a
thread, and a distributed save started a dozen (10% of a 2-rank save in a profile). Operations
therefore borrow a pool here and give it back when every task they submitted has finished.

Each borrower has its pool to itself while it holds it: a task never queues behind another
operation's tasks (an async save and a load at once), and a pool goes back only when idle.
A few idle pools are kept per (name, size); their threads sleep on an empty queue, and Python's
exit hook for ``concurrent.futures`` ends them. A forked child starts with none: the parent's
pool threads do not exist there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: idle pools kept per (name, size)
KEEP = 2

_lock = threading.Lock()
_idle: dict[tuple[str, int], list[ThreadPoolExecutor]] = {}


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class Borrowed:
    """A pool lent to one operation: ``submit`` and ``map`` as on an executor."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._futures: list[Future[Any]] = []

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        fut = self._pool.submit(fn, *args)
        self._futures.append(fut)
        return fut

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """``fn`` of every item on the pool; the results in order. The first error is raised
        after the other tasks were cancelled or finished."""
        futs = [self.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futs]
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        """Cancel every task that has not started."""
        for f in self._futures:
            f.cancel()

    def drain(self) -> None:
        """Wait until every task submitted has finished or was cancelled."""
        wait(self._futures)
        self._futures.clear()


@contextmanager
def borrow(workers: int, name: str) -> Iterator[Borrowed]:
    """A pool of ``workers`` threads named ``name`` for the block. Leaving the block waits for
    every task submitted (cancelling those not started when the block raises) and keeps the
    pool for the next borrower."""
    key = (name, max(1, workers))
    with _lock:
        free = _idle.get(key)
        pool = free.pop() if free else None
    if pool is None:
        pool = ThreadPoolExecutor(max_workers=key[1], thread_name_prefix=name)
    lent = Borrowed(pool)
    try:
        yield lent
    except BaseException:
        lent.cancel()
        raise
    finally:
        lent.drain()
        with _lock:
            free = _idle.setdefault(key, [])
            keep = len(free) < KEEP
            if keep:
                free.append(pool)
        if not keep:
            pool.shutdown(wait=False)
