"""ckptstore demo: train, get interrupted, resume from the newest checkpoint, finish.

Run:  python examples/demo_train.py [--store ./demo-runs/demo] [--steps 300]
It runs the training twice in child processes: the first is killed part-way (as a cluster
time limit or a Colab disconnect would), the second resumes from the store and finishes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys

import torch

import ckptstore


def train(store_uri: str, total_steps: int, save_every: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total_steps)
    store = ckptstore.Store(store_uri)
    start, history = 0, []
    if store.exists() and store.latest() is not None:
        state = store.load(map_location="auto", restore_rng=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start, history = state["step"], state["loss_history"]
        print(f"[train] resumed from checkpoint at step {start} (loss {history[-1]:.4f})", flush=True)
    else:
        print("[train] no checkpoint found: starting from scratch", flush=True)
    w_true = torch.linspace(-1, 1, 32)
    for step in range(start, total_steps):
        x = torch.randn(64, 32)
        y = (x @ w_true).unsqueeze(1) + 0.01 * torch.randn(64, 1)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        if (step + 1) % save_every == 0 or step + 1 == total_steps:
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "step": step + 1, "loss_history": history}
            info = store.save(state, step=step + 1, metrics={"loss": loss.item()},
                              meta={"total_steps": total_steps})
            print(f"[train] step {step + 1}/{total_steps} loss {loss.item():.4f} "
                  f"saved {info.short_id} ({info.new_bytes} new bytes)", flush=True)
    print(f"[train] finished at step {total_steps}, final loss {history[-1]:.4f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="./demo-runs/demo")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        train(args.store, args.steps, args.save_every)
        return 0
    shutil.rmtree(args.store, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", "--store", args.store, "--steps", str(args.steps),
           "--save-every", str(args.save_every)]
    print(f"== run 1: training into {args.store}; it will be killed part-way ==")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    kill_after = args.steps // 2
    for line in proc.stdout:  # type: ignore[union-attr]
        print(line, end="")
        if line.startswith("[train] step ") and int(line.split()[2].split("/")[0]) >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    print(f"== run 1 killed (exit {proc.returncode}) ==\n")
    print("== checkpoints in the store ==")
    subprocess.run([sys.executable, "-m", "ckptstore", "ls", args.store], check=True)
    print("\n== run 2: same command; it resumes on its own ==")
    rc = subprocess.call(cmd)
    print("\n== done ==" if rc == 0 else f"run 2 failed ({rc})")
    return rc


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
