"""Durable save and load of a real training checkpoint: ckptstore against its peers.

    python benchmarks/bench_save_load.py                  # small model (~0.4 GB fp32+Adam), ~2 min
    python benchmarks/bench_save_load.py --size medium    # ~1.3 GB, the size the issue measured

The state is a GPT-style transformer trained for real AdamW steps (benchmarks/_state.py), in an
fp32 variant (weights + Adam moments) and a bf16 variant. Every method runs on the same state,
in an order that rotates each repeat, and reports medians. Saves are durable for every method
(fsync of data and folder). Loads are measured cold (page cache dropped) and warm (right after a
load). The disk's own limits are measured in the same run: one sequential write + fsync of all
the bytes, and one sequential read of that file. Prints markdown tables, the targets of issue 4
with met / not met, and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peers  # noqa: E402
from _measure import CacheDropper, PeakRss, Samples, du, timed  # noqa: E402
from _state import SIZES, as_bf16, state_bytes, tensors_of, trained_state  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
GB = 1e9
MB = 1e6


def changed_subset(state: Any, rep: int, fraction: float = 0.1) -> list[torch.Tensor]:
    """Every 10th tensor (by position, shifted each repeat): the ones a re-save sees changed."""
    ts = [t for t in _peers.flat_unique(state).values() if t.numel() > 0 and t.is_floating_point()]
    step = max(1, round(1 / fraction))
    return [t for i, t in enumerate(ts) if i % step == rep % step]


def run_variant(state: Any, args: argparse.Namespace, drop: CacheDropper, peak: PeakRss) -> dict[str, Any]:
    nbytes = state_bytes(state)
    work = os.path.join(args.dir, "work")
    os.makedirs(work, exist_ok=True)
    methods = _peers.methods(state)
    if args.compression:
        methods.append(_peers.Method("ckptstore zstd", _peers.ckpt_save("zstd"), _peers.ckpt_load()))
    names = ["raw disk"] + [m.name for m in methods]
    by_name = {m.name: m for m in methods}
    res: dict[str, dict[str, Samples]] = {}

    def rec(name: str, kind: str, dt: float, rss: int) -> None:
        s = res.setdefault(name, {}).setdefault(kind, Samples())
        s.seconds.append(dt)
        s.rss.append(rss)

    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            path = os.path.join(work, f"{name.replace(' ', '_')}-{rep}")
            _peers.remove(path)
            if name == "raw disk":
                _, dt, rss = timed(peak, lambda: _peers.raw_write(state, path))
                rec(name, "save", dt, rss)
                for kind in ("cold", "warm"):
                    if kind == "cold":
                        drop.drop(path)
                    out, dt, rss = timed(peak, lambda: _peers.raw_read(path))
                    del out
                    rec(name, kind, dt, rss)
                _peers.remove(path)
                continue
            m = by_name[name]
            _, dt, rss = timed(peak, lambda: m.save(state, path))
            rec(name, "save", dt, rss)
            res[name]["save"].extra["stored_bytes"] = du(path)
            loads = [(name, m.load)] + [(v, fn) for v, (base, fn, _) in _peers.LOAD_VARIANTS.items() if base == name]
            for label, fn in loads:
                for kind in ("cold", "warm"):
                    if kind == "cold":
                        drop.drop(path)
                    out, dt, rss = timed(peak, lambda: fn(path))
                    del out
                    rec(label, kind, dt, rss)
            if name == "ckptstore":  # re-save with 10% of the tensors changed
                subset = changed_subset(state, rep)
                saved = [t.clone() for t in subset]
                with torch.no_grad():
                    for t in subset:
                        t.add_(1e-3)
                info, dt, rss = timed(peak, lambda: m.save(state, path))
                rec("ckptstore re-save 10%", "save", dt, rss)
                res["ckptstore re-save 10%"]["save"].extra["new_bytes"] = info.new_bytes
                with torch.no_grad():
                    for t, s in zip(subset, saved):
                        t.copy_(s)
                del saved
            _peers.remove(path)
        print(f"  repeat {rep + 1}/{args.repeats} done", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "state_bytes": nbytes,
        "num_tensors": len(tensors_of(state)),
        "methods": {
            k: {
                kind: {"seconds": s.seconds, "median": s.median(), "peak_rss": s.rss, **s.extra}
                for kind, s in v.items()
            }
            for k, v in res.items()
        },
    }


def codec_throughput(state32: Any) -> dict[str, Any]:
    """Single-core compress / decompress speed and ratio of the float-aware codec, per part."""
    from ckptstore.format._tensors import dtype_name
    from ckptstore.pipeline._codec import get_codec, group_for_dtype, object_codec

    chunk = 8 << 20
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
                        t0 = time.perf_counter()
                        enc = codec.encode(piece)
                        te += time.perf_counter() - t0
                        dec = np.empty(piece.nbytes, dtype=np.uint8)
                        t0 = time.perf_counter()
                        codec.decode_into(enc, dec)
                        td += time.perf_counter() - t0
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


def tables(variant: str, r: dict[str, Any]) -> tuple[str, dict[str, float]]:
    n = r["state_bytes"]
    ms = r["methods"]

    def med(name: str, kind: str) -> float:
        return ms.get(name, {}).get(kind, {}).get("median", float("nan"))

    peers = ["torch.save", "safetensors", "dcp"]
    lines = [
        f"### {variant}: {n / GB:.2f} GB, {r['num_tensors']} tensors",
        "",
        "| save (durable) | s | GB/s | x raw write | "
        + " | ".join(f"x {p}" for p in peers)
        + " | peak RSS +MB (% of state) | stored/raw |",
        "|---|---:|---:|---:|" + "---:|" * len(peers) + "---:|---:|",
    ]
    raw_w = med("raw disk", "save")
    for name in ms:
        t = med(name, "save")
        if t != t:
            continue
        rss = max(ms[name]["save"]["peak_rss"]) if ms[name]["save"]["peak_rss"] else 0
        stored = ms[name]["save"].get("stored_bytes")
        lines.append(
            f"| {name} | {_f(t)} | {_f(n / t / GB)} | {_f(t / raw_w)} | "
            + " | ".join(_f(t / med(p, "save")) for p in peers)
            + f" | {rss / MB:.0f} ({100 * rss / n:.1f}%) | {_f(stored / n, 3) if stored else '-'} |"
        )
    raw_r, st_w = med("raw disk", "cold"), med("safetensors", "warm")
    lines += [
        "",
        "| load | cold s | cold GB/s | x raw read | warm s | x safetensors warm | "
        "x torch.load warm | peak RSS +MB (above state) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ms:
        c, w = med(name, "cold"), med(name, "warm")
        if c != c:
            continue
        rss = max(ms[name]["cold"]["peak_rss"] + ms[name]["warm"]["peak_rss"])
        above = max(0, rss - n)
        lines.append(
            f"| {name} | {_f(c)} | {_f(n / c / GB)} | {_f(c / raw_r)} | {_f(w, 3)} | {_f(w / st_w)} | "
            f"{_f(w / med('torch.save', 'warm'))} | {rss / MB:.0f} ({above / MB:.0f} = {100 * above / n:.1f}%) |"
        )
    key = {
        "save_vs_fastest_peer": med("ckptstore", "save") / min(med(p, "save") for p in peers),
        "save_bandwidth_vs_disk": raw_w / med("ckptstore", "save"),
        "resave_vs_torch_save": med("ckptstore re-save 10%", "save") / med("torch.save", "save"),
        "cold_load_vs_disk_read": med("ckptstore", "cold") / raw_r,
        "warm_load_vs_safetensors": med("ckptstore", "warm") / st_w,
        "warm_load_noverify_vs_safetensors": med("ckptstore verify=False", "warm") / st_w,
        "save_rss_above_state": max(ms["ckptstore"]["save"]["peak_rss"]) / n,
        "load_rss_above_state": max(
            0, max(ms["ckptstore"]["cold"]["peak_rss"] + ms["ckptstore"]["warm"]["peak_rss"]) - n
        )
        / n,
    }
    if "ckptstore zstd" in ms:
        key["zstd_save_rss_above_state"] = max(ms["ckptstore zstd"]["save"]["peak_rss"]) / n
        key["zstd_load_rss_above_state"] = max(0, max(ms["ckptstore zstd"]["cold"]["peak_rss"]) - n) / n
    return "\n".join(lines), key


def targets(keys: dict[str, dict[str, float]], codec: dict[str, Any]) -> list[tuple[str, str, bool]]:
    out = []
    for v, k in keys.items():
        out += [
            (f"1 {v} save <= 0.9x fastest peer", f"{k['save_vs_fastest_peer']:.2f}x", k["save_vs_fastest_peer"] <= 0.9),
            (
                f"1 {v} save >= 0.9x disk write bandwidth",
                f"{k['save_bandwidth_vs_disk']:.2f}x",
                k["save_bandwidth_vs_disk"] >= 0.9,
            ),
            (
                f"2 {v} re-save 10% <= 0.25x torch.save",
                f"{k['resave_vs_torch_save']:.2f}x",
                k["resave_vs_torch_save"] <= 0.25,
            ),
            (
                f"3 {v} cold load <= 1.1x disk read",
                f"{k['cold_load_vs_disk_read']:.2f}x",
                k["cold_load_vs_disk_read"] <= 1.1,
            ),
            (
                f"3 {v} warm load (verify) <= 2x safetensors",
                f"{k['warm_load_vs_safetensors']:.2f}x",
                k["warm_load_vs_safetensors"] <= 2,
            ),
            (
                f"3 {v} warm load verify=False <= 2x safetensors",
                f"{k['warm_load_noverify_vs_safetensors']:.2f}x",
                k["warm_load_noverify_vs_safetensors"] <= 2,
            ),
            (
                f"5 {v} save peak RSS above state <= 10%",
                f"{100 * k['save_rss_above_state']:.1f}%",
                k["save_rss_above_state"] <= 0.1,
            ),
            (
                f"5 {v} load peak RSS above state <= 10%",
                f"{100 * k['load_rss_above_state']:.1f}%",
                k["load_rss_above_state"] <= 0.1,
            ),
        ]
        if "zstd_save_rss_above_state" in k:
            out.append(
                (
                    f"5 {v} zstd save peak RSS above state <= 10%",
                    f"{100 * k['zstd_save_rss_above_state']:.1f}%",
                    k["zstd_save_rss_above_state"] <= 0.1,
                )
            )
            out.append(
                (
                    f"5 {v} zstd load peak RSS above state <= 10%",
                    f"{100 * k['zstd_load_rss_above_state']:.1f}%",
                    k["zstd_load_rss_above_state"] <= 0.1,
                )
            )
    if codec:
        r32, r16 = codec["fp32 weights+adam"]["ratio"], codec["bf16 weights"]["ratio"]
        out += [
            ("4 fp32 weights+adam ratio <= 0.82", f"{r32:.3f}", r32 <= 0.82),
            ("4 bf16 weights ratio <= 0.66", f"{r16:.3f}", r16 <= 0.66),
        ]
        for k, v in codec.items():
            if "compress_MBps" in v:
                out.append((f"4 {k} compress >= 300 MB/s/core", f"{v['compress_MBps']:.0f}", v["compress_MBps"] >= 300))
                out.append(
                    (f"4 {k} decompress >= 800 MB/s/core", f"{v['decompress_MBps']:.0f}", v["decompress_MBps"] >= 800)
                )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--steps", type=int, default=20, help="AdamW steps to train the model (cached)")
    p.add_argument("--variants", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", default=os.path.join(HERE, ".work"), help="a folder on the disk to measure")
    p.add_argument("--no-compression", dest="compression", action="store_false")
    p.add_argument("--json", default=None, help="output file (default benchmarks/results/<date>-<size>.json)")
    args = p.parse_args(argv)

    drop, peak = CacheDropper(), PeakRss()
    print(
        f"ckptstore benchmark: {platform.node()} {os.cpu_count()} cores, torch {torch.__version__}, "
        f"cache drop: {drop.method}, RSS: {'VmHWM' if peak.exact else 'sampled'}, dir: {args.dir}",
        flush=True,
    )
    t0 = time.perf_counter()
    state32 = trained_state(args.size, args.steps)
    results, keys = {}, {}
    for variant in args.variants.split(","):
        state = state32 if variant == "fp32" else as_bf16(state32)
        print(f"{variant}: {state_bytes(state) / GB:.2f} GB, {args.repeats} repeats", flush=True)
        results[variant] = run_variant(state, args, drop, peak)
    codec = codec_throughput(state32) if args.compression else {}
    print()
    for variant, r in results.items():
        text, keys[variant] = tables(variant, r)
        print(text + "\n")
    if codec:
        print("| codec (1 core, 8 MiB chunks) | ratio | compress MB/s | decompress MB/s |\n|---|---:|---:|---:|")
        for k, v in codec.items():
            print(
                f"| {k} | {v['ratio']:.3f} | {_f(v.get('compress_MBps', float('nan')), 0)} | "
                f"{_f(v.get('decompress_MBps', float('nan')), 0)} |"
            )
        print()
    tg = targets(keys, codec)
    print("| target | measured | met |\n|---|---:|---|")
    for name, val, ok in tg:
        print(f"| {name} | {val} | {'yes' if ok else 'NO'} |")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    doc = {
        "when": datetime.now(timezone.utc).isoformat(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg_end": load,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "args": vars(args),
        "cache_drop": drop.method,
        "variants": results,
        "codec": codec,
        "ratios": keys,
        "targets": [{"target": n, "measured": v, "met": ok} for n, v, ok in tg],
        "wall_seconds": time.perf_counter() - t0,
    }
    path = args.json or os.path.join(HERE, "results", f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{args.size}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {path} ({time.perf_counter() - t0:.0f} s, load average at the end {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
