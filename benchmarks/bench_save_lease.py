"""Per-save cost of the save lease (write lease, list locks/, delete lease) on a local disk.

Usage: python benchmarks/bench_save_lease.py [N] [DIR]  -> prints a table, writes JSON to
benchmarks/results/save_lease.json.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

import torch

import ckptstore
from ckptstore.store import _space


@contextmanager
def no_lease():
    class Dummy:
        key = "locks/none"

        def held(self) -> bool:
            return True

        def release(self) -> None:
            pass

    real = _space.acquire_save
    _space.acquire_save = lambda backend, **kw: Dummy()  # type: ignore[assignment]
    try:
        yield
    finally:
        _space.acquire_save = real


def run(n: int, root: str, lease: bool) -> list[float]:
    store = ckptstore.Store(root)
    state = {"w": torch.randn(1000)}
    times = []
    for i in range(n):
        state["w"][0] = i
        t = time.perf_counter()
        if lease:
            store.save(state, rng=False)
        else:
            with no_lease():
                store.save(state, rng=False)
        times.append(time.perf_counter() - t)
    return times


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    base = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="bench-lease-")
    rows = {}
    for lease in (False, True, False, True):
        d = os.path.join(base, f"s-{lease}-{time.time_ns()}")
        t = run(n, d, lease)
        rows.setdefault("with lease" if lease else "without lease", []).extend(t)
    print(f"{'':16}{'median ms':>10}{'p90 ms':>10}   ({n * 2} small saves each, {base})")
    out = {}
    for k, v in rows.items():
        v.sort()
        med, p90 = statistics.median(v) * 1e3, v[int(len(v) * 0.9)] * 1e3
        out[k] = {"median_ms": med, "p90_ms": p90, "n": len(v)}
        print(f"{k:16}{med:>10.2f}{p90:>10.2f}")
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/save_lease.json", "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
