"""S3 throughput: ckptstore save/load next to raw s3fs put/get of the same bytes.

Starts an S3 server on 127.0.0.1 (moto by default, or rclone's ``serve s3``), builds a state
dict of ``--mb`` MiB (a few large tensors and many small ones, like a model plus optimizer
state), and times, best of ``--repeat``:

- raw put 1 object: all tensor bytes as one object through ``s3fs.pipe_file`` (s3fs uses a
  multipart upload above 100 MiB);
- raw put chunks: the same bytes as 32 MiB objects through ``s3fs.pipe`` (concurrent);
- raw get 1 object / raw get chunks: the same, read back with ``cat_file`` / ``cat``;
- ckptstore save (compression off, a fresh prefix each time: nothing deduplicated) and
  ckptstore load (every object's hash verified).

Prints a table and writes JSON (default benchmarks/results/s3.json). Loopback only; the
numbers measure the client stack and the emulator, not a real S3 link.

    python benchmarks/bench_s3.py --mb 256 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import uuid
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the same server helpers as the tests

import cloudservers as cs  # noqa: E402  (sets the AWS env traps before s3fs is imported)
import torch  # noqa: E402

import ckptstore  # noqa: E402

CHUNK = 32 << 20


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


def raw_bytes(state: dict[str, Any]) -> bytes:
    return b"".join(t.numpy().tobytes() for t in state.values())


def best_of(n: int, fn: Callable[[int], Any], cleanup: Callable[[int], Any] | None = None) -> list[float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
        if cleanup is not None:
            cleanup(i)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=256, help="size of the state in MiB")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--server", choices=["moto", "rclone"], default="moto")
    p.add_argument("--workers", type=int, default=None, help="ckptstore workers (default: its own)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "s3.json"))
    args = p.parse_args(argv)

    import s3fs

    server = cs.start_moto() if args.server == "moto" else cs.start_rclone_s3()
    try:
        target = cs.new_s3_bucket(server.url)
        bucket = target.uri.split("/")[2]
        fs = s3fs.S3FileSystem(use_listings_cache=False, **target.options)
        state = make_state(args.mb)
        data = raw_bytes(state)
        nbytes = len(data)
        chunks = {f"{bucket}/raw-chunks/{i:05d}": data[o : o + CHUNK] for i, o in enumerate(range(0, nbytes, CHUNK))}
        results: dict[str, list[float]] = {}

        def rm(prefix: str) -> None:
            if fs.exists(f"{bucket}/{prefix}"):
                fs.rm(f"{bucket}/{prefix}", recursive=True)

        results["raw put 1 object"] = best_of(args.repeat, lambda i: fs.pipe_file(f"{bucket}/raw-one/x", data))
        results["raw get 1 object"] = best_of(args.repeat, lambda i: fs.cat_file(f"{bucket}/raw-one/x"))
        rm("raw-one")
        results["raw put 32 MiB chunks"] = best_of(args.repeat, lambda i: fs.pipe(chunks))
        results["raw get 32 MiB chunks"] = best_of(args.repeat, lambda i: fs.cat(list(chunks)))
        rm("raw-chunks")

        store_opts = dict(target.options)
        prefixes = [f"ck-{uuid.uuid4().hex[:8]}" for _ in range(args.repeat)]

        def save(i: int) -> None:
            ckptstore.Store(
                f"s3://{bucket}/{prefixes[i]}", storage_options=store_opts, compression=None, workers=args.workers
            ).save(state, step=0, rng=False)

        results["ckptstore save"] = best_of(args.repeat, save)
        loaded: dict[str, Any] = {}

        def load(i: int) -> None:
            loaded.update(
                ckptstore.Store(f"s3://{bucket}/{prefixes[i]}", storage_options=store_opts, workers=args.workers).load()
            )

        results["ckptstore load"] = best_of(args.repeat, load)
        assert all(torch.equal(loaded[k], v) for k, v in state.items()), "loaded state differs"
        for pre in prefixes:
            rm(pre)
    finally:
        server.stop()

    mib = nbytes / (1 << 20)
    rows = {
        name: {"seconds": [round(t, 3) for t in ts], "best_s": round(min(ts), 3), "mib_per_s": round(mib / min(ts), 1)}
        for name, ts in results.items()
    }
    ratios = {
        "save / raw put 1 object": round(
            rows["ckptstore save"]["mib_per_s"] / rows["raw put 1 object"]["mib_per_s"], 2
        ),
        "save / raw put chunks": round(
            rows["ckptstore save"]["mib_per_s"] / rows["raw put 32 MiB chunks"]["mib_per_s"], 2
        ),
        "load / raw get 1 object": round(
            rows["ckptstore load"]["mib_per_s"] / rows["raw get 1 object"]["mib_per_s"], 2
        ),
        "load / raw get chunks": round(
            rows["ckptstore load"]["mib_per_s"] / rows["raw get 32 MiB chunks"]["mib_per_s"], 2
        ),
    }
    print(f"S3 on {args.server} (127.0.0.1), {mib:.0f} MiB state ({len(state)} tensors), best of {args.repeat}")
    print(f"{'operation':<24}{'best s':>9}{'MiB/s':>9}   all runs (s)")
    for name, r in rows.items():
        print(f"{name:<24}{r['best_s']:>9.2f}{r['mib_per_s']:>9.1f}   {r['seconds']}")
    print("ratios (throughput, ckptstore / raw s3fs):")
    for name, v in ratios.items():
        print(f"  {name:<26}{v:>6.2f}")
    out = {
        "benchmark": "s3",
        "server": args.server,
        "mib": round(mib, 1),
        "tensors": len(state),
        "repeat": args.repeat,
        "results": rows,
        "ratios": ratios,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "torch": torch.__version__,
            "ckptstore": ckptstore.__version__,
            "s3fs": s3fs.__version__,
        },
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
