"""Bit-exact resume after SIGKILL / SIGTERM, and resume past a damaged newest checkpoint.

A tiny model trains in a subprocess (tests/_loop_train.py, deterministic CPU ops); the run is
interrupted at a random step, started again with the same command, and finishes. Its final
weights, optimizer state and loss history must equal an uninterrupted run's, bit for bit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ckptstore

HERE = Path(__file__).parent
SCRIPT = HERE / "_loop_train.py"
STEPS, EVERY = 40, 4
SEED = int(os.environ.get("CKPTSTORE_TEST_SEED", random.randrange(1 << 30)))


def _cmd(store: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), str(store), str(out), "--steps", str(STEPS), "--every", str(EVERY), *extra]


def _run(store: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(_cmd(store, out, *extra), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"run failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p


def _interrupt(store: Path, out: Path, at: int, sig: int, *extra: str) -> tuple[int, str, str]:
    """Start a run, send ``sig`` once it reports step ``at``; returns (returncode, stdout, stderr)."""
    p = subprocess.Popen(
        _cmd(store, out, "--delay", "0.02", *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = []
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line)
        if line.strip() == f"step {at}":
            p.send_signal(sig)
            break
    rest, err = p.communicate(timeout=120)
    return p.returncode, "".join(lines) + rest, err


def _resumed_from(stdout: str) -> int:
    return int(next(line.split()[1] for line in stdout.splitlines() if line.startswith("resumed ")))


def _assert_same(a: object, b: object, path: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), f"{path} differs (seed {SEED})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"  # type: ignore[arg-type]
        for i, (x, y) in enumerate(zip(a, b)):  # type: ignore[call-overload]
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r} (seed {SEED})"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("ref")
    _run(d / "store", d / "final.pt")
    return torch.load(d / "final.pt", weights_only=True)


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_is_bit_exact(tmp_path: Path, reference: dict) -> None:
    at = random.Random(SEED).randint(EVERY + 1, STEPS - 3)
    rc, out, err = _interrupt(tmp_path / "store", tmp_path / "final.pt", at, signal.SIGKILL, "--async")
    assert rc == -signal.SIGKILL, f"the run was not killed (rc={rc}, seed {SEED}):\n{out}\n{err}"
    assert not (tmp_path / "final.pt").exists()
    latest = ckptstore.info(tmp_path / "store")
    assert latest.step < STEPS
    p = _run(tmp_path / "store", tmp_path / "final.pt", "--async")
    assert _resumed_from(p.stdout) == latest.step > 0
    _assert_same(torch.load(tmp_path / "final.pt", weights_only=True), reference)


@pytest.mark.slow
def test_sigterm_saves_at_next_step_exits_cleanly_and_resume_is_bit_exact(tmp_path: Path, reference: dict) -> None:
    at = random.Random(SEED + 1).randint(2, STEPS - 3)
    rc, out, err = _interrupt(tmp_path / "store", tmp_path / "final.pt", at, signal.SIGTERM)
    assert rc == 128 + signal.SIGTERM, f"rc={rc} (seed {SEED}):\n{out}\n{err}"
    assert "Traceback" not in err
    done = [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")]
    latest = ckptstore.info(tmp_path / "store")
    # the emergency checkpoint is the step during which the signal arrived: no finished step is lost
    assert latest.step == max(done) + 1
    assert "signal:SIGTERM" in latest.meta["trigger"]
    assert f"saved step {latest.step}" in err and "after SIGTERM" in err
    p = _run(tmp_path / "store", tmp_path / "final.pt")
    assert _resumed_from(p.stdout) == latest.step
    _assert_same(torch.load(tmp_path / "final.pt", weights_only=True), reference)


def _newest_manifest(store: Path) -> tuple[Path, dict]:
    path = sorted((store / "manifests").glob("*.json"))[-1]
    return path, json.loads(path.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["object", "manifest"])
def test_damaged_newest_checkpoint_falls_back_and_run_completes(tmp_path: Path, reference: dict, damage: str) -> None:
    store = tmp_path / "store"
    crash = 3 * EVERY + 1  # checkpoints at 4, 8, 12, then a crash
    p = subprocess.run(
        _cmd(store, tmp_path / "final.pt", "--crash-after", str(crash)), capture_output=True, text=True, timeout=240
    )
    assert p.returncode == 3, p.stderr
    path, newest = _newest_manifest(store)
    assert newest["step"] == 3 * EVERY
    if damage == "manifest":
        path.write_bytes(path.read_bytes()[:-40] + b"garbage" * 5 + b"}")
    else:
        previous = json.loads(sorted((store / "manifests").glob("*.json"))[-2].read_bytes())
        only_newest = sorted(set(newest["objects"]) - set(previous["objects"]))
        assert only_newest, "the newest checkpoint shares every object with the one before"
        obj = store / "objects" / only_newest[0][:2] / only_newest[0]
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF
        obj.write_bytes(bytes(data))
    p = _run(store, tmp_path / "final.pt")
    assert _resumed_from(p.stdout) == 2 * EVERY
    assert "ResumeFallbackWarning" in p.stderr
    assert f"step {3 * EVERY} ({newest_id(path)})" in p.stderr and f"Resuming from step {2 * EVERY}" in p.stderr
    _assert_same(torch.load(tmp_path / "final.pt", weights_only=True), reference)


def newest_id(path: Path) -> str:
    return path.name.split("-", 1)[1][:12]
