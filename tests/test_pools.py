"""pipeline/_pools: worker threads borrowed per operation and kept for the next one."""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest
import torch

import ckptstore
from ckptstore.pipeline import _pools


def _thread_ids(name: str) -> set[int]:
    with _pools.borrow(2, name) as pool:
        barrier = threading.Barrier(2)

        def who(_: int) -> int:
            barrier.wait(timeout=10)  # both threads of the pool take part
            return threading.get_ident()

        return set(pool.map(who, range(2)))


def test_a_returned_pool_is_lent_again_with_the_same_threads():
    first = _thread_ids("test-reuse")
    assert len(first) == 2
    assert _thread_ids("test-reuse") == first


def test_borrowers_at_once_get_pools_of_their_own():
    inside = threading.Event()
    release = threading.Event()
    seen: dict[str, int] = {}

    def hold() -> None:
        with _pools.borrow(1, "test-excl") as pool:
            seen["a"] = pool.submit(threading.get_ident).result()
            inside.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(10)
    with _pools.borrow(1, "test-excl") as pool:
        seen["b"] = pool.submit(threading.get_ident).result()  # would hang if it shared the held pool
    release.set()
    t.join(10)
    assert seen["a"] != seen["b"]


def test_leaving_waits_for_every_task_and_an_error_cancels_the_rest():
    done: list[int] = []
    with _pools.borrow(2, "test-wait") as pool:
        for i in range(4):
            pool.submit(lambda i=i: (time.sleep(0.05), done.append(i)))
    assert sorted(done) == [0, 1, 2, 3]  # none still running after the block

    started: list[int] = []

    def task(i: int) -> None:
        started.append(i)
        if i == 0:
            raise ValueError("boom")
        time.sleep(0.2)

    with pytest.raises(ValueError, match="boom"):
        with _pools.borrow(1, "test-wait") as pool:
            pool.map(task, range(5))
    assert started == [0]  # the queued tasks were cancelled, not run


def _child(q: mp.Queue) -> None:
    with _pools.borrow(2, "test-fork") as pool:
        q.put(sum(pool.map(lambda x: x * 2, range(10))))


def test_a_forked_child_gets_fresh_threads():
    _thread_ids("test-fork")  # the parent keeps an idle pool of that name
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    try:
        assert q.get(timeout=30) == 90  # a lent parent pool would have no threads here: a hang
    finally:
        p.join(30)
    assert p.exitcode == 0


def test_saves_and_loads_reuse_their_threads(tmp_path):
    state = {f"w{i}": torch.randn(600_000) for i in range(4)}  # large enough for the pools
    first: set[threading.Thread] = set()
    with ckptstore.Store(str(tmp_path / "s")) as store:
        for step in range(3):
            for t in state.values():
                t.add_(1)
            store.save(state, step=step)
            store.load(step=step, mmap=False)
            live = {t for t in threading.enumerate() if t.name.startswith("ckptstore-")}
            if step == 0:
                first = live  # the Thread objects themselves: pools shut down after use would end them
            else:
                assert first <= live, sorted(t.name for t in first - live)
    assert any(t.name.startswith("ckptstore-write") for t in first)
    assert any(t.name.startswith("ckptstore-read") for t in first)


def test_idle_pools_are_capped_per_name_and_drop_their_thread_caches():
    for size in range(1, 7):  # a pool per size, as loads with different object counts borrow
        with _pools.borrow(size, "test-cap") as pool:
            pool.map(lambda _: _pools.thread_cache().setdefault("buf", bytearray(1 << 20)), range(size))
    assert len(_pools._idle["test-cap"]) <= _pools.KEEP
    idle_threads = {t.ident for _, p in _pools._idle["test-cap"] for t in p._threads}
    assert idle_threads and not idle_threads & set(_pools._caches)  # idle threads hold no buffers


def test_a_pool_lent_across_a_fork_is_not_kept_by_the_child():
    import os

    with _pools.borrow(2, "test-fork-inside") as pool:
        pool.map(lambda x: x, range(4))
        pid = os.fork()
    if pid == 0:  # the child left the block too: it must not keep a pool that has no threads there
        os._exit(0 if not _pools._idle.get("test-fork-inside") else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _pools._idle.get("test-fork-inside")  # the parent kept it
