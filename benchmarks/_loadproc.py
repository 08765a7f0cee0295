"""Every benchmark load runs here, in a fresh process: load, touch every byte, report JSON.

One load = one new process that has imported torch, numpy, safetensors, blake3 and ckptstore
and done nothing else: no tensor of the state, no file of the checkpoint, no cache of a previous
load. In it the loader runs, then the touch (the same for every contender: a sum over a uint8
view of every distinct tensor's bytes, so lazy loads such as safetensors' and
``torch.load(mmap=True)`` read every byte too), then the touch again on the loaded tensors (the
touch's own cost). Measured inside the process: wall seconds of load + touch, CPU seconds of the
process over that span (``getrusage(RUSAGE_SELF)``: user + system, every thread), peak RSS above
the start (kernel high-water mark, reset first) less the library pages the process faulted in
meanwhile (``peak_rss_raw`` keeps the uncorrected peak), and anonymous memory kept at the end.
The libraries (torch, torch.distributed.checkpoint, safetensors, blake3, ckptstore: every
module its public names need) are imported before the timed span; what a loader imports lazily
on its first call counts.

Two ways to get the fresh process (``--fresh``):

- ``fork`` (default): a server process imports the libraries once, then forks one child per
  load; the child is a new process (own address space, CPU and memory accounting from zero) that
  skips the 2-4 s of imports, which would otherwise dominate the run time.
- ``spawn``: ``python benchmarks/_loadproc.py --one JSON`` per load, imports included in the
  process but not in the timed span.

Run directly: ``python benchmarks/_loadproc.py --one '{"loader": "safetensors", "path": "f"}'``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _peers  # noqa: E402
import blake3  # noqa: E402
import numpy  # noqa: E402, F401  (the raw loader; imported before any fork)
import safetensors.torch  # noqa: E402, F401
import torch  # noqa: E402
import torch.distributed.checkpoint  # noqa: E402, F401
from _measure import PeakRss, _status, cpu_seconds, files_under  # noqa: E402

import ckptstore  # noqa: E402

# ``import ckptstore`` is lazy (PEP 562: the CLI starts without torch); resolving its public names
# imports its modules, which is what every other library's import statement above does. Without
# this, each load process imported (and, with PYTHONDONTWRITEBYTECODE, compiled) ckptstore's
# modules inside the timed span: 0.3-0.8 s of a 1.3 GB warm load here.
for _name in ckptstore.__all__:
    getattr(ckptstore, _name)


def _hash_file(path: str, threads: int) -> int:
    h = blake3.blake3(max_threads=threads)
    h.update_mmap(path)
    h.digest()
    return os.path.getsize(path)


def hash_files(path: str) -> int:
    """BLAKE3 of every file under ``path`` on all cores, memory-mapped: the least a verified
    load of those bytes must spend. A file of 64 MiB or more is hashed with
    ``max_threads=AUTO`` (BLAKE3's own tree parallelism); the smaller ones, a checkpoint's many
    objects, are spread over one thread per core, each hashing whole files (per-file fork-join
    is slower there when another process holds a core). Returns the bytes hashed."""
    files = [f for f in files_under(path) if os.path.getsize(f)]
    big = [f for f in files if os.path.getsize(f) >= 64 << 20]
    n = sum(_hash_file(f, blake3.blake3.AUTO) for f in big)
    small = [f for f in files if f not in set(big)]
    if small:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            n += sum(pool.map(lambda f: _hash_file(f, 1), small))
    return n


def mapped_file_rss(skip: str) -> int:
    """Resident bytes of this process's file mappings other than those under ``skip``: the
    libraries' code and data pages. A fresh process faults more of them in as it first runs a
    code path; that is not memory the load allocated, so it is taken out of the peak."""
    skip = os.path.abspath(skip)
    total, counting = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if "-" in head and ":" not in head:  # a mapping's header line: address range, perms, ..., path
                parts = rest.split(None, 4)
                path = parts[4].strip() if len(parts) == 5 else ""
                counting = (
                    path.startswith("/") and not path.startswith(("/dev/", "/memfd:")) and not path.startswith(skip)
                )
            elif counting and head == "Rss:":
                total += int(rest.split()[0]) * 1024
    return total


def _raw(path: str) -> torch.Tensor:
    return torch.from_numpy(_peers.raw_read(path))


#: load row -> the function that loads the files at a path (into tensors, lazily or not)
LOADERS: dict[str, Callable[[str], Any]] = {
    "raw disk": _raw,
    "ckptstore": _peers.ckpt_load(progress=False),
    "ckptstore verify=False": _peers.ckpt_load(verify=False, progress=False),
    "ckptstore mmap=False": _peers.ckpt_load(mmap=False, progress=False),
    "ckptstore zstd": _peers.ckpt_load(progress=False),
    "torch.load": _peers.torch_load,
    "torch.load mmap=True": _peers.torch_load_mmap,
    "safetensors": _peers.st_load,
    "dcp": _peers.dcp_load,
    "hash only": hash_files,
}


def measure(loader: str, path: str) -> dict[str, Any]:
    """One load + touch, in this process. Call it in a fresh one."""
    fn = LOADERS[loader]
    peak = PeakRss()
    if peak.exact:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5\n")
    lib0 = mapped_file_rss(path)
    base, anon0 = _status("VmRSS"), _status("RssAnon")
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn(path)
    t1 = time.perf_counter()
    if loader == "hash only":
        checksum, touched = None, int(out)
    else:
        checksum, touched = _peers.touch(out)
    t2, c1 = time.perf_counter(), cpu_seconds()
    hwm = _status("VmHWM") - base if peak.exact else 0
    anon = _status("RssAnon") - anon0
    libs = mapped_file_rss(path) - lib0
    touch2 = float("nan")
    if loader == "safetensors":  # the touch alone, on loaded and resident tensors
        t3 = time.perf_counter()
        _peers.touch(out)
        touch2 = time.perf_counter() - t3
    return {
        "seconds": t2 - t0,
        "load_seconds": t1 - t0,
        "touch_seconds": t2 - t1,
        "touch2_seconds": touch2,
        "cpu_seconds": c1 - c0,
        "peak_rss": hwm - libs,
        "peak_rss_raw": hwm,
        "library_rss": libs,
        "anon_rss": anon,
        "checksum": checksum,
        "touched_bytes": touched,
    }


def _safe_measure(req: dict[str, Any]) -> dict[str, Any]:
    try:
        return measure(req["loader"], req["path"])
    except Exception:
        return {"error": traceback.format_exc()}


def _serve() -> None:
    """Fork server: one JSON request per stdin line, one JSON result per stdout line."""
    out = sys.stdout
    gc.collect()
    gc.freeze()  # the children inherit the imports as they are; nothing for them to collect
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 0
    out.write(json.dumps({"ready": True, "threads": threads}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the fresh process
            os.close(r)
            os.dup2(2, 1)  # a library's prints must not reach the protocol stream
            res = _safe_measure(req)
            with os.fdopen(w, "w") as f:
                f.write(json.dumps(res))
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            text = f.read()
        _pid, status = os.waitpid(pid, 0)
        res = json.loads(text) if text else {"error": f"load process died (wait status {status})"}
        res["process_seconds"] = time.perf_counter() - t0
        out.write(json.dumps(res) + "\n")
        out.flush()


class FreshLoads:
    """The benchmark's side: ``run(loader, path)`` -> the measurement dict of one fresh-process load."""

    def __init__(self, fresh: str = "fork") -> None:
        self.fresh = fresh
        self.server: subprocess.Popen[str] | None = None
        self.server_threads = 0
        if fresh == "fork":
            self.server = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert self.server.stdout is not None
            hello = json.loads(self.server.stdout.readline())
            self.server_threads = hello["threads"]

    def run(self, loader: str, path: str) -> dict[str, Any]:
        req = json.dumps({"loader": loader, "path": path})
        if self.server is not None:
            assert self.server.stdin is not None and self.server.stdout is not None
            self.server.stdin.write(req + "\n")
            self.server.stdin.flush()
            line = self.server.stdout.readline()
            if not line:
                raise RuntimeError("the load server exited; see its stderr above")
            res = json.loads(line)
        else:
            t0 = time.perf_counter()
            p = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--one", req], capture_output=True, text=True
            )
            lines = p.stdout.strip().splitlines()
            res = json.loads(lines[-1]) if p.returncode == 0 and lines else {"error": p.stderr[-4000:]}
            res["process_seconds"] = time.perf_counter() - t0
        if "error" in res:
            raise RuntimeError(f"{loader} load of {path} failed in its process:\n{res['error']}")
        return res

    def close(self) -> None:
        if self.server is not None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            self.server.wait(timeout=60)
            self.server = None


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--serve"]:
        _serve()
        return 0
    if argv[:1] == ["--one"] and len(argv) == 2:
        res = _safe_measure(json.loads(argv[1]))
        print(json.dumps(res))
        return 1 if "error" in res else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
