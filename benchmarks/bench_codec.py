"""The compressed path's codecs on one core: today's zstd-bgG against blosc-zstd-bgG.

Every float tensor of the trained GPT state (benchmarks/_state.py: fp32 and the same state in
bf16, weights and AdamW moments) is cut into the 4 MiB objects a compressed save writes, and each
codec encodes and decodes all of them, codecs interleaved, ``--repeats`` times. Speeds are raw
MB per second of one thread's CPU time (the pipeline runs one object per thread on every core),
decoding into memory already mapped (page faults on new tensors cost any load path the same). ``key hash`` is BLAKE3 of the stored
bytes (how an object is named, format.md §4) as a share of the encode time.

    python benchmarks/bench_codec.py                 # small state (~0.4 GB fp32), 5 repeats
    python benchmarks/bench_codec.py --size medium   # the issue's 1.3 GB state

Prints a table (median, min-max over repeats) and the issue's codec targets; writes JSON to
benchmarks/results/<date>-codec-<size>.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _measure import write_results  # noqa: E402
from _state import SIZES, as_bf16, tensors_of, trained_state  # noqa: E402

from ckptstore.format import _hashing  # noqa: E402
from ckptstore.pipeline._blosc import library_version  # noqa: E402
from ckptstore.pipeline._codec import get_codec  # noqa: E402

MB = 1e6
OBJECT = 4 << 20  # COMPRESSED_CHUNK: the size of a compressed save's objects
CODECS = {"zstd-bgG (old)": "zstd-bg{g}", "blosc-zstd-bgG (new)": "blosc-zstd-bg{g}"}


def pieces(state: Any, max_bytes: int) -> list[np.ndarray]:
    """The state's float tensors as 4 MiB objects (at most ``max_bytes``, spread over the state)."""
    out = []
    for t in tensors_of(state).values():
        if t.dim() == 0 or not t.is_floating_point():
            continue
        b = t.contiguous().view(-1).view(torch.uint8).numpy()
        out += [b[a : a + OBJECT] for a in range(0, b.nbytes, OBJECT)]
    total = sum(p.nbytes for p in out)
    if total > max_bytes:
        step = total / max_bytes
        out = [p for i, p in enumerate(out) if int(i / step) != int((i - 1) / step) or i == 0]
    return out


def run_once(codec_name: str, objs: list[np.ndarray], dest: np.ndarray) -> dict[str, float]:
    codec = get_codec(codec_name)
    raw = sum(p.nbytes for p in objs)
    t0 = time.thread_time()
    encs = [codec.encode(p) for p in objs]
    te = time.thread_time() - t0
    stored = sum(min(len(memoryview(e).cast("B")), p.nbytes) for e, p in zip(encs, objs))
    t0 = time.thread_time()
    for e in encs:
        _hashing.digest(e, parallel=False)
    th = time.thread_time() - t0
    dest.fill(0)
    t0 = time.thread_time()
    pos = 0
    for e, p in zip(encs, objs):
        codec.decode_into(e, dest[pos : pos + p.nbytes])
        pos += p.nbytes
    td = time.thread_time() - t0
    pos = 0
    for p in objs:
        assert np.array_equal(dest[pos : pos + p.nbytes], p), codec_name
        pos += p.nbytes
    return {"raw": raw, "stored": stored, "enc_s": te, "dec_s": td, "hash_s": th}


def measure(sets: dict[str, list[np.ndarray]], repeats: int) -> dict[str, Any]:
    runs: dict[str, dict[str, list[dict[str, float]]]] = {k: {c: [] for c in CODECS} for k in sets}
    dests = {k: np.zeros(sum(p.nbytes for p in v), dtype=np.uint8) for k, v in sets.items()}
    for r in range(repeats):
        for label, objs in sets.items():
            g = 2 if label.startswith("bf16") else 4
            order = list(CODECS.items()) if r % 2 == 0 else list(CODECS.items())[::-1]
            for cname, pattern in order:
                runs[label][cname].append(run_once(pattern.format(g=g), objs, dests[label]))
        print(f"  repeat {r + 1}/{repeats} done", flush=True)
    out: dict[str, Any] = {}
    for label, per in runs.items():
        for cname, rs in per.items():
            enc = [x["raw"] / x["enc_s"] / MB for x in rs]
            dec = [x["raw"] / x["dec_s"] / MB for x in rs]
            out.setdefault(label, {})[cname] = {
                "raw_bytes": rs[0]["raw"],
                "stored_bytes": rs[0]["stored"],
                "ratio": rs[0]["stored"] / rs[0]["raw"],
                "compress_MBps": {"median": statistics.median(enc), "min": min(enc), "max": max(enc), "all": enc},
                "decompress_MBps": {"median": statistics.median(dec), "min": min(dec), "max": max(dec), "all": dec},
                "key_hash_share_of_encode": statistics.median(x["hash_s"] / x["enc_s"] for x in rs),
            }
    for cname in CODECS:
        for pair, (a, b) in {"fp32 weights+adam": ("fp32 weights", "fp32 adam"),
                             "bf16 weights+adam": ("bf16 weights", "bf16 adam")}.items():  # fmt: skip
            x, y = out[a][cname], out[b][cname]
            out.setdefault(pair, {})[cname] = {
                "raw_bytes": x["raw_bytes"] + y["raw_bytes"],
                "ratio": (x["stored_bytes"] + y["stored_bytes"]) / (x["raw_bytes"] + y["raw_bytes"]),
            }
    return out


def table(res: dict[str, Any]) -> str:
    lines = [
        "| data | codec | ratio | compress MB/s/core (min-max) | decompress MB/s/core (min-max) | key hash / encode |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for label, per in res.items():
        for cname, v in per.items():
            if "compress_MBps" not in v:
                lines.append(f"| {label} | {cname} | {v['ratio']:.3f} | | | |")
                continue
            c, d = v["compress_MBps"], v["decompress_MBps"]
            lines.append(
                f"| {label} | {cname} | {v['ratio']:.3f} | {c['median']:.0f} ({c['min']:.0f}-{c['max']:.0f}) | "
                f"{d['median']:.0f} ({d['min']:.0f}-{d['max']:.0f}) | {100 * v['key_hash_share_of_encode']:.0f}% |"
            )
    return "\n".join(lines)


def written(label: str) -> tuple[str, str]:
    """The codec ``compression="zstd"`` writes for this data (``object_codec``): its row in the
    results and its name."""
    from ckptstore.pipeline._codec import object_codec

    g = 2 if label.startswith("bf16") else 4
    name = object_codec("zstd", g)
    return next(c for c, pattern in CODECS.items() if pattern.format(g=g) == name), name


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The issue's codec targets, judged on what ``compression="zstd"`` writes (named in each
    target): Blosc for fp32, zstd-bg2 for bf16."""
    out = []
    for label, limit in (("fp32 weights+adam", 0.83), ("bf16 weights", 0.68), ("bf16 weights+adam", 0.68)):
        row, name = written(label)
        r = res[label][row]["ratio"]
        out.append((f"{label} ratio <= {limit} ({name})", f"{r:.3f}", r <= limit))
    for label in ("fp32 weights", "fp32 adam", "bf16 weights", "bf16 adam"):
        row, name = written(label)
        c = res[label][row]["compress_MBps"]["median"]
        d = res[label][row]["decompress_MBps"]["median"]
        out.append((f"{label} compress >= 500 MB/s/core ({name})", f"{c:.0f}", c >= 500))
        out.append((f"{label} decompress >= 1500 MB/s/core ({name})", f"{d:.0f}", d >= 1500))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--steps", type=int, default=20, help="AdamW steps to train the model (cached)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-mb", type=int, default=256, help="at most this many MB of objects per data set")
    p.add_argument("--json", default=None, help="output file (default benchmarks/results/<date>-codec-<size>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lib = library_version()
    print(f"codec benchmark: {platform.node()} {os.cpu_count()} cores, {lib}, one thread", flush=True)
    t0 = time.perf_counter()
    st32 = trained_state(args.size, args.steps)
    st16 = as_bf16(st32)
    sets = {
        "fp32 weights": pieces(st32["model"], args.max_mb * 1_000_000),
        "fp32 adam": pieces(st32["optimizer"], args.max_mb * 1_000_000),
        "bf16 weights": pieces(st16["model"], args.max_mb * 1_000_000),
        "bf16 adam": pieces(st16["optimizer"], args.max_mb * 1_000_000),
    }
    for k, v in sets.items():
        print(f"  {k}: {len(v)} objects, {sum(x.nbytes for x in v) / MB:.0f} MB", flush=True)
    box: dict[str, Any] = {}
    # on a worker thread: where the pipeline runs codecs (and numcodecs runs Blosc single-threaded)
    worker = threading.Thread(target=lambda: box.update(res=measure(sets, args.repeats)))
    worker.start()
    worker.join()
    res = box["res"]
    print()
    print(table(res))
    print()
    tg = targets(res)
    print('| target (the codec compression="zstd" writes) | measured | met |\n|---|---:|---|')
    for name, val, ok in tg:
        print(f"| {name} | {val} | {'yes' if ok else 'NO'} |")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    doc = {
        "when": datetime.now(timezone.utc).isoformat(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_end": load,
        "library": lib,
        "python": platform.python_version(),
        "args": vars(args),
        "results": res,
        "targets": [{"target": n, "measured": v, "met": ok} for n, v, ok in tg],
        "wall_seconds": time.perf_counter() - t0,
    }
    write_results(doc, args.json, f"codec-{args.size}", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
