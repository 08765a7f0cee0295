"""Tables and issue-13 targets of bench_save_load.py, from its results (one variant, one mode).

A result is ``rows[row][kind] -> {field: [one value per sample]}`` with kind "save", "cold" or
"warm" and fields "seconds", "cpu_seconds", "peak_rss", ... Every cell shows the median and the
spread (min-max) of the samples.
"""

from __future__ import annotations

import statistics
from typing import Any

from _peers import PEER_LOADS, PEER_SAVES

GB = 1e9
MB = 1e6
NAN = float("nan")
TOUCH_ROW = "touch only (resident)"


def vals(rows: dict[str, Any], row: str, kind: str, field: str = "seconds") -> list[float]:
    v = rows.get(row, {}).get(kind, {}).get(field, [])
    return [x for x in v if x is not None and x == x]


def med(rows: dict[str, Any], row: str, kind: str, field: str = "seconds") -> float:
    v = vals(rows, row, kind, field)
    return statistics.median(v) if v else NAN


def _f(x: float, nd: int = 2) -> str:
    return "-" if x != x else f"{x:.{nd}f}"


def cell(rows: dict[str, Any], row: str, kind: str, field: str = "seconds", nd: int = 2, scale: float = 1.0) -> str:
    """'median (min-max)' of one field, divided by ``scale``."""
    v = [x / scale for x in vals(rows, row, kind, field)]
    if not v:
        return "-"
    m = statistics.median(v)
    if len(v) == 1:
        return _f(m, nd)
    return f"{_f(m, nd)} ({_f(min(v), nd)}-{_f(max(v), nd)})"


def best(rows: dict[str, Any], names: tuple[str, ...], kind: str) -> tuple[str, float]:
    got = [(med(rows, n, kind), n) for n in names if vals(rows, n, kind)]
    if not got:
        return "-", NAN
    t, n = min(got)
    return n, t


def with_touch_row(rows: dict[str, Any]) -> dict[str, Any]:
    """Add the touch's own time on already-loaded, resident tensors as a load row (measured in
    each safetensors warm-load process right after its load + touch)."""
    out = dict(rows)
    t = vals(rows, "safetensors", "warm", "touch2_seconds")
    if t:
        out[TOUCH_ROW] = {"warm": {"seconds": t}}
    return out


def tables(title: str, nbytes: int, rows: dict[str, Any], busy_share: list[float]) -> str:
    rows = with_touch_row(rows)
    gb = nbytes / GB
    peer, _ = best(rows, PEER_SAVES, "save")
    share = f"; the competing process got {statistics.median(busy_share):.2f} cores (median)" if busy_share else ""
    lines = [
        f"#### {title}{share}",
        "",
        f"| save (durable) | s | GB/s | CPU-s | CPU-s/GB | x safetensors | x best peer ({peer}) | "
        "peak RSS +MB (% of state) | stored/raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    _, best_save = best(rows, PEER_SAVES, "save")
    for name, kinds in rows.items():
        if "save" not in kinds:
            continue
        t = med(rows, name, "save")
        rss = max(vals(rows, name, "save", "peak_rss") or [0])
        stored = med(rows, name, "save", "stored_bytes")
        lines.append(
            f"| {name} | {cell(rows, name, 'save')} | {_f(gb / t)} | {cell(rows, name, 'save', 'cpu_seconds')} | "
            f"{cell(rows, name, 'save', 'cpu_seconds', scale=gb)} | {_f(t / med(rows, 'safetensors', 'save'))} | "
            f"{_f(t / best_save)} | {rss / MB:.0f} ({100 * rss / nbytes:.1f}%) | "
            f"{_f(stored / nbytes, 3) if stored == stored else '-'} |"
        )
    cpeer, best_cold = best(rows, PEER_LOADS, "cold")
    wpeer, best_warm = best(rows, PEER_LOADS, "warm")
    st_w, hash_w = med(rows, "safetensors", "warm"), med(rows, "hash only", "warm")
    lines += [
        "",
        f"| load + touch (fresh process) | cold s | warm s | cold CPU-s | warm CPU-s | x best peer cold ({cpeer}) | "
        f"x best peer warm ({wpeer}) | x safetensors lazy + touch warm | x hash only warm | "
        "peak RSS above state MB (%) | anon MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, kinds in rows.items():
        if "warm" not in kinds:
            continue
        c, w = med(rows, name, "cold"), med(rows, name, "warm")
        rss = max(vals(rows, name, "cold", "peak_rss") + vals(rows, name, "warm", "peak_rss") or [NAN])
        anon = max(vals(rows, name, "cold", "anon_rss") + vals(rows, name, "warm", "anon_rss") or [NAN])
        above = max(0.0, rss - nbytes) if name not in ("hash only", TOUCH_ROW) else NAN
        lines.append(
            f"| {name} | {cell(rows, name, 'cold')} | {cell(rows, name, 'warm', nd=3)} | "
            f"{cell(rows, name, 'cold', 'cpu_seconds')} | {cell(rows, name, 'warm', 'cpu_seconds')} | "
            f"{_f(c / best_cold)} | {_f(w / best_warm)} | {_f(w / st_w)} | {_f(w / hash_w)} | "
            f"{_f(above / MB, 0)} ({_f(100 * above / nbytes, 1)}%) | {_f(anon / MB, 0)} |"
        )
    return "\n".join(lines)


def targets(mode: str, nbytes: int, rows: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 13's targets for one variant in one mode: (target, measured, met)."""
    gb = nbytes / GB
    out: list[tuple[str, str, bool]] = []

    def ratio(name: str, a: float, b: float, limit: float, detail: str = "") -> None:
        r = a / b
        out.append((name, f"{_f(r)}x{detail}", r <= limit))

    cpu = med(rows, "ckptstore", "save", "cpu_seconds") / gb
    st_cpu = med(rows, "safetensors", "save", "cpu_seconds") / gb
    ratio("save CPU-s/GB <= 1.2x safetensors'", cpu, st_cpu, 1.2, f" ({_f(cpu)} vs {_f(st_cpu)})")
    peer, best_save = best(rows, PEER_SAVES, "save")
    limit = 1.0 if mode == "busy" else 0.8
    ratio(f"{mode} save <= {limit}x best peer ({peer})", med(rows, "ckptstore", "save"), best_save, limit)
    w = med(rows, "ckptstore", "warm")
    hash_w = med(rows, "hash only", "warm")
    # like with like: the load row includes the touch every contender's load is followed by, the
    # hash row does not; the floor is the hash plus the touch of resident tensors
    touch = med(rows, "safetensors", "warm", "touch2_seconds")
    alone = med(rows, "ckptstore", "warm", "load_seconds")
    ratio(
        "warm verified load + touch <= 1.1x (hash only (all cores) + touch of resident tensors)",
        w,
        hash_w + touch,
        1.1,
        f" (load + touch / hash only {_f(w / hash_w)}x; the load alone / hash only {_f(alone / hash_w)}x)",
    )
    st_w = med(rows, "safetensors", "warm")
    ratio("warm verified load <= 2x safetensors lazy + touch", w, st_w, 2.0)
    ratio("warm verify=False <= 1.2x safetensors lazy + touch", med(rows, "ckptstore verify=False", "warm"), st_w, 1.2)
    cpeer, best_cold = best(rows, PEER_LOADS, "cold")
    ratio(f"cold load <= 1.0x best peer ({cpeer})", med(rows, "ckptstore", "cold"), best_cold, 1.0)
    if vals(rows, "ckptstore zstd", "save"):
        if mode == "quiet":
            ratio(
                "zstd save <= 1.0x safetensors (uncompressed) save",
                med(rows, "ckptstore zstd", "save"),
                med(rows, "safetensors", "save"),
                1.0,
            )
        ratio(f"zstd cold load <= 1.2x best peer ({cpeer})", med(rows, "ckptstore zstd", "cold"), best_cold, 1.2)
        wpeer, best_warm = best(rows, PEER_LOADS, "warm")
        ratio(f"zstd warm load <= 3x best peer ({wpeer})", med(rows, "ckptstore zstd", "warm"), best_warm, 3.0)
    for name in ("ckptstore", "ckptstore zstd"):
        rss = vals(rows, name, "save", "peak_rss")
        if rss:
            x = max(rss) / nbytes
            out.append((f"{name} save peak RSS extra <= 2% of state", f"{100 * x:.1f}%", x <= 0.02))
    rss = vals(rows, "ckptstore", "cold", "peak_rss") + vals(rows, "ckptstore", "warm", "peak_rss")
    if rss:
        x = max(0.0, max(rss) - nbytes) / nbytes
        out.append(("mmap load peak RSS above state <= 1%", f"{100 * x:.1f}%", x <= 0.01))
    return out


def codec_targets(codec: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """The zstd ratio and single-core speed targets (measured once, on a quiet machine)."""
    if not codec:
        return []
    r32, r16 = codec["fp32 weights+adam"]["ratio"], codec["bf16 weights"]["ratio"]
    out = [
        ("zstd ratio fp32 weights+adam <= 0.83", f"{r32:.3f}", r32 <= 0.83),
        ("zstd ratio bf16 weights <= 0.68", f"{r16:.3f}", r16 <= 0.68),
    ]
    for k, v in codec.items():
        if "compress_MBps" in v:
            out.append((f"codec {k} compress >= 500 MB/s/core", f"{v['compress_MBps']:.0f}", v["compress_MBps"] >= 500))
            out.append(
                (f"codec {k} decompress >= 1500 MB/s/core", f"{v['decompress_MBps']:.0f}", v["decompress_MBps"] >= 1500)
            )
    return out


def target_table(tg: list[tuple[str, str, bool]]) -> str:
    lines = ["| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {n} | {v} | {'yes' if ok else 'NO'} |" for n, v, ok in tg]
    return "\n".join(lines)
