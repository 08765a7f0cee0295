"""Helpers shared by the framework adapter tests: subprocess runs, kills, damage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import ckptstore

HERE = Path(__file__).resolve().parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="default",
    )
    return env


def run_jobs(
    script: str, jobs: list[dict], tmp: Path, *, kill_after: str | None = None, timeout: float = 240
) -> tuple[int, str, str]:
    """Run ``script`` on ``jobs``; with ``kill_after``, SIGKILL it as soon as a stdout line starts
    with that text. Returns (returncode, stdout, stderr)."""
    spec = tmp / f"jobs-{len(list(tmp.glob('jobs-*')))}.json"
    spec.write_text(json.dumps(jobs))
    p = subprocess.Popen(
        [sys.executable, str(HERE / script), str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    err: list[str] = []
    t = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)  # type: ignore[union-attr]
    t.start()
    out: list[str] = []
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        for line in p.stdout:  # type: ignore[union-attr]
            out.append(line)
            if kill_after is not None and line.startswith(kill_after):
                p.send_signal(signal.SIGKILL)
                break
        p.wait()
    finally:
        timer.cancel()
    t.join(10)
    return p.returncode, "".join(out), "".join(err)


def damage_newest(uri: str | os.PathLike[str]) -> ckptstore.CheckpointInfo:
    """Flip bytes in an object that the newest checkpoint references and no checkpoint of an
    earlier step does; returns the newest checkpoint."""
    with ckptstore.Store(uri) as store:
        infos = store.list()
        newest = infos[-1]
        older: set[str] = set()
        for i in infos:
            if i.step < newest.step:
                older |= set(store.manifest(id=i.id).objects)
        mine = set(store.manifest(id=newest.id).objects) - older
    assert mine, "the newest checkpoint shares every object with the one before it"
    key = sorted(mine)[0]
    path = Path(uri) / "objects" / key[:2] / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    return newest
