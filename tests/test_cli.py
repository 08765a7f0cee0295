"""The command line: each command's output and exit codes (0 ok, 1 problems, 2 usage)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptstore import Retention, Store
from ckptstore.cli import main


def rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def store_path(tmp_path) -> Path:
    root = tmp_path / "run"
    s = Store(root)
    base = rand(100_000, 0)
    losses = [3.0, 1.0, None, 0.5, 4.0, 2.5]
    for i, loss in enumerate(losses):
        s.save(
            {
                "model": {"base": base, "head": rand(5000, i + 1)},
                "optimizer": {"state": {0: {"exp_avg": rand(5000, 100 + i)}}},
                "step": i * 100,
            },
            step=i * 100,
            epoch=i // 2,
            metrics={} if loss is None else {"loss": loss},
            tags=["pinned"] if i == 1 else [],
            meta={"total_steps": 1000},
            config={"lr": 1e-3, "model": "tiny"},
        )
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_ls_table_and_json(store_path, capsys):
    code, out, _ = run(capsys, "ls", str(store_path))
    assert code == 0
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "step",
        "epoch",
        "created (UTC)",
        "size",
        "new",
        "metrics",
        "tags",
        "progress",
        "id",
    ]
    assert len(lines) == 7
    assert "loss=0.5" in lines[4] and "300/1000 (30.0%)" in lines[4]
    assert "pinned" in lines[2]
    code, out, _ = run(capsys, "ls", str(store_path), "--json")
    rows = json.loads(out)
    assert code == 0 and [r["step"] for r in rows] == [0, 100, 200, 300, 400, 500]
    assert rows[3]["metrics"] == {"loss": 0.5} and rows[3]["progress"] == "300/1000 (30.0%)"
    assert rows[1]["tags"] == ["pinned"] and rows[0]["new_bytes"] > rows[1]["new_bytes"] > 0


def test_show(store_path, capsys):
    code, out, _ = run(capsys, "show", str(store_path), "--step", "300")
    assert code == 0
    assert out.startswith("checkpoint ") and "(step 300, epoch 1)" in out.splitlines()[0]
    assert re.search(r"^metrics\s+loss=0.5$", out, re.M)
    assert re.search(r"^progress\s+300/1000 \(30.0%\)$", out, re.M)
    assert re.search(r"^rng\s+python, numpy, torch", out, re.M)
    assert re.search(r"^tensors\s+3 tensors, 429.7 KiB: float32 x3", out, re.M)
    assert re.search(r"^\s+model\s+2 tensors\s+410.2 KiB$", out, re.M)
    assert re.search(r"^\s+optimizer\s+1 tensors\s+19.5 KiB$", out, re.M)
    assert '"lr": 0.001' in out and '"model": "tiny"' in out
    code, out, _ = run(capsys, "show", str(store_path), "--json")
    doc = json.loads(out)
    assert doc["step"] == 500 and doc["config"] == {"lr": 0.001, "model": "tiny"}
    assert doc["tensors"]["count"] == 3 and doc["rng"][:3] == ["python", "numpy", "torch"]
    code, _, err = run(capsys, "show", str(store_path), "--step", "7")
    assert code == 1 and "no checkpoint at step 7" in err


def test_gc_dry_run_prints_reasons_and_changes_nothing(store_path, capsys):
    before = sorted(p.name for p in (store_path / "manifests").iterdir())
    code, out, _ = run(capsys, "gc", str(store_path), "--keep-last", "2", "--keep-best", "loss:min", "--dry-run")
    assert code == 0
    assert sorted(p.name for p in (store_path / "manifests").iterdir()) == before
    lines = out.splitlines()
    assert lines[0] == "policy (command line): keep last 2; best 1 by loss (min); tags pinned"
    rows = {int(re.split(r"\s{2,}", ln)[1]): ln for ln in lines[2:8]}
    assert rows[500].startswith("keep") and rows[500].endswith("newest; last 2 (#1)")
    assert rows[300].endswith("best 1 by loss (min): #1, loss=0.5")
    assert rows[100].endswith("tagged pinned")
    assert rows[200].startswith("remove") and rows[200].endswith(
        "not among the last 2; no 'loss' metric (keep_best does not judge it)"
    )
    assert rows[0].startswith("remove") and "#4, loss=3" in rows[0]
    assert re.match(
        r"dry run: would remove 2 checkpoint\(s\); would free [\d.]+ KiB \(\d+ bytes\) in 1 object", lines[8]
    )


def test_gc_removes_and_frees(store_path, capsys):
    code, out, _ = run(capsys, "gc", str(store_path), "--keep-last", "1", "--json")
    doc = json.loads(out)
    assert code == 0 and not doc["dry_run"]
    assert [d["step"] for d in doc["decisions"] if d["action"] == "keep"] == [100, 500]
    assert len(doc["removed"]) == 4 and doc["freed_bytes"] > 0
    assert [c.step for c in Store(store_path).list()] == [100, 500]
    code, _, _ = run(capsys, "verify", str(store_path), "--read-data")
    assert code == 0


def test_gc_uses_and_sets_the_stored_policy(store_path, capsys):
    code, out, _ = run(capsys, "gc", str(store_path), "--dry-run")
    assert code == 0 and out.startswith("no retention policy given or stored")
    code, out, _ = run(capsys, "gc", str(store_path), "--keep-last", "3", "--set-policy", "--keep-tag", "best")
    assert code == 0 and "now stored in the store" in out
    assert Store(store_path).get_retention() == Retention(keep_last=3, keep_tags=("pinned", "best"))
    code, out, _ = run(capsys, "gc", str(store_path), "--dry-run")
    assert out.startswith("policy (stored in the store): keep last 3; tags pinned,best")


@pytest.mark.parametrize(
    "argv",
    [
        ["gc", "{p}", "--keep-best", "loss"],
        ["gc", "{p}", "--keep-best", "loss:lowest"],
        ["gc", "{p}", "--keep-last", "0"],
        ["gc", "{p}", "--keep-within", "soon"],
        ["verify"],
        ["frobnicate", "{p}"],
        ["ls", "{p}", "--nope"],
    ],
)
def test_usage_errors_exit_2(store_path, capsys, argv):
    code, _, err = run(capsys, *[a.format(p=store_path) for a in argv])
    assert code == 2 and "usage:" in err


def test_verify_ok_then_damage_found(store_path, capsys):
    code, out, _ = run(capsys, "verify", str(store_path))
    assert code == 0 and out.splitlines()[-1] == "checked 6 checkpoint(s) (structure and object presence): all ok"
    # flip one byte of an object only the newest checkpoint uses
    s = Store(store_path)
    m = s.manifest(step=500)
    prev = set(s.manifest(step=400).objects)
    key = next(k for k in m.objects if k not in prev)
    p = store_path / "objects" / key[:2] / key
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    code, out, _ = run(capsys, "verify", str(store_path))
    assert code == 0  # presence only: the object is there
    code, out, _ = run(capsys, "verify", str(store_path), "--read-data")
    assert code == 1
    assert re.search(rf"^step 500\s+\w{{12}}  DAMAGED: object {key} does not match its hash$", out, re.M)
    assert out.splitlines()[-1] == "checked 6 checkpoint(s) (structure and every byte): 1 damaged"
    code, out, _ = run(capsys, "verify", str(store_path), "--read-data", "--step", "400")
    assert code == 0 and "checked 1 checkpoint(s)" in out
    p.unlink()
    code, out, _ = run(capsys, "verify", str(store_path), "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"] and doc["checkpoints"][-1]["problems"] == [f"object {key} missing"]


def test_du(store_path, capsys):
    code, out, _ = run(capsys, "du", str(store_path))
    assert code == 0
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "step",
        "created (UTC)",
        "logical",
        "referenced",
        "only here",
        "written",
        "id",
    ]
    assert re.match(
        r"total: 2.5 MiB of tensors in 6 checkpoint\(s\) stored in [\d.]+ KiB \(6 objects\); "
        r"dedup and compression: \d+\.\d\dx",
        lines[7],
    )
    code, out, _ = run(capsys, "du", str(store_path), "--json")
    doc = json.loads(out)
    assert doc["logical_bytes"] == 6 * 110_000 * 4 and doc["unreferenced_objects"] == 0
    assert doc["stored_bytes"] == sum(p.stat().st_size for p in (store_path / "objects").rglob("*") if p.is_file())
    # checkpoint 0's pack holds the shared base: removing it alone frees nothing
    assert doc["checkpoints"][0]["unique"] == 0 and doc["checkpoints"][1]["unique"] > 0
    orphan = store_path / "objects" / "ab" / ("ab" * 32)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"z" * 123)
    code, out, _ = run(capsys, "du", str(store_path))
    assert "unreferenced: 123 B in 1 object(s)" in out


def test_missing_store_is_one_clear_error(tmp_path, capsys):
    code, out, err = run(capsys, "ls", str(tmp_path / "nope"))
    assert code == 1 and out == ""
    assert err.startswith("ckptstore: error: no checkpoint store at") and str(tmp_path / "nope") in err
    assert "Traceback" not in err


def test_fsspec_uri_and_storage_options(store_path, capsys):
    code, out, _ = run(capsys, "ls", f"file://{store_path}", "-o", "auto_mkdir=true", "--json")
    assert code == 0 and len(json.loads(out)) == 6
    code, out, _ = run(capsys, "gc", f"file://{store_path}", "-o", "auto_mkdir=true", "--keep-last", "2", "--dry-run")
    assert code == 0 and "would remove 3 checkpoint(s)" in out


def _console_script() -> str:
    exe = Path(sys.executable).parent / "ckptstore"
    if not exe.exists():
        pytest.skip("the ckptstore console script is not installed next to this python")
    return str(exe)


def test_console_script_in_a_subprocess(store_path):
    exe = _console_script()
    r = subprocess.run(
        [exe, "gc", str(store_path), "--keep-last", "2", "--dry-run"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert "dry run: would remove 3 checkpoint(s)" in r.stdout and r.stderr == ""
    # long work stays quiet when piped: no progress bar on stderr
    r = subprocess.run([exe, "verify", str(store_path), "--read-data"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "" and "all ok" in r.stdout


def test_progress_bar_on_a_terminal_only(store_path):
    """verify --read-data draws a bar when stderr is a terminal (piped: see the test above)."""
    exe = _console_script()
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 wide
    try:
        p = subprocess.Popen(
            [exe, "verify", str(store_path), "--read-data"],
            stdout=subprocess.PIPE,
            stderr=follower,
            env={**os.environ, "TERM": "xterm"},
        )
        out, _ = p.communicate(timeout=120)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                b = os.read(leader, 65536)
            except OSError:
                break
            if not b:
                break
            chunks.append(b)
    finally:
        if follower >= 0:
            os.close(follower)
        os.close(leader)
    assert p.returncode == 0 and b"all ok" in out
    assert b"verifying" in b"".join(chunks)
