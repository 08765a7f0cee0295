"""Real multi-process jobs for tests/test_dcp.py: gloo on 127.0.0.1, one process per rank.

``run_job(world, ops, tmp)`` starts ``world`` spawned processes; each joins a gloo process group
and runs ``ops`` (a list of [name, kwargs]) in order; rank results land in ``tmp/rank<r>.json``.
An op that is expected to fail records the exception type instead of failing the rank.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import traceback
from datetime import timedelta
from typing import Any

import torch

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- the model and its reference state (the same numbers on any world size) ------------------------
def make_model(sizes: tuple[int, ...] = (16, 30, 10, 3)) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers.append(torch.nn.Linear(a, b))
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1))
    return model


def opt_step(model: torch.nn.Module, opt: torch.optim.Optimizer, scale: float = 0.1) -> None:
    for p in model.parameters():
        p.grad = torch.full_like(p, scale)
    opt.step()
    opt.zero_grad(set_to_none=True)


def reference(sizes: tuple[int, ...] = (16, 30, 10, 3), steps: int = 1) -> dict[str, Any]:
    """Full model and optimizer state (optimizer keyed by parameter name), in one process."""
    model = make_model(sizes)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt_step(model, opt)
    names = {id(p): n for n, p in model.named_parameters()}
    optim = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    return {"model": {k: v.clone() for k, v in model.state_dict().items()}, "optim": optim}


EXTRA = {"step": 7, "lr": 1e-3, "betas": (0.9, 0.95), "name": "run-1", "history": [1.5, 1.25], "inf": float("inf")}


# -- ops ------------------------------------------------------------------------------------------
def _mesh(world: int) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


def _fsdp(world: int, sizes: tuple[int, ...], zero: bool = False) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from torch.distributed.fsdp import fully_shard

    model = make_model(sizes)
    if zero:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
    mesh = _mesh(world)
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _state(model: torch.nn.Module, opt: torch.optim.Optimizer, extra: dict[str, Any]) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd, "extra": dict(extra)}


def _full(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    msd, osd = get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {"model": msd, "optim": osd.get("state", {})}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
        )
    if isinstance(a, dict):
        if not isinstance(b, dict):
            return False
        sa, sb = {str(k): v for k, v in a.items()}, {str(k): v for k, v in b.items()}  # DCP keys are strings
        return set(sa) == set(sb) and all(same(v, sb[k]) for k, v in sa.items())
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return a == b


def _writer_kw(ctx: dict[str, Any]) -> dict[str, Any]:
    return {"storage_options": ctx["options"]} if ctx.get("options") else {}


def op_fsdp_save(ctx: dict[str, Any], step: int, steps: int = 1, touch: bool = False) -> dict[str, Any]:
    from ckptstore.adapters.dcp import save_distributed

    model, opt = _fsdp(ctx["world"], ctx["sizes"])
    for _ in range(steps):
        opt_step(model, opt)
    if touch:  # change one layer only: the rest must not be written again
        with torch.no_grad():
            next(iter(model.parameters())).add_(1.0)
    info = save_distributed(_state(model, opt, EXTRA), ctx["uri"], step=step, metrics={"loss": 0.5}, **_writer_kw(ctx))
    return {"id": info.id, "new_bytes": info.new_bytes, "size": info.size}


def op_fsdp_load(ctx: dict[str, Any], step: int, steps: int = 1, poison: bool = True) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import _init_optim_state, set_state_dict

    from ckptstore.adapters.dcp import load_distributed

    model, opt = _fsdp(ctx["world"], ctx["sizes"], zero=True)
    _init_optim_state(opt)
    sd = _state(model, opt, {k: None for k in EXTRA})
    with no_pickle(poison):
        info = load_distributed(
            sd, ctx["uri"], step=step, **({"storage_options": ctx["options"]} if ctx.get("options") else {})
        )
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    full = _full(model, opt)
    ok = True
    if ctx["rank"] == 0:
        ref = reference(ctx["sizes"], steps)
        ok = same(ref["model"], full["model"]) and same(ref["optim"], full["optim"])
    return {"step": info.step, "ok": ok, "extra_ok": same(EXTRA, sd["extra"])}


def op_ddp(ctx: dict[str, Any], step: int) -> dict[str, Any]:
    """Replicated state (DDP): written about once; a changed layer is all the next save writes;
    async_save in thread mode commits too."""
    import torch.distributed.checkpoint as dcp
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ckptstore.adapters.dcp import CkptstoreSavePlanner, CkptstoreWriter, save_distributed

    sizes = (128, 256, 256, 64)
    model = DDP(make_model(sizes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt_step(model, opt)
    first = save_distributed(_state(model, opt, EXTRA), ctx["uri"], step=step)
    with torch.no_grad():
        model.module[2].bias.add_(1.0)
    second = save_distributed(_state(model, opt, EXTRA), ctx["uri"], step=step + 1)
    fut = dcp.async_save(
        _state(model, opt, EXTRA),
        storage_writer=CkptstoreWriter(ctx["uri"], step=step + 2),
        planner=CkptstoreSavePlanner(),
    )
    fut.result(timeout=60)
    ref = reference(sizes)
    nbytes = sum(t.numel() * t.element_size() for t in ref["model"].values())
    nbytes += sum(t.numel() * t.element_size() for s in ref["optim"].values() for t in s.values())
    return {"first_new": first.new_bytes, "second_new": second.new_bytes, "state_bytes": nbytes, "bias_bytes": 64 * 4}


def op_async_process(ctx: dict[str, Any], step: int) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    from ckptstore.adapters.dcp import CkptstoreSavePlanner, CkptstoreWriter

    model, opt = _fsdp(ctx["world"], ctx["sizes"])
    opt_step(model, opt)
    fut = dcp.async_save(
        _state(model, opt, EXTRA),
        storage_writer=CkptstoreWriter(ctx["uri"], step=step),
        planner=CkptstoreSavePlanner(),
        async_checkpointer_type=AsyncCheckpointerType.PROCESS,
    )
    fut.result(timeout=120)
    return {"ok": True}


def op_fail(ctx: dict[str, Any], step: int, rank: int = 1) -> dict[str, Any]:
    """One rank raises in write_data: no manifest, every rank raises, no lease left behind."""
    from ckptstore.adapters.dcp import CkptstoreSavePlanner, save_distributed

    class Failing(CkptstoreSavePlanner):
        def resolve_data(self, write_item: Any) -> Any:
            if ctx["rank"] == rank:
                raise OSError("injected write failure")
            return super().resolve_data(write_item)

    model, opt = _fsdp(ctx["world"], ctx["sizes"])
    opt_step(model, opt)
    raised = None
    try:
        save_distributed(_state(model, opt, EXTRA), ctx["uri"], step=step, planner=Failing(), **_writer_kw(ctx))
    except BaseException as e:  # CheckpointException is a BaseException
        raised = type(e).__name__
    import ckptstore

    steps = [
        i.step
        for i in ckptstore.list_checkpoints(
            ctx["uri"], **({"storage_options": ctx["options"]} if ctx.get("options") else {})
        )
    ]
    return {"raised": raised, "steps": steps}


def op_kill(ctx: dict[str, Any], step: int, rank: int, at: str) -> dict[str, Any]:
    """SIGKILL of ``rank`` while saving: in its first tensor lookup (``resolve``), right after its
    objects are durable (``staged``), or the coordinator just before it commits (``finish``)."""
    from ckptstore.adapters import dcp as ad

    def die() -> None:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    if ctx["rank"] == rank:
        if at == "resolve":
            orig = ad.CkptstoreSavePlanner.resolve_data

            def resolve(self: Any, item: Any) -> Any:
                if item.type.name != "BYTE_IO":
                    die()
                return orig(self, item)

            ad.CkptstoreSavePlanner.resolve_data = resolve  # type: ignore[method-assign]
        elif at == "staged":
            orig_w = ad.CkptstoreWriter._write

            def write(self: Any, plan: Any, planner: Any) -> Any:
                out = orig_w(self, plan, planner)
                die()
                return out

            ad.CkptstoreWriter._write = write  # type: ignore[method-assign]
        elif at == "finish":
            ad.CkptstoreWriter.finish = lambda self, metadata, results: die()  # type: ignore[method-assign]
    model, opt = _fsdp(ctx["world"], ctx["sizes"])
    opt_step(model, opt)
    opt_step(model, opt)  # new values: the interrupted save writes objects of its own
    raised = None
    try:
        ad.save_distributed(_state(model, opt, EXTRA), ctx["uri"], step=step, **_writer_kw(ctx))
    except BaseException as e:
        raised = type(e).__name__
    return {"raised": raised, "broken": True}  # the group lost a member: the worker stops here


def _draw() -> list[float]:
    """Numbers from the global RNGs a training step uses (dropout, shuffling)."""
    import random

    import numpy as np

    return [*torch.rand(2).tolist(), random.random(), float(np.random.rand())]


def op_loop(
    ctx: dict[str, Any],
    steps: int,
    every: int,
    kill_rank: int | None = None,
    kill_at: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The raw-loop Checkpointer under a process group (as under torchrun), DDP model: every rank
    calls step(); ``kill_rank`` sends itself SIGTERM after loop index ``kill_at``. Each rank seeds
    its RNGs with ``seed + rank`` and draws from them after every step (``draws[step]``: the
    first numbers after that step's checkpoint) and once after resuming (``after_resume``)."""
    import random

    import numpy as np
    from torch.nn.parallel import DistributedDataParallel as DDP

    import ckptstore
    from ckptstore.adapters.loop import Checkpointer

    model = DDP(make_model())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    extra = {"seen": 0}
    ckpt = Checkpointer(ctx["uri"], every_steps=every, keep_last=2)
    torch.manual_seed(seed + ctx["rank"])
    random.seed(seed + ctx["rank"])
    np.random.seed(seed + ctx["rank"])
    start = ckpt.resume(model=model, optimizer=opt, extra=extra)
    out: dict[str, Any] = {
        "start": start,
        "seen": extra["seen"],
        "skipped": [d.step for d in (ckpt.resumed.skipped if ckpt.resumed else ())],
        "rng_skipped": list(ckpt.resumed.rng_skipped) if ckpt.resumed else None,
        "after_resume": _draw(),
        "draws": {},
    }
    if start:  # what was restored is exactly checkpoint `start`, on every rank
        saved = ckptstore.load(ctx["uri"], step=start)
        out["model_ok"] = same(saved["model"], model.state_dict())
        out["optim_ok"] = same(saved["optimizer"]["state"], opt.state_dict()["state"])
    try:
        for i in range(start, steps):
            opt_step(model, opt, 0.1 * (i + 1))
            extra["seen"] = i + 1
            if ctx["rank"] == kill_rank and i == kill_at:
                os.kill(os.getpid(), signal.SIGTERM)
            ckpt.step(i, metrics={"loss": float(i)})
            out["draws"][i + 1] = _draw()
        ckpt.close()
    except SystemExit as e:
        out["exit"] = e.code
        out["exit_step"] = ckpt.last_saved.step if ckpt.last_saved else None
    return out


def op_loop_async(
    ctx: dict[str, Any],
    steps: int,
    every: int,
    fsdp: bool = False,
    sizes: tuple[int, ...] = (16, 30, 10, 3),
    overlap: bool = False,
) -> dict[str, Any]:
    """The Checkpointer with ``async_save`` under a process group: after each step() that saved,
    training changes the weights at once (while the save runs in the background). Records the
    full weights each save should hold; rank 0 then checks every checkpoint holds exactly those."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import ckptstore
    from ckptstore.adapters.loop import Checkpointer

    if fsdp:
        model, opt = _fsdp(ctx["world"], tuple(sizes))
    else:
        model = DDP(make_model())
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = Checkpointer(ctx["uri"], every_steps=every, async_save=True, overlap_copy=overlap)
    assert ckpt.resume(model=model, optimizer=opt) == 0
    staged = ckpt._saver.staging is not None  # noqa: SLF001 - async mode kept (it used to fall back)
    expected: dict[int, dict[str, torch.Tensor]] = {}
    busy = 0
    for i in range(steps):
        opt_step(model, opt, 0.1 * (i + 1))
        if ckpt.step(i):
            busy += int(ckpt._saver.busy)  # noqa: SLF001 - how often step() returned mid-save
            full = {
                k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
                for k, v in model.state_dict().items()
            }
            expected[i + 1] = full
            if not overlap:  # with overlap_copy only optimizer steps (which wait) may change them
                with torch.no_grad():  # training goes on at once: the checkpoint must not see this
                    for p in model.parameters():
                        p.add_(1000.0)
    ckpt.close()
    out: dict[str, Any] = {"saved": sorted(expected), "busy": busy, "staged": staged}
    if ctx["rank"] == 0:
        out["exact"] = {s: same(ckptstore.load(ctx["uri"], step=s)["model"], want) for s, want in expected.items()}
    return out


def op_loop_async_fail(ctx: dict[str, Any], steps: int, every: int, fail_rank: int, slow_rank: int) -> dict[str, Any]:
    """async_save under a process group where ``fail_rank``'s first background write fails (so
    DCP fails the save on every rank). ``slow_rank`` pauses after each save, so the ranks reach
    their next step() at different points of the failing save. The loop catches what step()
    raises and goes on (a user who logs a failed save and keeps training)."""
    import time as _time

    from torch.nn.parallel import DistributedDataParallel as DDP

    import ckptstore
    from ckptstore.adapters import dcp as cdcp
    from ckptstore.adapters.loop import Checkpointer

    if ctx["rank"] == fail_rank:
        real = cdcp.CkptstoreWriter.write_data
        calls = [0]

        def failing(self: Any, plan: Any, planner: Any) -> Any:
            calls[0] += 1
            if calls[0] == 1:
                raise OSError("disk full (injected)")
            return real(self, plan, planner)

        cdcp.CkptstoreWriter.write_data = failing  # type: ignore[method-assign]
    model = DDP(make_model())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = Checkpointer(ctx["uri"], every_steps=every, async_save=True, save_on_close=False)
    ckpt.resume(model=model, optimizer=opt)
    raised: dict[int, str] = {}
    for i in range(steps):
        opt_step(model, opt, 0.1 * (i + 1))
        try:
            ckpt.step(i)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:  # noqa: BLE001 - CheckpointException is one; recorded by step
            raised[i] = type(e).__name__
        if ctx["rank"] == slow_rank and (i + 1) % every == 0:
            _time.sleep(1.5)
    ckpt.close()
    return {"raised": raised, "steps": [c.step for c in ckptstore.list_checkpoints(ctx["uri"])]}


OPS = {
    "loop_async_fail": op_loop_async_fail,
    "loop_async": op_loop_async,
    "loop": op_loop,
    "fsdp_save": op_fsdp_save,
    "fsdp_load": op_fsdp_load,
    "ddp": op_ddp,
    "fail": op_fail,
    "kill": op_kill,
    "async_process": op_async_process,
}


# -- pickle and torch.load poisoned -----------------------------------------------------------------
class no_pickle:
    """pickle.load/loads/Unpickler and torch.load raise while active. DCP's own exchange of plans
    between ranks (in memory) unpickles through a reference c10d took at import, unaffected."""

    def __init__(self, on: bool = True) -> None:
        self.on = on
        self.saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> no_pickle:
        if not self.on:
            return self
        import pickle

        def refuse(*a: Any, **k: Any) -> Any:
            raise AssertionError("pickle or torch.load was called during a load")

        class Refusing(pickle.Unpickler):
            def load(self) -> Any:
                refuse()

        for mod, name, new in (
            (pickle, "load", refuse),
            (pickle, "loads", refuse),
            (pickle, "Unpickler", Refusing),
            (torch, "load", refuse),
        ):
            self.saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, new)
        return self

    def __exit__(self, *exc: Any) -> None:
        for mod, name, old in reversed(self.saved):
            setattr(mod, name, old)
        self.saved.clear()


# -- the process side -------------------------------------------------------------------------------
def _worker(rank: int, world: int, port: int, ops: list[Any], tmp: str, ctx_in: dict[str, Any]) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR=HOST, MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo"
    )  # loopback only
    for k, v in ctx_in.get("env", {}).items():
        os.environ[k] = v
    ctx = dict(ctx_in, rank=rank, world=world, sizes=tuple(ctx_in.get("sizes", (16, 30, 10, 3))))
    out: list[Any] = []
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=30))
    try:
        for name, kw in ops:
            kw = dict(kw)
            out.append(OPS[name](dict(ctx, uri=kw.pop("uri", ctx.get("uri"))), **kw))
            if out[-1].get("broken"):
                ctx["broken"] = True
                break
        status = "ok"
    except BaseException:
        status = traceback.format_exc()
    with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
        json.dump({"status": status, "results": out}, f)
    if ctx.get("broken") or status != "ok":
        os._exit(0 if status == "ok" else 1)  # a broken group cannot be torn down cleanly
    # every rank done before any tears down: gloo aborts a rank whose peer destroyed the group
    # under it ("terminate called without an active exception", seen once on a loaded machine)
    dist.barrier()
    dist.destroy_process_group()


def run_job(world: int, ops: list[Any], tmp: str, timeout: float = 120.0, **ctx: Any) -> list[dict[str, Any]]:
    """Run ``ops`` on ``world`` ranks; returns each rank's record (``None`` for a rank that died)
    with its ``exitcode``."""
    import torch.multiprocessing as mp

    os.makedirs(tmp, exist_ok=True)
    for r in range(world):
        p = os.path.join(tmp, f"rank{r}.json")
        if os.path.exists(p):
            os.remove(p)
    mpc = mp.get_context("spawn")
    port = free_port()
    procs = [mpc.Process(target=_worker, args=(r, world, port, ops, tmp, ctx), daemon=False) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    recs: list[dict[str, Any]] = []
    for r, p in enumerate(procs):
        if p.is_alive():
            p.kill()
            p.join(5)
        path = os.path.join(tmp, f"rank{r}.json")
        rec = json.load(open(path)) if os.path.exists(path) else {"status": None, "results": []}
        rec["exitcode"] = p.exitcode
        recs.append(rec)
    return recs
