"""The save/load benchmark's own machinery (benchmarks/_loadproc.py, _peers.py, _busy.py): every
contender's load, in a fresh process, reads back exactly the state's bytes; the competing process
of the busy mode really runs and is stopped. (Never a wall-clock assertion: bench_save_load.py
measures times.)"""

from __future__ import annotations

import os
import sys
import time

import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCH)
    try:
        import _busy
        import _loadproc
        import _measure
        import _peers

        yield _peers, _loadproc, _busy, _measure
    finally:
        sys.path.remove(BENCH)


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 257, generator=g)
    return {
        "model": {"w": w, "tied": w, "b": torch.randn(7, generator=g).to(torch.bfloat16)},
        "optimizer": {"m": torch.randn(1001, generator=g), "step": torch.tensor(3.0)},
    }


def test_every_load_reads_the_state_bytes(tmp_path, bench):
    _peers, _loadproc, _busy, _measure = bench
    state = _state()
    want = _peers.touch(state)
    assert want[1] == 300 * 257 * 4 + 7 * 2 + 1001 * 4 + 4  # the tied tensor counted once
    paths = {}
    for name in ("ckptstore", "ckptstore zstd", "torch.save", "safetensors", "dcp", "raw disk"):
        paths[name] = str(tmp_path / name.replace(" ", "_"))
        _peers.SAVES[name][0](state, paths[name])
    loads = _loadproc.FreshLoads("fork")
    try:
        assert loads.server_threads >= 1
        for name, path in paths.items():
            for row in _peers.SAVES[name][1]:
                r = loads.run(row, path)
                if row == "hash only":
                    assert r["checksum"] is None and r["touched_bytes"] == _measure.du(path)
                    continue
                if row == "raw disk":  # one buffer of every tensor's bytes back to back
                    assert r["touched_bytes"] == want[1]
                    continue
                assert (r["checksum"], r["touched_bytes"]) == want, row
                assert r["cpu_seconds"] >= 0 and r["peak_rss_raw"] >= 0 and r["process_seconds"] >= r["seconds"]
                assert (r["touch2_seconds"] == r["touch2_seconds"]) == (row == "safetensors")
        with pytest.raises(RuntimeError, match="failed in its process"):
            loads.run("safetensors", str(tmp_path / "missing"))
        assert loads.run("safetensors", paths["safetensors"])["checksum"] == want[0]  # the server lives on
    finally:
        loads.close()
    # a new interpreter per load gives the same bytes
    r = _loadproc.FreshLoads("spawn").run("safetensors", paths["safetensors"])
    assert (r["checksum"], r["touched_bytes"]) == want


def test_busy_competitor_runs_and_stops(bench):
    _peers, _loadproc, _busy, _measure = bench
    with _busy.Busy(True) as b:
        pid = b.proc.pid
        time.sleep(0.3)
    assert b.cpu > 0 and b.wall > 0 and 0 < b.share
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    with _busy.Busy(False) as q:
        assert q.proc is None
    assert q.share == 0
