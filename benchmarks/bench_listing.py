"""Listing a big store, CLI start-up, and a small save's fixed cost (issue 13, the listing part).

Usage:
    python benchmarks/bench_listing.py [--repeats 5] [--busy] [--checkpoints 1000]
        -> prints a markdown table, writes benchmarks/results/listing[-busy]-<time>.json

Stores (built once, cached under benchmarks/.cache/): a big one of ``--checkpoints`` checkpoints
of a GPT-like 232-tensor state (tiny tensors whose values change every save, RNG states
captured: manifests of about 110 KB), made by normal ``Store.save`` calls, and a small one of 20.

Measured, every sample in a fresh process, the contenders interleaved in each repeat:

- ``list_checkpoints`` of the big store: the whole process (interpreter start, ``import
  ckptstore``, the call), with this machine's validation cache (``CKPTSTORE_CACHE_DIR``, filled
  by the saves that built the store), and once per repeat with an empty cache (the first listing
  of a store on a machine: every manifest validated in full);
- ``ckptstore ls`` of the big store (the whole command, output to /dev/null);
- ``ckptstore --help``, and ``ls``, ``show``, ``du``, ``gc --dry-run`` of the small store;
- a small save's fixed cost: in one fresh process, ``Store.save`` of a tiny state (three small
  tensors, changed before every save) against ``torch.save`` of the same state into a file then
  fsync of the file and its folder (both durable), alternating, 40 of each; the medians.

``--busy``: one CPU-bound competing process (``while True: pass``) runs during the measurement.
Each command is also run once with a check that it did not import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "benchmarks", ".cache")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PY = sys.executable

#: issue 13's targets, in seconds (the small save: a ratio to torch.save)
LIST_TARGET = 1.0
CLI_TARGET = 0.5
SAVE_TARGET = 2.0

_BUILD = r"""
import sys, torch, ckptstore
uri, n = sys.argv[1], int(sys.argv[2])
shapes = [("ln_1.weight", (8,)), ("ln_1.bias", (8,)), ("attn.c_attn.weight", (8, 24)), ("attn.c_attn.bias", (24,)),
          ("attn.c_proj.weight", (8, 8)), ("attn.c_proj.bias", (8,)), ("ln_2.weight", (8,)), ("ln_2.bias", (8,)),
          ("mlp.c_fc.weight", (8, 32)), ("mlp.c_fc.bias", (32,)), ("mlp.c_proj.weight", (32, 8)),
          ("mlp.c_proj.bias", (8,))]
g = torch.Generator().manual_seed(0)
state = {"wte.weight": torch.randn(64, 8, generator=g), "wpe.weight": torch.randn(16, 8, generator=g)}
for layer in range(19):
    for name, shape in shapes:
        state[f"h.{layer}.{name}"] = torch.randn(*shape, generator=g)
state["ln_f.weight"], state["ln_f.bias"] = torch.ones(8), torch.zeros(8)
assert len(state) == 232
store = ckptstore.Store(uri)
for i in range(n):
    for t in state.values():
        t.add_(0.001)
    store.save({"model": state}, step=10 * i, epoch=i // 100, metrics={"loss": 1.0 / (i + 1)},
               config={"lr": 3e-4, "layers": 19}, meta={"total_steps": 10 * n})
"""

_LIST = r"""
import sys, time
t = time.perf_counter()
import ckptstore
n = len(ckptstore.list_checkpoints(sys.argv[1]))
print(n, time.perf_counter() - t)
"""

_NO_TORCH = r"""
import sys
from ckptstore.cli import main
code = main(sys.argv[1:])
print("TORCH" if "torch" in sys.modules else "NO-TORCH", file=sys.stderr)
"""

_SMALL_SAVE = r"""
import os, statistics, sys, time, torch, ckptstore
d = sys.argv[1]
n = int(sys.argv[2])
state = {"a": torch.randn(16), "b": torch.randn(4, 4), "c": torch.zeros(8), "step": 3}
store = ckptstore.Store(os.path.join(d, "store"))

def torch_save(i):
    path = os.path.join(d, f"t{i % 4}.pt")
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(d, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

def ckpt_save(i):
    store.save(state, step=i)

times = {"torch": [], "ckptstore": []}
for i in range(n + 3):
    for name, fn in (("torch", torch_save), ("ckptstore", ckpt_save)):
        state["a"].add_(1.0)
        t = time.perf_counter()
        fn(i)
        if i >= 3:  # the first ones warm up
            times[name].append(time.perf_counter() - t)
print(statistics.median(times["ckptstore"]), statistics.median(times["torch"]))
"""


def build(uri: str, n: int) -> None:
    """The store at ``uri`` with ``n`` checkpoints (cached: rebuilt only when incomplete)."""
    done = uri + ".done"
    if os.path.exists(done):
        return
    shutil.rmtree(uri, ignore_errors=True)
    t = time.perf_counter()
    print(f"building {uri} ({n} checkpoints)...", file=sys.stderr, flush=True)
    subprocess.run([PY, "-c", _BUILD, uri, str(n)], check=True, env=_env())
    open(done, "w").close()
    print(f"  built in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def _env(cache: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["CKPTSTORE_CACHE_DIR"] = cache or os.path.join(CACHE, "verdicts")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t


def imports_torch(args: list[str]) -> bool:
    r = subprocess.run([PY, "-c", _NO_TORCH, *args], capture_output=True, text=True, env=_env())
    return "NO-TORCH" not in r.stderr.splitlines()[-1:]


def measure(big: str, small: str, repeats: int, n: int) -> dict[str, Any]:
    big_name = f"({n:,})"
    cli = [PY, "-m", "ckptstore"]
    commands: dict[str, list[str]] = {
        "ckptstore --help": ["--help"],
        "ckptstore ls (small store)": ["ls", small],
        "ckptstore show (small store)": ["show", small],
        "ckptstore du (small store)": ["du", small],
        "ckptstore gc --dry-run (small store)": ["gc", "--dry-run", small],
    }
    samples: dict[str, list[float]] = {
        k: [] for k in [f"list_checkpoints {big_name}", f"ckptstore ls {big_name}", *commands]
    }
    samples[f"list_checkpoints {big_name}, empty validation cache"] = []
    samples["python -c pass (interpreter start, reference)"] = []
    samples["small save: ckptstore s"] = []
    samples["small save: torch.save s"] = []
    samples["small save: ckptstore / torch.save"] = []
    # warm the big store's verdicts and the page cache once (not measured)
    subprocess.run([PY, "-c", _LIST, big], check=True, stdout=subprocess.DEVNULL, env=_env())
    for r in range(repeats):
        order: list[tuple[str, list[str], dict[str, str]]] = [
            (f"list_checkpoints {big_name}", [PY, "-c", _LIST, big], _env()),
            (f"ckptstore ls {big_name}", [*cli, "ls", big], _env()),
            *((name, [*cli, *argv], _env()) for name, argv in commands.items()),
            ("python -c pass (interpreter start, reference)", [PY, "-c", "pass"], _env()),
        ]
        order = order[r % len(order) :] + order[: r % len(order)]  # rotated: no contender always first
        for name, cmd, env in order:
            samples[name].append(timed(cmd, env))
        with tempfile.TemporaryDirectory(prefix="bench-verdicts-") as empty:
            samples[f"list_checkpoints {big_name}, empty validation cache"].append(
                timed([PY, "-c", _LIST, big], _env(empty))
            )
        with tempfile.TemporaryDirectory(prefix="bench-small-save-") as d:
            out = subprocess.run(
                [PY, "-c", _SMALL_SAVE, d, "40"], check=True, capture_output=True, text=True, env=_env()
            )
            ck, ts = (float(x) for x in out.stdout.split())
        samples["small save: ckptstore s"].append(ck)
        samples["small save: torch.save s"].append(ts)
        samples["small save: ckptstore / torch.save"].append(ck / ts)
        print(f"  repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    torch_free = {name: not imports_torch(argv) for name, argv in commands.items()}
    torch_free[f"ckptstore ls {big_name}"] = not imports_torch(["ls", big])
    return {"samples": samples, "torch_free": torch_free}


def _target(name: str) -> tuple[str, float] | None:
    if name.startswith("small save: ckptstore /"):
        return "<= 2x", SAVE_TARGET
    if name.startswith(("list_checkpoints", "ckptstore ls (")) and "small" not in name and "empty" not in name:
        return "<= 1 s", LIST_TARGET
    if name.startswith("ckptstore ") and "small store" in name or name == "ckptstore --help":
        return "<= 0.5 s", CLI_TARGET
    return None


def table(result: dict[str, Any]) -> str:
    rows = ["| measurement | median | min - max | target | met | imports torch |", "|---|---:|---:|---|---|---|"]
    for name, xs in result["samples"].items():
        med = statistics.median(xs)
        unit = "x" if "/" in name else "s"
        t = _target(name)
        met = "-" if t is None else ("met" if med <= t[1] else "not met")
        free = result["torch_free"].get(name)
        torch_col = "-" if free is None else ("no" if free else "yes")
        rows.append(
            f"| {name} | {med:.3f} {unit} | {min(xs):.3f} - {max(xs):.3f} | {t[0] if t else '-'} | {met} | {torch_col} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--busy", action="store_true", help="run one CPU-bound competing process meanwhile")
    args = ap.parse_args()
    os.makedirs(CACHE, exist_ok=True)
    big = os.path.join(CACHE, f"listing-{args.checkpoints}x232")
    small = os.path.join(CACHE, "listing-20x232")
    build(big, args.checkpoints)
    build(small, 20)
    # bytecode, as an installed package has it (this environment may set PYTHONDONTWRITEBYTECODE)
    subprocess.run([PY, "-m", "compileall", "-q", os.path.join(ROOT, "ckptstore")], check=True)
    load_before = os.getloadavg()
    spinner = subprocess.Popen([PY, "-c", "while True: pass"]) if args.busy else None
    try:
        result = measure(big, small, args.repeats, args.checkpoints)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    load = os.getloadavg()
    result["machine_load_before"] = load_before
    result.update(
        {
            "busy": args.busy,
            "repeats": args.repeats,
            "checkpoints": args.checkpoints,
            "manifest_bytes": sum(e.stat().st_size for e in os.scandir(os.path.join(big, "manifests")))
            // args.checkpoints,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg_after": load},
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    )
    text = table(result)
    print(f"\n{'busy (one competing CPU-bound process)' if args.busy else 'no competing process'}, "
          f"{args.repeats} repeats, fresh processes; manifests of {result['manifest_bytes'] // 1000} KB; "
          f"load average before {load_before[0]:.1f}, after {load[0]:.1f}\n")  # fmt: skip
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    name = f"listing{'-busy' if args.busy else ''}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with open(os.path.join(RESULTS, name), "w") as f:
        json.dump(result, f, indent=2)
    print(f"\nwrote benchmarks/results/{name}")


if __name__ == "__main__":
    main()
