"""S3 throughput: ckptstore save/load against a raw parallel s3fs transfer of the same bytes.

Starts an S3 server on 127.0.0.1 (moto by default, or rclone's ``serve s3``) and builds a state
dict of ``--mb`` MiB (a few large tensors and many small ones, like a model plus optimizer
state). The raw contender moves the same bytes, cut the way ckptstore cuts them (each large
tensor in 32 MiB chunks, the small ones concatenated into packs of up to 16 MiB), as that many
objects through ``s3fs.pipe`` / ``s3fs.cat`` with a dict / list of keys, which s3fs runs
concurrently. Every round (``--repeat``) times, interleaved, alternating which goes first:

- raw put: ``fs.pipe({key: bytes, ...})``;
- ckptstore save: compression off, into a store that exists already (created before the round
  with a tiny checkpoint, as in a training run), nothing deduplicated, the same ``Store`` object
  (its config read once, as in a training loop);
- raw get: ``fs.cat([key, ...])`` (bytes, not tensors);
- ckptstore load: a fresh ``Store`` object (as a restarted job: it reads the config, lists and
  reads the manifest), every object's hash verified, tensors returned.

With ``--busy`` one CPU-bound process (a Python busy loop) runs during the whole measurement.
Reports the median and spread (min-max) of the wall time, the CPU seconds of this process and of
the server, the throughput ratio of the medians (ckptstore / raw; target >= 0.95), and writes JSON
(default benchmarks/results/s3.json, or s3-busy.json with ``--busy``). Loopback only: the
numbers measure the client stacks and the emulator on this machine, not a real S3 link.

    python benchmarks/bench_s3.py --mb 256 --repeat 7
    python benchmarks/bench_s3.py --mb 256 --repeat 7 --busy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the same server helpers as the tests

import cloudservers as cs  # noqa: E402  (sets the AWS env traps before s3fs is imported)
import torch  # noqa: E402

import ckptstore  # noqa: E402

CHUNK = 32 << 20  # ckptstore's default chunk size
PACK_THRESHOLD = 1 << 20  # tensors below this go into packs
PACK_SIZE = 16 << 20
TARGET = 0.95


def make_state(total_mb: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    big_bytes = int(total_mb * (1 << 20) * 0.9)
    n_big = max(1, big_bytes // (48 << 20))
    state: dict[str, Any] = {
        f"layer{i}.weight": torch.randn(big_bytes // n_big // 4, generator=g) for i in range(n_big)
    }
    small_total = total_mb * (1 << 20) - sum(t.nbytes for t in state.values())
    n_small = max(1, small_total // (64 << 10))
    for i in range(n_small):
        state[f"small{i}"] = torch.randn((64 << 10) // 4, generator=g)
    return state


def raw_objects(state: dict[str, Any]) -> list[bytes]:
    """The state's bytes as ckptstore cuts them: large tensors in chunks, small ones in packs."""
    out: list[bytes] = []
    pack: list[bytes] = []
    fill = 0
    for t in state.values():
        b = t.numpy().tobytes()
        if len(b) >= PACK_THRESHOLD:
            out.extend(b[a : a + CHUNK] for a in range(0, len(b), CHUNK))
            continue
        if fill + len(b) > PACK_SIZE:
            out.append(b"".join(pack))
            pack, fill = [], 0
        pack.append(b)
        fill += len(b)
    if pack:
        out.append(b"".join(pack))
    return out


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process so far, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(server_pid: int, fn: Callable[[], Any]) -> dict[str, float]:
    c0, s0, t0 = self_cpu(), proc_cpu(server_pid), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    return {"wall": wall, "client_cpu": self_cpu() - c0, "server_cpu": proc_cpu(server_pid) - s0}


def summary(runs: list[dict[str, float]], mib: float) -> dict[str, Any]:
    walls = [r["wall"] for r in runs]
    med = statistics.median(walls)
    return {
        "wall_s": [round(w, 3) for w in walls],
        "median_s": round(med, 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
        "spread_pct": round(100 * (max(walls) - min(walls)) / med, 1),
        "mib_per_s": round(mib / med, 1),
        "client_cpu_s": round(statistics.median(r["client_cpu"] for r in runs), 3),
        "server_cpu_s": round(statistics.median(r["server_cpu"] for r in runs), 3),
    }


def start_busy() -> subprocess.Popen[bytes]:
    """One CPU-bound competing process (a pure-Python busy loop)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=256, help="size of the state in MiB")
    p.add_argument("--repeat", type=int, default=7, help="interleaved rounds (medians over them)")
    p.add_argument("--server", choices=["moto", "rclone"], default="moto")
    p.add_argument("--workers", type=int, default=None, help="ckptstore workers (default: its own)")
    p.add_argument("--busy", action="store_true", help="run one CPU-bound competing process throughout")
    p.add_argument("--out", default=None, help="JSON path (default results/s3.json or s3-busy.json)")
    args = p.parse_args(argv)
    out_path = args.out or os.path.join(HERE, "results", "s3-busy.json" if args.busy else "s3.json")

    import s3fs

    load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    server = cs.start_moto() if args.server == "moto" else cs.start_rclone_s3()
    busy = None
    try:
        target = cs.new_s3_bucket(server.url)
        bucket = target.uri.split("/")[2]
        fs = s3fs.S3FileSystem(use_listings_cache=False, **target.options)
        state = make_state(args.mb)
        objects = raw_objects(state)
        nbytes = sum(len(o) for o in objects)
        runs: dict[str, list[dict[str, float]]] = {
            k: [] for k in ("raw put", "ckptstore save", "raw get", "ckptstore load")
        }

        def rm(prefix: str) -> None:
            if fs.exists(f"{bucket}/{prefix}"):
                fs.rm(f"{bucket}/{prefix}", recursive=True)

        # one untimed round first: connections, imports, the server's first-request costs
        warm = ckptstore.Store(f"s3://{bucket}/warm", storage_options=target.options, compression=None)
        warm.save({"x": torch.zeros(4)}, step=0, rng=False)
        fs.pipe({f"{bucket}/warm-raw/{i:05d}": o for i, o in enumerate(objects[:2])})
        fs.cat([f"{bucket}/warm-raw/{i:05d}" for i in range(2)])
        rm("warm")
        rm("warm-raw")
        if args.busy:
            busy = start_busy()
        loaded: dict[str, Any] = {}
        for r in range(args.repeat):
            raw_keys = {f"{bucket}/raw-{r}/{i:05d}": o for i, o in enumerate(objects)}
            prefix = f"ck-{r}-{uuid.uuid4().hex[:8]}"
            store = ckptstore.Store(
                f"s3://{bucket}/{prefix}", storage_options=target.options, compression=None, workers=args.workers
            )
            store.save({"first": torch.zeros(4)}, step=0, rng=False)  # the store exists, as in a run

            def raw_put() -> None:
                fs.pipe(raw_keys)

            def save() -> None:
                store.save(state, step=1, rng=False)

            def raw_get() -> None:
                fs.cat(list(raw_keys))

            def load() -> None:
                fresh = ckptstore.Store(f"s3://{bucket}/{prefix}", storage_options=target.options, workers=args.workers)
                loaded.clear()
                loaded.update(fresh.load())

            pairs = [[("raw put", raw_put), ("ckptstore save", save)], [("raw get", raw_get), ("ckptstore load", load)]]
            for pair in pairs:
                for name, fn in pair if r % 2 == 0 else reversed(pair):
                    runs[name].append(measure(server.proc.pid, fn))
            assert all(torch.equal(loaded[k], v) for k, v in state.items()), "loaded state differs"
            loaded.clear()
            rm(f"raw-{r}")
            rm(prefix)
            print(
                f"round {r + 1}/{args.repeat}: " + ", ".join(f"{k} {v[-1]['wall']:.2f} s" for k, v in runs.items()),
                flush=True,
            )
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        server.stop()

    mib = nbytes / (1 << 20)
    rows = {name: summary(rs, mib) for name, rs in runs.items()}
    ratios = {
        "save": round(rows["raw put"]["median_s"] / rows["ckptstore save"]["median_s"], 3),
        "load": round(rows["raw get"]["median_s"] / rows["ckptstore load"]["median_s"], 3),
    }
    met = {k: v >= TARGET for k, v in ratios.items()}
    mode = "busy (one CPU-bound competing process)" if args.busy else "no competing process of ours"
    print(
        f"\nS3 on {args.server} (127.0.0.1), {mib:.0f} MiB state ({len(state)} tensors, {len(objects)} objects), "
        f"{args.repeat} interleaved rounds, {mode}; load average {load_before[0] if load_before else float('nan'):.1f} before"
    )
    print(f"{'operation':<16}{'median s':>9}{'min-max s':>14}{'MiB/s':>8}{'client cpu':>11}{'server cpu':>11}")
    for name, r in rows.items():
        spread = f"{r['min_s']:.2f}-{r['max_s']:.2f}"
        print(
            f"{name:<16}{r['median_s']:>9.2f}{spread:>14}{r['mib_per_s']:>8.0f}"
            f"{r['client_cpu_s']:>11.2f}{r['server_cpu_s']:>11.2f}"
        )
    print(f"throughput ckptstore / raw parallel s3fs (medians; target >= {TARGET}):")
    for k, v in ratios.items():
        print(f"  {k:<6}{v:>6.2f}  {'met' if met[k] else 'NOT met'}")
    out = {
        "benchmark": "s3",
        "server": args.server,
        "mode": "busy" if args.busy else "quiet",
        "mib": round(mib, 1),
        "tensors": len(state),
        "objects": len(objects),
        "repeat": args.repeat,
        "results": rows,
        "ratios": ratios,
        "target": TARGET,
        "target_met": met,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__,
            "ckptstore": ckptstore.__version__,
            "s3fs": s3fs.__version__,
        },
    }
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
