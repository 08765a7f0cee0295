"""Async saves: the state saved is the state at the requested step; errors surface; one in flight;
bounded staging reused across saves; overlap of the copy with the next step."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import ckptstore
from ckptstore.adapters._staging import StagingBuffers
from ckptstore.adapters.loop import Checkpointer


class GatedStore(ckptstore.Store):
    """A real store whose saves wait for a gate and record how many run at once."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.started = threading.Event()
        self.running = 0
        self.max_running = 0
        self.fail: BaseException | None = None
        self._count_lock = threading.Lock()

    def save(self, state: Any, **kw: Any) -> ckptstore.CheckpointInfo:  # type: ignore[override]
        with self._count_lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.started.set()
            assert self.gate.wait(60), "gate never opened"
            if self.fail is not None:
                raise self.fail
            return super().save(state, **kw)
        finally:
            with self._count_lock:
                self.running -= 1


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 8))
    return m, torch.optim.SGD(m.parameters(), lr=0.5, momentum=0.9)


def _train(m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = m(torch.randn(16, 32)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _clone(sd: Any) -> Any:
    if isinstance(sd, torch.Tensor):
        return sd.detach().clone()
    if isinstance(sd, dict):
        return {k: _clone(v) for k, v in sd.items()}
    if isinstance(sd, list):
        return [_clone(v) for v in sd]
    return sd


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


@pytest.mark.parametrize("overlap", [False, True])
def test_saved_state_is_the_state_at_the_requested_step(tmp_path: Path, overlap: bool) -> None:
    store = GatedStore(tmp_path)
    m, opt = _model()
    ck = Checkpointer(store, every_steps=3, async_save=True, overlap_copy=overlap, save_on_close=False, signals=())
    want = None
    for i in range(8):
        _train(m, opt)
        saved = ck.step(i, model=m, optimizer=opt, extra={"i": [i]})
        if i == 2:
            assert saved and ck.saving
            want = _clone({"model": m.state_dict(), "optimizer": opt.state_dict()})
            rng_at_3 = torch.get_rng_state()
            assert store.started.wait(30)
        if i == 4:
            # training went on while the save of step 3 waits at the gate
            assert ck.saving and store.running == 1
            assert not torch.equal(m[0].weight, want["model"]["0.weight"])  # type: ignore[index]
            store.gate.set()
    ck.close()
    state = store.load(3)
    assert _same(state["model"], want["model"]) and _same(state["optimizer"]["state"], want["optimizer"]["state"])
    assert state["extra"] == {"i": [2]}
    assert torch.equal(
        torch.frombuffer(bytearray(__import__("base64").b64decode(store.info(3).rng.torch)), dtype=torch.uint8),
        rng_at_3,
    )
    assert [i.step for i in store.list()] == [3, 6]
    assert store.max_running == 1


def test_at_most_one_save_in_flight_and_close_waits(tmp_path: Path) -> None:
    store = GatedStore(tmp_path)
    m, opt = _model()
    ck = Checkpointer(store, every_steps=1, async_save=True, signals=())
    _train(m, opt)
    ck.step(0, model=m, optimizer=opt)
    assert store.started.wait(30)
    second = threading.Thread(target=lambda: (_train(m, opt), ck.step(1)))
    second.start()
    second.join(0.3)
    assert second.is_alive(), "a second save started while one was in flight"
    store.gate.set()
    second.join(30)
    ck.close()
    assert not ck.saving and [i.step for i in store.list()] == [1, 2] and store.max_running == 1


def test_background_error_surfaces_on_next_call(tmp_path: Path) -> None:
    store = GatedStore(tmp_path)
    store.fail = ckptstore.StorageError("disk on fire")
    store.gate.set()
    m, opt = _model()
    ck = Checkpointer(store, every_steps=2, async_save=True, signals=())
    ck.step(0, model=m, optimizer=opt)
    ck.step(1)  # starts the save that fails
    ck._saver.job._thread.join()  # type: ignore[union-attr]
    with pytest.raises(ckptstore.StorageError, match="disk on fire"):
        ck.step(2)
    store.fail = None
    ck.step(3)  # step 4: saved
    ck.save(step=2, wait=True)  # the failed step can be saved again
    ck.close()
    assert sorted(i.step for i in store.list()) == [2, 4]


def test_close_raises_background_error(tmp_path: Path) -> None:
    store = GatedStore(tmp_path)
    store.fail = ckptstore.StorageError("gone")
    store.gate.set()
    m, _ = _model()
    ck = Checkpointer(store, every_steps=1, async_save=True, signals=())
    ck.step(0, model=m)
    with pytest.raises(ckptstore.StorageError):
        ck.close()


def test_staging_is_reused_and_bounded(tmp_path: Path) -> None:
    m, opt = _model()
    ck = Checkpointer(tmp_path, every_steps=1, async_save=True, signals=())
    for i in range(4):
        _train(m, opt)
        ck.step(i, model=m, optimizer=opt)
    staging = ck._saver.staging
    assert staging is not None
    ck.wait()
    state_bytes = sum(t.numel() * t.element_size() for t in m.state_dict().values()) + sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    assert staging.allocations == 1 and state_bytes <= staging.capacity <= state_bytes + (2 << 20)
    ck.close()
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path)] == [1, 2, 3, 4]


def test_deferred_copy_runs_aside_and_barrier_orders_later_writes() -> None:
    staging = StagingBuffers()
    big = torch.randn(2_000_000)
    before = big.clone()
    snap = staging.snapshot({"w": big, "small": torch.ones(3)}, defer=lambda t: t.numel() > 1000)
    assert snap._thread is not None  # the deferred copy runs on a helper thread
    snap.barrier()  # what the optimizer pre-hook calls before the weights change
    big.add_(1)
    snap.wait()
    assert torch.equal(snap.tree["w"], before) and torch.equal(snap.tree["small"], torch.ones(3))
    snap.release()


def test_overlap_hook_is_installed_and_removed(tmp_path: Path) -> None:
    m, opt = _model()
    ck = Checkpointer(tmp_path, every_steps=1, async_save=True, overlap_copy=True, signals=())
    ck.step(0, model=m, optimizer=opt)
    assert len(opt._optimizer_step_pre_hooks) == 1
    ck.close()
    assert len(opt._optimizer_step_pre_hooks) == 0
