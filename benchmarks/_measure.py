"""Measuring helpers for the benchmarks: page-cache dropping, peak RSS, CPU time, fsync, timing."""

from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def fsync_path(path: str) -> None:
    """fsync a file, or every file under a folder and the folders themselves."""
    if os.path.isdir(path):
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                fsync_path(os.path.join(dirpath, f))
            fd = os.open(dirpath, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir_of(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    out = []
    for dirpath, _dirs, files in os.walk(path):
        out.extend(os.path.join(dirpath, f) for f in files)
    return out


def du(path: str) -> int:
    return sum(os.path.getsize(f) for f in files_under(path))


class CacheDropper:
    """Evict files from the page cache: the whole cache as root (drop_caches), else each file
    with posix_fadvise(DONTNEED) (works for clean pages, i.e. after fsync). ``prefer="fadvise"``
    evicts only the named files even as root (the rest of the cache, e.g. torch's own libraries,
    stays warm)."""

    def __init__(self, prefer: str = "drop_caches") -> None:
        self.method = "drop_caches"
        if prefer == "fadvise" and hasattr(os, "posix_fadvise"):
            self.method = "fadvise"
            return
        try:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
        except OSError:
            self.method = "fadvise" if hasattr(os, "posix_fadvise") else "none"

    def drop(self, *paths: str) -> None:
        if self.method == "drop_caches":
            os.sync()
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3\n")
        elif self.method == "fadvise":
            for p in paths:
                for f in files_under(p):
                    fd = os.open(f, os.O_RDONLY)
                    try:
                        os.fdatasync(fd)
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)


def _status(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Peak resident memory of this process during a block, above what it was at the start.
    Linux: resets the kernel's high-water mark (clear_refs 5) and reads VmHWM afterwards.
    Elsewhere: psutil sampling every 2 ms."""

    def __init__(self) -> None:
        self.exact = os.path.exists("/proc/self/clear_refs")
        if self.exact:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5\n")
            except OSError:
                self.exact = False

    def run(self, fn: Callable[[], Any], collect: bool = True) -> tuple[Any, int]:
        if collect:
            gc.collect()
        if self.exact:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5\n")
            base = _status("VmRSS")
            out = fn()
            return out, _status("VmHWM") - base
        import threading

        import psutil

        proc = psutil.Process()
        base = proc.memory_info().rss
        peak = [base]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.002):
                peak[0] = max(peak[0], proc.memory_info().rss)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            out = fn()
        finally:
            stop.set()
            th.join()
        peak[0] = max(peak[0], proc.memory_info().rss)
        return out, peak[0] - base


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all its threads included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


@dataclass
class Samples:
    seconds: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    def peak_rss(self) -> int:
        return max(self.rss) if self.rss else 0


def timed(peak: PeakRss, fn: Callable[[], Any]) -> tuple[Any, float, int]:
    def run() -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    (out, dt), rss = peak.run(run)
    return out, dt, rss


def write_results(doc: dict[str, Any], path: str | None, name: str, t0: float) -> str:
    """Write a benchmark's JSON document to ``path`` (default ``results/<date>-<name>.json``) and
    say where, with the run's wall time and the load average at its end; returns the path."""
    from datetime import datetime

    path = path or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"{datetime.now():%Y%m%d-%H%M%S}-{name}.json"
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {path} ({time.perf_counter() - t0:.0f} s, load average at the end {doc.get('loadavg_end')})")
    return path
