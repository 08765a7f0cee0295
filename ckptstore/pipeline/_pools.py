"""Worker threads kept from one save or load to the next.

``Thread.start`` blocks until the new thread has run, so each thread a save starts costs a trip
through the scheduler: on a busy machine, or with several ranks sharing the cores, about 3 ms a
thread, and a distributed save started a dozen (10% of a 2-rank save in a profile). Operations
therefore borrow a pool here and give it back when every task they submitted has finished.

- Each borrower has its pool to itself while it holds it: a task never queues behind another
  operation's tasks (an async save and a load at once), and a pool goes back only when idle.
- At most ``KEEP`` idle pools are kept per name (whatever their sizes); their threads sleep on
  an empty queue, and Python's exit hook for ``concurrent.futures`` ends them.
- A thread's cache (``thread_cache``: the pipeline's reusable scratch buffers) is dropped when
  its pool is given back, so idle threads hold no memory.
- A forked child starts with no pools, and a pool lent before a fork is never kept by the child:
  the parent's threads do not exist there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

#: idle pools kept per name
KEEP = 2

_lock = threading.Lock()
_idle: dict[str, list[tuple[int, ThreadPoolExecutor]]] = {}  # name -> (size, pool), oldest first
_caches: dict[int, dict[str, Any]] = {}  # thread ident -> that pool thread's cache


def _forget_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _idle.clear()
    _caches.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def thread_cache() -> dict[str, Any]:
    """A dict private to the calling thread that lives until the thread's pool is given back
    (for buffers a pool thread reuses from one task to the next)."""
    ident = threading.get_ident()
    with _lock:
        cache = _caches.get(ident)
        if cache is None:
            cache = _caches[ident] = {}
    return cache


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
    size = max(1, workers)
    pool = None
    with _lock:
        free = _idle.get(name, [])
        for i, (n, _) in enumerate(free):
            if n == size:
                pool = free.pop(i)[1]
                break
    if pool is None:
        pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
    pid = os.getpid()
    lent = Borrowed(pool)
    try:
        yield lent
    except BaseException:
        lent.cancel()
        raise
    finally:
        lent.drain()
        _give_back(name, size, pool, pid)


def _give_back(name: str, size: int, pool: ThreadPoolExecutor, pid: int) -> None:
    if os.getpid() != pid:  # lent before a fork: this process has none of its threads
        return
    evicted = None
    with _lock:
        for t in getattr(pool, "_threads", ()):  # the pool is idle: no task uses these caches
            _caches.pop(t.ident or 0, None)
        free = _idle.setdefault(name, [])
        free.append((size, pool))
        if len(free) > KEEP:
            evicted = free.pop(0)[1]
    if evicted is not None:
        evicted.shutdown(wait=False)
