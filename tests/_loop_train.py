"""A tiny deterministic training run used by the loop adapter's crash tests (run as a script).

    python _loop_train.py STORE OUT --steps 40 --every 4 [--async] [--delay 0.01] [--crash-after N]

Prints "resumed N" once and "step N" after each step (N = completed steps), flushing each line.
Writes the final model/optimizer/scheduler state and loss history to OUT with torch.save.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from ckptstore.adapters.loop import Checkpointer


def build() -> tuple[torch.nn.Module, torch.optim.Optimizer, object, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    g = torch.Generator().manual_seed(123)
    x = torch.randn(256, 16, generator=g)
    y = torch.randint(0, 4, (256,), generator=g)
    return model, opt, sched, x, y


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--async", dest="async_save", action="store_true")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--crash-after", type=int, default=None, help="os._exit(3) after this many steps")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, opt, sched, x, y = build()
    history: dict[str, list[float]] = {"losses": []}
    ckpt = Checkpointer(
        a.store,
        every_steps=a.every,
        async_save=a.async_save,
        total_steps=a.steps,
        config={"lr": 1e-2, "batch_size": 16, "steps": a.steps},
    )
    start = ckpt.resume(model=model, optimizer=opt, scheduler=sched, extra=history)
    print(f"resumed {start}", flush=True)
    for step in range(start, a.steps):
        idx = torch.randint(0, x.shape[0], (16,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        history["losses"].append(loss.item())
        ckpt.step(step, metrics={"loss": loss})
        print(f"step {step + 1}", flush=True)
        if a.crash_after is not None and step + 1 >= a.crash_after:
            os._exit(3)
        if a.delay:
            time.sleep(a.delay)
    ckpt.close()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "losses": history["losses"],
        },
        a.out,
    )
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
