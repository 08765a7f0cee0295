"""Staging buffers: exact copies, one storage per tensor, aliasing kept, memory reused; CUDA paths."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckptstore
from ckptstore.adapters._staging import StagingBuffers, tensor_bytes

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_snapshot_copies_values_rebuilds_containers_and_keeps_leaves() -> None:
    w = torch.randn(5, 7)
    tied = {"a": w, "b": w.detach()}  # two tensor objects, same memory: tied weights
    arr = np.arange(4)
    tree = collections.OrderedDict(
        x=tied,
        t=w.t(),
        bf=torch.randn(9).to(torch.bfloat16),
        s=torch.tensor(3.5),
        e=torch.empty(0, 3),
        flags=torch.tensor([True, False]),
        lst=[1, "a", (2.0, None)],
        arr=arr,
        step=7,
    )
    staging = StagingBuffers()
    snap = staging.snapshot(tree)
    snap.wait()
    out = snap.tree
    assert type(out) is collections.OrderedDict and out["lst"] == [1, "a", (2.0, None)] and out["step"] == 7
    assert out["lst"] is not tree["lst"] and out["x"] is not tied
    for k in ("t", "bf", "s", "e", "flags"):
        assert out[k].dtype == tree[k].dtype and torch.equal(out[k], tree[k]), k
    assert out["x"]["a"] is out["x"]["b"]  # aliasing kept
    assert np.array_equal(out["arr"], arr) and out["arr"] is not arr
    ptrs = [out[k].untyped_storage().data_ptr() for k in ("t", "bf", "s", "flags")] + [
        out["x"]["a"].untyped_storage().data_ptr()
    ]
    assert len(set(ptrs)) == len(ptrs)  # one storage each: the store sees separate tensors
    w.add_(1)
    arr[0] = 99
    assert not torch.equal(out["x"]["a"], w) and out["arr"][0] == 0  # a copy, not a view
    snap.release()


def test_snapshot_requires_release_and_reuses_memory() -> None:
    staging = StagingBuffers()
    t = torch.randn(1000)
    s1 = staging.snapshot({"t": t})
    with pytest.raises(RuntimeError, match="release"):
        staging.snapshot({"t": t})
    s1.wait()
    ptr = s1.tree["t"].data_ptr()
    s1.release()
    s2 = staging.snapshot({"t": t * 2})
    assert s2.tree["t"].data_ptr() == ptr and staging.allocations == 1
    s2.release()
    s3 = staging.snapshot({"t": torch.randn(3_000_000)})  # grows once, the old arena is dropped
    assert staging.allocations == 2 and staging.capacity >= 12_000_000
    s3.release()
    staging.close()
    assert staging.capacity == 0


def test_reserve_in_background_then_snapshot_uses_it() -> None:
    staging = StagingBuffers()
    tree = {"a": torch.randn(100_000), "b": torch.randn(10, 10)}
    nbytes, on_cuda = tensor_bytes(tree)
    assert nbytes >= 100_100 * 4 and not on_cuda
    staging.reserve(nbytes)
    snap = staging.snapshot(tree)
    assert staging.allocations == 1
    snap.release()


def test_staged_tree_saves_as_separate_tensors(tmp_path: Path) -> None:
    m = torch.nn.Linear(64, 64)
    staging = StagingBuffers()
    snap = staging.snapshot({"model": m.state_dict()})
    snap.wait()
    info = ckptstore.save(snap.tree, tmp_path)
    assert info.size == (64 * 64 + 64) * 4  # not the whole arena
    back = ckptstore.load(tmp_path)["model"]
    assert torch.equal(back["weight"], m.weight) and back["weight"].untyped_storage().nbytes() == 64 * 64 * 4


@pytest.mark.gpu
@cuda
def test_cuda_snapshot_is_pinned_exact_and_ordered() -> None:
    dev = torch.device("cuda")
    w = torch.randn(4096, 1024, device=dev)
    staging = StagingBuffers()
    staging.reserve(w.numel() * 4, cuda=True, background=True)
    snap = staging.snapshot({"w": w, "b": torch.arange(10, device=dev)})
    assert staging.pinned and snap.tree["w"].is_pinned()
    w.mul_(2)  # queued after the copy on the current stream: must not reach the snapshot
    snap.wait()
    assert torch.equal(snap.tree["w"], (w / 2).cpu()) and snap.tree["w"].device.type == "cpu"
    snap.release()
    staging.close()


@pytest.mark.gpu
@cuda
def test_cuda_deferred_copy_barrier_orders_the_optimizer_step(tmp_path: Path) -> None:
    from ckptstore.adapters.loop import Checkpointer

    torch.manual_seed(0)
    m = torch.nn.Linear(512, 512).cuda()
    opt = torch.optim.Adam(m.parameters())
    ck = Checkpointer(tmp_path, every_steps=1, async_save=True, overlap_copy=True, signals=())
    for i in range(3):
        m(torch.randn(8, 512, device="cuda")).sum().backward()
        opt.step()
        if i == 1:
            want = m.weight.detach().cpu().clone()
        ck.step(i, model=m, optimizer=opt)
    ck.close()
    assert torch.equal(ckptstore.load(tmp_path, step=2, map_location="cpu")["model"]["weight"], want)


@pytest.fixture
def one_rank_group() -> Any:
    """A one-process gloo group on 127.0.0.1 (DTensors need one), torn down after the test."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def _staged_dtensor(device: str) -> tuple[Any, Any, torch.Tensor]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    mesh = init_device_mesh(device, (1,))
    w = torch.nn.Parameter(DTensor.from_local(torch.randn(5, 3, device=device), mesh, [Shard(0)]))
    want = w.to_local().detach().cpu().clone()
    staging = StagingBuffers()
    snap = staging.snapshot({"w": w})
    with torch.no_grad():
        w.to_local().add_(1000.0)  # training goes on: the snapshot must not see this
    snap.wait()
    return snap, w, want


def test_a_dtensor_is_staged_as_its_local_shard_in_the_staging_buffer(one_rank_group: Any) -> None:
    snap, w, want = _staged_dtensor("cpu")
    out = snap.tree["w"]
    assert type(out) is type(w) and out.placements == w.placements and out.shape == w.shape
    assert out.device_mesh is w.device_mesh and not out.requires_grad
    assert torch.equal(out.to_local(), want)
    snap.release()


@pytest.mark.gpu
@cuda
def test_a_cuda_dtensor_is_staged_in_host_memory_before_it_is_read(one_rank_group: Any) -> None:
    """The staged shard stays in the (pinned) host buffer: DTensor.from_local would move it back
    to the mesh's GPU, before the copy into that buffer was even made (stale values)."""
    snap, _, want = _staged_dtensor("cuda")
    local = snap.tree["w"].to_local()
    assert local.device.type == "cpu" and local.is_pinned()
    assert torch.equal(local, want)
    snap.release()
