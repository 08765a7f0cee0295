"""Child process for the crash tests: saves forever, printing each step once save() returned."""

import sys

import torch

import ckptstore

uri = sys.argv[1]
start = int(sys.argv[2])
store = ckptstore.Store(uri, chunk_size=1 << 20)
g = torch.Generator().manual_seed(start)
step = start
while True:
    # content depends on the step, so a reader can tell a whole checkpoint from a torn one
    state = {
        "step": step,
        "w": torch.full((600_000,), float(step)),
        "noise": torch.randn(300_000, generator=g),
        "small": {i: torch.tensor([step, i]) for i in range(20)},
    }
    store.save(state, step=step)
    print(step, flush=True)
    step += 1
