"""Durable save and load of a real training checkpoint: ckptstore against its peers, on a quiet
and on a busy machine (issue 13).

    python benchmarks/bench_save_load.py --size tiny --repeats 2          # smoke run, ~2 min
    python benchmarks/bench_save_load.py --size medium --repeats 3 --mode both   # issue 13's run

The state is a GPT-style transformer trained for real AdamW steps (benchmarks/_state.py), in an
fp32 variant (weights + Adam moments) and optionally a bf16 variant. Saves (durable for every
method: fsync of data and folder) run in this process and report wall time, CPU seconds (every
thread) and peak RSS. Every load runs in a fresh process (benchmarks/_loadproc.py), cold (the
files evicted from the page cache) then warm (a second fresh process right after), and touches
every byte of every tensor, lazy loads included; "hash only" is BLAKE3 of the checkpoint's files
on all cores, warm: the floor of a verified warm load. ``--mode busy`` runs one CPU-bound
competing process during every measurement; ``both`` measures each method quiet and busy back
to back (order alternating). Methods rotate each repeat; tables show median (min-max). Prints
the tables and issue 13's targets per mode and writes JSON with every sample to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peers  # noqa: E402
import _report  # noqa: E402
from _busy import Busy  # noqa: E402
from _loadproc import FreshLoads  # noqa: E402
from _measure import CacheDropper, PeakRss, cpu_seconds, du, timed, write_results  # noqa: E402
from _state import SIZES, as_bf16, state_bytes, tensors_of, trained_state  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GB = 1e9
MB = 1e6
#: contenders that --slow-repeats limits (the slowest to save and load)
SLOW = ("dcp", "raw disk")


def changed_subset(state: Any, rep: int, fraction: float = 0.1) -> list[torch.Tensor]:
    """Every 10th tensor (by position, shifted each repeat): the ones a re-save sees changed."""
    ts = [t for t in _peers.flat_unique(state).values() if t.numel() > 0 and t.is_floating_point()]
    step = max(1, round(1 / fraction))
    return [t for i, t in enumerate(ts) if i % step == rep % step]


class Runner:
    """One variant's measurements: ``rows[mode][row][kind][field] -> [samples]``."""

    def __init__(self, state: Any, args: argparse.Namespace, loads: FreshLoads) -> None:
        self.state, self.args, self.loads = state, args, loads
        self.drop, self.peak = CacheDropper(args.drop), PeakRss()
        self.work = os.path.join(args.dir, "work")
        self.rows: dict[str, dict[str, dict[str, dict[str, list[Any]]]]] = {}
        self.busy_share: dict[str, list[float]] = {}
        self.reference = _peers.touch(state)  # (byte sum, bytes) every load must reproduce
        self.mismatches: list[str] = []

    def rec(self, mode: str, row: str, kind: str, sample: dict[str, Any]) -> None:
        fields = self.rows.setdefault(mode, {}).setdefault(row, {}).setdefault(kind, {})
        for k, v in sample.items():
            fields.setdefault(k, []).append(v)

    def save(self, mode: str, row: str, fn: Any, path: str) -> Any:
        def run() -> tuple[Any, float]:
            c0 = cpu_seconds()
            out = fn(self.state, path)
            return out, cpu_seconds() - c0

        (out, cpu), dt, rss = timed(self.peak, run)
        self.rec(mode, row, "save", {"seconds": dt, "cpu_seconds": cpu, "peak_rss": rss})
        return out

    def load(self, mode: str, row: str, kind: str, path: str) -> None:
        if kind == "cold":
            self.drop.drop(path)
        r = self.loads.run(row, path)
        # raw disk reads one concatenated buffer: its word sum differs, its byte count must not
        got = (r["checksum"] if row != "raw disk" else self.reference[0], r["touched_bytes"])
        if r["checksum"] is not None and got != self.reference:
            self.mismatches.append(
                f"{mode} {row} {kind}: touched {r['touched_bytes']} bytes summing to {r['checksum']}, "
                f"the state has {self.reference[1]} summing to {self.reference[0]}"
            )
        self.rec(mode, row, kind, r)

    def step(self, rep: int, name: str, mode: str) -> None:
        """One method in one mode: save, its loads cold and warm, (ckptstore) a 10% re-save."""
        fn, load_rows = _peers.SAVES[name]
        path = os.path.join(self.work, f"{name.replace(' ', '_')}-{mode}-{rep}")
        _peers.remove(path)
        with Busy(mode == "busy") as busy:
            self.save(mode, name, fn, path)
            self.rows[mode][name]["save"].setdefault("stored_bytes", []).append(du(path))
            for row in (r for r in load_rows if self.args.extra_loads or r not in _peers.EXTRA_LOADS):
                for kind in ("warm",) if row == "hash only" else ("cold", "warm"):
                    self.load(mode, row, kind, path)
            if name == "ckptstore":
                subset = changed_subset(self.state, rep)
                saved = [t.clone() for t in subset]
                with torch.no_grad():
                    for t in subset:
                        t.add_(1e-3)
                info = self.save(mode, "ckptstore re-save 10%", fn, path)
                self.rows[mode]["ckptstore re-save 10%"]["save"].setdefault("new_bytes", []).append(info.new_bytes)
                with torch.no_grad():
                    for t, s in zip(subset, saved):
                        t.copy_(s)
                del saved
        _peers.remove(path)
        if busy.on:
            self.busy_share.setdefault(mode, []).append(busy.share)

    def run(self, modes: list[str]) -> dict[str, Any]:
        os.makedirs(self.work, exist_ok=True)
        names = [n for n in _peers.SAVES if self.args.compression or n != "ckptstore zstd"]
        names = [n for n in names if n not in self.args.skip]
        k = 0
        for rep in range(self.args.repeats):
            t0 = time.perf_counter()
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                if name in SLOW and 0 <= self.args.slow_repeats <= rep:
                    continue
                for mode in modes if k % 2 == 0 else modes[::-1]:
                    self.step(rep, name, mode)
                k += 1
            print(f"  repeat {rep + 1}/{self.args.repeats} done ({time.perf_counter() - t0:.0f} s)", flush=True)
        shutil.rmtree(self.work, ignore_errors=True)
        for m in self.mismatches:
            print(f"  WARNING: a load read other bytes than the state's: {m}", flush=True)
        return {
            "state_bytes": state_bytes(self.state),
            "num_tensors": len(tensors_of(self.state)),
            "reference_touch": {"checksum": self.reference[0], "bytes": self.reference[1]},
            "checksum_mismatches": self.mismatches,
            "modes": {m: {"rows": self.rows.get(m, {}), "busy_share": self.busy_share.get(m, [])} for m in modes},
        }


def codec_throughput(state32: Any) -> dict[str, Any]:
    """Single-core compress / decompress speed and ratio of the codec ``compression="zstd"``
    writes, per part, in the objects a compressed save writes (``COMPRESSED_CHUNK``), timed in
    the thread's CPU time and decoding into memory already mapped, as bench_codec.py does (a new
    tensor's page faults cost every load path the same, and are in the load rows)."""
    from ckptstore.format._tensors import dtype_name
    from ckptstore.pipeline._codec import get_codec, group_for_dtype, object_codec
    from ckptstore.pipeline._writer import COMPRESSED_CHUNK

    chunk = COMPRESSED_CHUNK
    dec = np.ones(chunk, dtype=np.uint8)
    out: dict[str, Any] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for label, st in (("fp32", state32), ("bf16", as_bf16(state32))):
            for part in ("model", "optimizer"):
                raw = stored = 0
                te = td = 0.0
                for t in tensors_of(st[part]).values():
                    if t.dim() == 0:
                        continue
                    b = t.contiguous().view(-1).view(torch.uint8).numpy()
                    codec = get_codec(object_codec("zstd", group_for_dtype("torch", dtype_name(t.dtype))))
                    for a in range(0, b.nbytes, chunk):
                        piece = b[a : a + chunk]
                        t0 = time.thread_time()
                        enc = codec.encode(piece)
                        te += time.thread_time() - t0
                        t0 = time.thread_time()
                        codec.decode_into(enc, dec[: piece.nbytes])
                        td += time.thread_time() - t0
                        raw += piece.nbytes
                        stored += min(len(memoryview(enc).cast("B")), piece.nbytes)
                out[f"{label} {'weights' if part == 'model' else 'adam'}"] = {
                    "raw_bytes": raw,
                    "ratio": stored / raw,
                    "compress_MBps": raw / te / MB,
                    "decompress_MBps": raw / td / MB,
                }
    finally:
        torch.set_num_threads(threads)
    w, a = out["fp32 weights"], out["fp32 adam"]
    out["fp32 weights+adam"] = {
        "raw_bytes": w["raw_bytes"] + a["raw_bytes"],
        "ratio": (w["ratio"] * w["raw_bytes"] + a["ratio"] * a["raw_bytes"]) / (w["raw_bytes"] + a["raw_bytes"]),
    }
    return out


def _f(x: float, nd: int = 2) -> str:
    return "-" if x != x else f"{x:.{nd}f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--steps", type=int, default=20, help="AdamW steps to train the model (cached)")
    p.add_argument("--variants", default="fp32", help="comma-separated: fp32, bf16 (default fp32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--mode",
        choices=("quiet", "busy", "both"),
        default="both",
        help="busy: one competing CPU-bound process runs during every measurement; both: each method quiet and busy",
    )
    p.add_argument("--busy", dest="mode", action="store_const", const="busy", help="the same as --mode busy")
    p.add_argument(
        "--slow-repeats",
        type=int,
        default=1,
        help=f"run {' and '.join(SLOW)} in the first N repeats only (default 1; 0: never, -1: every repeat)",
    )
    p.add_argument(
        "--extra-loads", action="store_true", help=f"also measure {', '.join(_peers.EXTRA_LOADS)} (no target needs it)"
    )
    p.add_argument("--skip", default="", help="comma-separated save methods to leave out, e.g. dcp,raw disk")
    p.add_argument("--fresh", choices=("fork", "spawn"), default="fork", help="how each load gets its fresh process")
    p.add_argument(
        "--drop",
        choices=("fadvise", "drop_caches"),
        default="fadvise",
        help="cold loads: evict the checkpoint's files (fadvise) or the whole page cache (root only)",
    )
    p.add_argument("--dir", default=os.path.join(HERE, ".work"), help="a folder on the disk to measure")
    p.add_argument("--no-compression", dest="compression", action="store_false")
    p.add_argument("--json", default=None, help="output file (default benchmarks/results/<date>-<size>.json)")
    args = p.parse_args(argv)
    args.skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    unknown = [s for s in args.skip if s not in _peers.SAVES]
    if unknown:
        p.error(f"--skip: unknown method(s) {unknown}; choose from {list(_peers.SAVES)}")
    modes = ["quiet", "busy"] if args.mode == "both" else [args.mode]

    loads = FreshLoads(args.fresh)
    print(
        f"ckptstore benchmark: {platform.node()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"cold: {CacheDropper(args.drop).method}, fresh load processes: {args.fresh}, modes: {modes}, "
        f"dir: {args.dir}",
        flush=True,
    )
    t0 = time.perf_counter()
    state32 = trained_state(args.size, args.steps)
    results: dict[str, Any] = {}
    try:
        for variant in args.variants.split(","):
            state = state32 if variant == "fp32" else as_bf16(state32)
            print(f"{variant}: {state_bytes(state) / GB:.2f} GB, {args.repeats} repeats", flush=True)
            results[variant] = Runner(state, args, loads).run(modes)
    finally:
        loads.close()
    codec: dict[str, Any] = {}
    if args.compression:  # on a worker thread, where saves run codecs (and its CPU time is all of theirs)
        worker = threading.Thread(target=lambda: codec.update(codec_throughput(state32)))
        worker.start()
        worker.join()
    print()
    tg_all: list[dict[str, Any]] = []
    for variant, r in results.items():
        print(f"### {variant}: {r['state_bytes'] / GB:.2f} GB, {r['num_tensors']} tensors\n")
        for mode, m in r["modes"].items():
            print(_report.tables(f"{variant}, {mode}", r["state_bytes"], m["rows"], m["busy_share"]) + "\n")
        for mode, m in r["modes"].items():
            tg = _report.targets(mode, r["state_bytes"], m["rows"])
            print(f"Issue 13 targets, {variant}, {mode}:\n\n{_report.target_table(tg)}\n")
            tg_all += [{"variant": variant, "mode": mode, "target": n, "measured": v, "met": ok} for n, v, ok in tg]
    if codec:
        print(
            "| codec (1 core, 4 MiB objects, quiet) | ratio | compress MB/s | decompress MB/s |\n|---|---:|---:|---:|"
        )
        for k, v in codec.items():
            print(
                f"| {k} | {v['ratio']:.3f} | {_f(v.get('compress_MBps', float('nan')), 0)} | "
                f"{_f(v.get('decompress_MBps', float('nan')), 0)} |"
            )
        tg = _report.codec_targets(codec)
        print(f"\nIssue 13 targets, codec:\n\n{_report.target_table(tg)}")
        tg_all += [{"variant": "codec", "mode": "quiet", "target": n, "measured": v, "met": ok} for n, v, ok in tg]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    doc = {
        "when": datetime.now(timezone.utc).isoformat(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_end": load,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "args": vars(args),
        "cache_drop": CacheDropper(args.drop).method,
        "load_server_threads_at_fork": loads.server_threads,
        "variants": results,
        "codec": codec,
        "targets": tg_all,
        "wall_seconds": time.perf_counter() - t0,
    }
    write_results(doc, args.json, args.size, t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
