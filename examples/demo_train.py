"""ckptstore demo: train, get interrupted, resume.

    python examples/demo_train.py                # the whole story: run 1 is interrupted, run 2 resumes
    python examples/demo_train.py --train        # one plain training run (resumes if it can)
    python examples/demo_train.py --train --interrupt-at 120   # ... that presses Ctrl+C on itself

A tiny character-level model learns to predict the next letter of a few sentences. The
training loop uses ckptstore.adapters.loop.Checkpointer: a checkpoint every 50 steps
(written in the background), the last 3 kept, and an emergency checkpoint when Ctrl+C
(SIGINT), SIGTERM or SIGUSR1 arrives. Running the same command again continues where it
stopped. Runs in a few seconds on a CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys

TEXT = (
    "the quick brown fox jumps over the lazy dog. "
    "a checkpoint saved is a night of training not lost. "
    "pack my box with five dozen liquor jugs. "
) * 20
CONTEXT, STEPS, EVERY = 8, 300, 50


def train(store: str, interrupt_at: int | None) -> int:
    import torch

    from ckptstore.adapters.loop import Checkpointer

    torch.manual_seed(0)
    torch.set_num_threads(1)
    chars = sorted(set(TEXT))
    data = torch.tensor([chars.index(c) for c in TEXT])
    model = torch.nn.Sequential(
        torch.nn.Embedding(len(chars), 16),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * CONTEXT, 128),
        torch.nn.GELU(),
        torch.nn.Linear(128, len(chars)),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=STEPS)
    history: dict[str, list[float]] = {"loss": []}

    ckpt = Checkpointer(
        store,
        every_steps=EVERY,
        keep_last=3,
        async_save=True,
        total_steps=STEPS,
        config={"model": "char-mlp", "context": CONTEXT, "lr": 3e-3, "batch_size": 64},
    )
    start = ckpt.resume(model=model, optimizer=opt, scheduler=sched, extra=history)
    if ckpt.resumed is None:
        print(f"no checkpoint in {store}: training from scratch for {STEPS} steps")
    else:
        r = ckpt.resumed
        why = r.info.meta.get("trigger", "?")
        print(
            f"resumed from step {start} (checkpoint {r.info.short_id}, saved by trigger '{why}'); "
            f"last loss {history['loss'][-1]:.3f}; {STEPS - start} steps to go"
        )
    for step in range(start, STEPS):
        idx = torch.randint(0, len(data) - CONTEXT - 1, (64,))
        x = torch.stack([data[i : i + CONTEXT] for i in idx.tolist()])
        y = data[idx + CONTEXT]
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history["loss"].append(loss.item())
        saved = ckpt.step(step, metrics={"loss": loss.item()})
        if (step + 1) % EVERY == 0 or saved:
            print(f"step {step + 1:4d}  loss {loss.item():.3f}" + ("  (checkpoint)" if saved else ""), flush=True)
        if interrupt_at is not None and step + 1 == interrupt_at:
            print(f"-- pressing Ctrl+C (SIGINT) on ourselves after step {step + 1} --", flush=True)
            os.kill(os.getpid(), signal.SIGINT)
    ckpt.close()
    tail = history["loss"][-20:]
    print(f"finished: {STEPS} steps, final loss {sum(tail) / len(tail):.3f} (mean of the last 20 steps)")
    return 0


def story(store: str, interrupt_at: int) -> int:
    me = [sys.executable, os.path.abspath(__file__), "--train", "--store", store]
    shutil.rmtree(store, ignore_errors=True)
    print(f"== run 1: training into {store}; it will be interrupted at step {interrupt_at}", flush=True)
    rc = subprocess.call([*me, "--interrupt-at", str(interrupt_at)])
    print(f"== run 1 exited with status {rc} (130 = stopped by Ctrl+C, after its emergency checkpoint)\n", flush=True)
    print("== run 2: the same command again", flush=True)
    rc2 = subprocess.call(me)
    print(f"\n== checkpoints now in {store} (ckptstore ls):", flush=True)
    subprocess.call([sys.executable, "-m", "ckptstore", "ls", store])
    return 0 if rc == 128 + signal.SIGINT and rc2 == 0 else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=os.path.join(".", "demo-runs", "demo"), help="where checkpoints go")
    ap.add_argument("--train", action="store_true", help="one training run instead of the whole story")
    ap.add_argument("--interrupt-at", type=int, default=None, help="send ourselves SIGINT after this step")
    a = ap.parse_args(argv)
    if a.train:
        return train(a.store, a.interrupt_at)
    return story(a.store, a.interrupt_at or 130)


if __name__ == "__main__":
    sys.exit(main())
