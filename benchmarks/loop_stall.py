"""How long a checkpoint save stalls the training loop (Checkpointer, sync vs async vs overlap).

    python benchmarks/loop_stall.py [--mb 64] [--device auto] [--saves 4] [--json out.json]

A stack of Linear layers with ``--mb`` MiB of fp32 weights trains with Adam (so the state is
about 3x that: weights + two moments). For each mode the script times every training step
(forward, backward, optimizer step, ``ckpt.step``; on CUDA with a synchronize at the end of
the step, so GPU-side waits count) and reports, for the steps that saved, the extra time over
the median step that did not: the *stall*. The reference is a plain copy of the whole state
into preallocated host buffers (pinned on CUDA): the target is a steady-state async stall of
at most 1.0x that copy, and a first-save stall under 1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from ckptstore.adapters.loop import Checkpointer


def build(mb: int, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
    width = 2048
    layers = max(1, (mb << 20) // (width * width * 4))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    return model, opt, width


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = model(x).float().pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def state_tensors(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = list(model.state_dict().values())
    for s in opt.state.values():
        out += [v for v in s.values() if isinstance(v, torch.Tensor) and v.numel() > 1]
    return out


def copy_reference(model: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device) -> float:
    ts = state_tensors(model, opt)
    pin = device.type == "cuda"
    bufs = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for t in ts]
    best = float("inf")
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for b, t in zip(bufs, ts):
            b.copy_(t, non_blocking=pin)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def run_mode(mode: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, opt, width = build(args.mb, device)
    x = torch.randn(args.batch, width, device=device)
    every = args.every
    steps = every * args.saves + 2
    with tempfile.TemporaryDirectory(prefix="ckptstore-bench-", dir=args.dir) as d:
        ck = Checkpointer(
            os.path.join(d, "store"),
            every_steps=every,
            async_save=mode != "sync",
            overlap_copy=mode == "overlap",
            save_on_close=False,
            signals=(),
        )
        times, calls, saved, busy = [], [], [], []
        for i in range(steps):
            sync(device)
            t0 = time.perf_counter()
            train_step(model, opt, x)
            t1 = time.perf_counter()
            was_busy = ck.saving
            s = ck.step(i, model=model, optimizer=opt)
            calls.append(time.perf_counter() - t1)
            sync(device)
            times.append(time.perf_counter() - t0)
            saved.append(s)
            busy.append(was_busy)
        t0 = time.perf_counter()
        ck.close()
        drain = time.perf_counter() - t0
    base = statistics.median([t for t, s in zip(times, saved) if not s][1:] or [0.0])
    stalls = [max(0.0, t - base) for t, s in zip(times, saved) if s]
    state_bytes = sum(t.numel() * t.element_size() for t in state_tensors(model, opt))
    return {
        "mode": mode,
        "state_mib": round(state_bytes / 2**20, 1),
        "step_s": round(base, 4),
        "first_stall_s": round(stalls[0], 4) if stalls else None,
        "steady_stall_s": round(statistics.median(stalls[1:]), 4) if len(stalls) > 1 else None,
        "stalls_s": [round(s, 4) for s in stalls],
        "close_wait_s": round(drain, 3),
        "save_call_s": [round(c, 4) for c, s in zip(calls, saved) if s],
        "saves_that_waited_for_the_previous": sum(1 for b, s in zip(busy, saved) if s and b),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=64, help="MiB of fp32 weights (the state is ~3x with Adam)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--every", type=int, default=5, help="save every N steps")
    ap.add_argument("--saves", type=int, default=4)
    ap.add_argument("--modes", default="sync,async,overlap")
    ap.add_argument("--dir", default=None, help="where the temporary store goes (default: system temp)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    model, opt, width = build(args.mb, device)
    train_step(model, opt, torch.randn(args.batch, width, device=device))
    ref = copy_reference(model, opt, device)
    del model, opt
    rows = [run_mode(m, args, device) for m in args.modes.split(",")]
    print(
        f"device {device}, state {rows[0]['state_mib']} MiB, reference copy into preallocated "
        f"{'pinned ' if device.type == 'cuda' else ''}host buffers: {ref:.3f} s"
    )
    print(
        "stall = a saving step's time minus the median non-saving step; call = time inside ckpt.step(); "
        "waited = saves that first waited for the previous one to finish writing"
    )
    head = (
        f"{'mode':8} {'step s':>7} {'1st stall':>10} {'steady stall':>13} {'x copy':>7} {'1st call':>9} "
        f"{'steady call':>12} {'close s':>8} {'waited':>7}"
    )
    print(head)
    for r in rows:
        st = r["steady_stall_s"]
        ratio = f"{st / ref:.2f}" if st is not None and ref > 0 else "-"
        c = r["save_call_s"]
        print(
            f"{r['mode']:8} {r['step_s']:7.3f} {r['first_stall_s'] or 0:10.3f} {st or 0:13.3f} {ratio:>7} "
            f"{c[0] if c else 0:9.3f} {statistics.median(c[1:]) if len(c) > 1 else 0:12.3f} "
            f"{r['close_wait_s']:8.3f} {r['saves_that_waited_for_the_previous']:7d}"
        )
    out = {
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "reference_copy_s": round(ref, 4),
        "args": vars(args),
        "results": rows,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
