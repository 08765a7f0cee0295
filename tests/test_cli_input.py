"""The command line meets ordinary bad input and damaged stores: one clean line, never a traceback.

Exit codes: 0 ok, 1 a problem (an error, or damage found), 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ckptstore import Store
from ckptstore.cli import main
from ckptstore.cli._main import build_parser


def rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def store_path(tmp_path) -> Path:
    root = tmp_path / "run"
    s = Store(root)
    for i in range(3):
        s.save(
            {"model": {"w": rand(300_000, i), "b": rand(10, 100 + i)}, "step": i},
            step=i * 10,
            metrics={"loss": 1.0 / (i + 1), "acc": 0.1 * i},
        )
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_clean_error(err: str) -> None:
    assert "Traceback" not in err and 'File "' not in err, err
    assert err.startswith("ckptstore: error: "), err


def _exe() -> list[str]:
    return [sys.executable, "-m", "ckptstore"]


# -- no traceback for ordinary bad input ---------------------------------------------------
@pytest.mark.parametrize("cmd", ["show", "cp"])
def test_an_id_that_is_not_hex_is_one_clean_error(store_path, tmp_path, capsys, cmd):
    argv = [cmd, str(store_path)] + ([str(tmp_path / "dst")] if cmd == "cp" else []) + ["--id", "zzzz"]
    code, _, err = run(capsys, *argv)
    assert code == 1
    one_clean_error(err)
    assert "zzzz" in err and "hex" in err


def test_an_unknown_protocol_is_one_clean_error(capsys):
    code, _, err = run(capsys, "ls", "foo://bar")
    assert code == 1
    one_clean_error(err)
    assert "foo://" in err


def test_storage_option_without_a_value_is_a_usage_error_of_the_subcommand(store_path, capsys):
    code, _, err = run(capsys, "ls", str(store_path), "-o", "foo")
    assert code == 2
    assert "usage: ckptstore ls" in err and "KEY=VALUE" in err and "'foo'" in err
    code, _, err = run(capsys, "cp", str(store_path), str(store_path) + "2", "--src-option", "bar")
    assert code == 2 and "usage: ckptstore cp" in err


def test_a_mistyped_flag_prints_the_subcommands_usage(store_path, capsys):
    code, _, err = run(capsys, "ls", str(store_path), "--jsn")
    assert code == 2
    assert "usage: ckptstore ls" in err and "unrecognized arguments: --jsn" in err
    code, _, err = run(capsys, "gc", str(store_path), "--keep-lats", "2")
    assert code == 2 and "usage: ckptstore gc" in err


def test_output_into_a_closed_pipe_is_quiet(store_path):
    """`ckptstore ls STORE | head -0`: the reader is gone before we write; no BrokenPipeError."""
    p = subprocess.Popen([*_exe(), "ls", str(store_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # before the child has started up: its first write meets a closed pipe
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    assert p.returncode != 0  # like a tool killed by SIGPIPE; never a crash message


def test_every_subcommand_has_a_one_line_description():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert set(helps) == set(sub.choices)
    for name, sp in sub.choices.items():
        assert helps[name] and "\n" not in helps[name], name
        assert sp.description, f"`ckptstore {name} --help` has no description"
        assert sp.format_help().splitlines()[2].strip(), name  # the description follows the usage line


# -- warnings reach the user as one clean line -----------------------------------------------
def test_a_warning_is_one_clean_line_in_a_subprocess(store_path):
    manifest = sorted((store_path / "manifests").iterdir())[0]
    manifest.write_bytes(manifest.read_bytes()[:-5] + b"xxxxx")
    r = subprocess.run(
        [*_exe(), "cp", str(store_path), str(store_path) + "-copy", "--all"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.splitlines()
    assert any(ln.startswith("ckptstore: warning: skipping checkpoint at step 0") for ln in lines), r.stderr
    assert "UserWarning" not in r.stderr and ".py:" not in r.stderr and "warnings.warn" not in r.stderr
    assert len(lines) == len(set(lines)), "a message is shown once"


# -- verify reads the data by default ----------------------------------------------------------
def _flip_newest_own_object(store_path: Path) -> str:
    s = Store(store_path)
    newest = s.manifest()
    older = {k for i in s.list()[:-1] for k in s.manifest(id=i.id).objects}
    key = next(k for k in newest.objects if k not in older)
    p = store_path / "objects" / key[:2] / key
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))
    return key


def test_verify_reads_every_byte_by_default_and_says_so(store_path, capsys):
    code, out, _ = run(capsys, "verify", str(store_path))
    assert code == 0 and out.splitlines()[-1] == "checked 3 checkpoint(s) (structure and every byte): all ok"
    key = _flip_newest_own_object(store_path)
    code, out, _ = run(capsys, "verify", str(store_path))
    assert code == 1 and f"object {key} does not match its hash" in out
    assert out.splitlines()[-1] == "checked 3 checkpoint(s) (structure and every byte): 1 damaged"
    # the quick presence check is still there, behind a flag that says what it skips
    code, out, _ = run(capsys, "verify", str(store_path), "--quick")
    assert code == 0 and "(structure and object presence only; bytes not read)" in out
    # --read-data stays accepted (it is the default now)
    code, out, _ = run(capsys, "verify", str(store_path), "--read-data", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["read_data"] is True and not doc["ok"]
    code, _, err = run(capsys, "verify", str(store_path), "--quick", "--read-data")
    assert code == 2 and "usage: ckptstore verify" in err


# -- cp --all copies every healthy checkpoint ------------------------------------------------
def test_cp_all_copies_every_healthy_checkpoint_and_reports_the_damaged_one(store_path, tmp_path, capsys):
    key = _flip_newest_own_object(store_path)
    dst = tmp_path / "dst"
    code, out, err = run(capsys, "cp", str(store_path), str(dst), "--all")
    assert code == 1
    assert [i.step for i in Store(dst).list()] == [0, 10]
    assert "copied 2 checkpoint(s) (step 0, 10)" in out
    assert "step 20" in err and key in err and "not copied" in err
    for i in (0, 10):
        assert torch.equal(Store(dst).load(i)["model"]["w"], rand(300_000, i // 10))
    # a rerun sends nothing new and still reports the damage
    code, out, err = run(capsys, "cp", str(store_path), str(dst), "--all", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["copied"] == [] and [d["step"] for d in doc["damaged"]] == [20]


def test_cp_all_reports_a_damaged_manifest(store_path, tmp_path, capsys):
    manifest = sorted((store_path / "manifests").iterdir())[0]
    manifest.write_bytes(manifest.read_bytes()[:-5] + b"xxxxx")
    dst = tmp_path / "dst"
    code, out, err = run(capsys, "cp", str(store_path), str(dst), "--all")
    assert code == 1
    assert len(Store(dst).list()) == 2
    assert "ckptstore: warning: skipping checkpoint at step 0" in err


# -- gc names the metrics that exist ---------------------------------------------------------
def test_gc_keep_best_on_a_metric_no_checkpoint_has_is_an_error(store_path, capsys):
    code, out, err = run(capsys, "gc", str(store_path), "--keep-best", "nosuch:min", "--dry-run")
    assert code == 1 and out == ""
    one_clean_error(err)
    assert "nosuch" in err and "acc, loss" in err
    assert len(Store(store_path).list()) == 3
    code, out, _ = run(capsys, "gc", str(store_path), "--keep-best", "loss:min", "--dry-run")
    assert code == 0 and "would remove 2 checkpoint(s)" in out


# -- export: every file gets the same permissions ----------------------------------------------
def test_export_writes_every_file_with_the_same_permissions(store_path, tmp_path, capsys):
    dst = tmp_path / "out"
    code, out, _ = run(capsys, "export", str(store_path), str(dst))
    assert code == 0, out
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in dst.iterdir() if p.is_file()}
    assert "model.safetensors" in modes and len(modes) >= 2, modes
    assert len(set(modes.values())) == 1, modes
    umask = os.umask(0)
    os.umask(umask)
    assert modes["model.safetensors"] == 0o666 & ~umask


def test_export_names_the_cli_flag(store_path, tmp_path, capsys):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "x").write_text("x")
    code, _, err = run(capsys, "export", str(store_path), str(dst))
    assert code == 1
    one_clean_error(err)
    assert "--overwrite" in err and "overwrite=True" not in err


def test_a_damaged_newest_manifest_is_reported_once_in_one_wording(store_path, tmp_path, capsys):
    newest = sorted((store_path / "manifests").iterdir())[-1]
    data = bytearray(newest.read_bytes())
    data[50] ^= 1
    newest.write_bytes(bytes(data))
    code, out, err = run(capsys, "cp", str(store_path), str(tmp_path / "dst"))
    assert code == 0 and "copied 1 checkpoint(s) (step 10)" in out
    assert err.count("step 20") == 1, err
    assert err.startswith("ckptstore: warning: skipping checkpoint at step 20: manifest ")


@pytest.mark.parametrize("command", ["cp", "ls", "verify", "gc", "export", "diff", "dashboard"])
def test_an_unreachable_store_names_the_cli_flag_for_retries(store_path, tmp_path, capsys, command):
    """Every command that opens a store takes --retries (ls, verify... used to suggest retries=,
    which they had no flag for)."""
    import socket

    with socket.socket() as sk:  # a port nothing listens on
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    opts = [f"endpoint_url=http://127.0.0.1:{port}", "key=k", "secret=s"]
    if command == "cp":
        argv = ["cp", str(store_path), "s3://bucket/x", *(a for o in opts for a in ("--dst-option", o))]
    else:
        argv = [command, "s3://bucket/x", *(a for o in opts for a in ("-o", o))]
        argv += {
            "export": [str(tmp_path / "out")],
            "diff": ["1", "2"],
            "dashboard": ["--output", str(tmp_path / "d.html")],
        }.get(command, [])
    import gc
    import warnings

    with warnings.catch_warnings():  # earlier tests' unclosed event loops are not this command's
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    code, _, err = run(capsys, *argv, "--retries", "0")
    assert code == 1
    one_clean_error(err)
    assert "(after 0 retries)" in err and "--retries" in err and "retries=" not in err


def test_cp_copies_what_any_selector_selects(store_path, tmp_path, capsys):
    code, out, _ = run(capsys, "cp", str(store_path), str(tmp_path / "d"), "--step", "0", "--latest", "1")
    assert code == 0 and "copied 2 checkpoint(s) (step 0, 20)" in out
    assert [i.step for i in Store(tmp_path / "d").list()] == [0, 20]


def test_diff_of_pickled_values_names_the_flag(tmp_path, capsys):
    import collections

    root = tmp_path / "pk"
    for k in (1, 2):
        Store(root).save({"w": rand(4, k), "o": collections.Counter(a=k)}, step=k, allow_pickle=True)
    code, _, err = run(capsys, "diff", str(root), "1", "2")
    assert code == 1 and "(on the command line: --allow-pickle)" in err
    one_clean_error(err)
    code, out, _ = run(capsys, "diff", str(root), "1", "2", "--allow-pickle")
    assert code == 0 and "  o.a: 1 -> 2\n" in out
    # manifests only: a pickled value is compared by its bytes, never unpickled
    code, out, _ = run(capsys, "diff", str(root), "1", "2", "--no-load")
    assert code == 0 and "  o: <pickled value, " in out
    page = str(tmp_path / "page.html")
    code, _, err = run(capsys, "dashboard", str(root), "--output", page, "--compare", "1", "2")
    assert code == 1 and "(on the command line: --allow-pickle)" in err
    assert run(capsys, "dashboard", str(root), "--output", page, "--compare", "1", "2", "--allow-pickle")[0] == 0


# -- ls and du tell the truth about a damaged store ------------------------------------------
def test_ls_lists_the_healthy_checkpoints_and_exits_1_on_a_damaged_manifest(store_path, capsys):
    manifest = sorted((store_path / "manifests").iterdir())[1]
    data = bytearray(manifest.read_bytes())
    data[40] ^= 1
    manifest.write_bytes(bytes(data))
    code, out, err = run(capsys, "ls", str(store_path))
    assert code == 1
    assert [ln.split()[0] for ln in out.splitlines()[1:]] == ["0", "20"]
    assert err.count("\n") == 1 and err.startswith("ckptstore: warning: skipping checkpoint at step 10")
    code, out, _ = run(capsys, "ls", str(store_path), "--json")
    assert code == 1 and [r["step"] for r in json.loads(out)] == [0, 20]


def test_du_with_a_missing_object_reports_what_is_really_stored(store_path, capsys):
    s = Store(store_path)
    only_newest = [k for k in s.manifest().objects if k not in s.manifest(10).objects]
    key = max(only_newest, key=lambda k: s.manifest().objects[k].size)
    size = s.manifest().objects[key].size
    code, out, _ = run(capsys, "du", str(store_path), "--json")
    before = json.loads(out)
    (store_path / "objects" / key[:2] / key).unlink()
    code, out, err = run(capsys, "du", str(store_path), "--json")
    doc = json.loads(out)
    assert code == 1
    assert doc["stored_bytes"] == before["stored_bytes"] - size
    assert doc["referenced_objects"] == before["referenced_objects"] - 1
    assert doc["missing_objects"] == 1 and doc["missing_bytes"] == size
    assert any(key in p and "missing" in p for p in doc["problems"])
    code, out, err = run(capsys, "du", str(store_path))
    assert code == 1 and "missing" in err and key in err


def test_export_overwrite_never_replaces_the_store_or_a_folder_that_is_not_an_export(store_path, tmp_path, capsys):
    # the store's own folder, a folder that holds it, and a folder inside it are refused
    around = store_path.parent
    (around / "notes.txt").write_text("keep me")
    before = sorted(p.name for p in store_path.rglob("*"))
    for dst in (store_path, around, store_path / "manifests"):
        code, _, err = run(capsys, "export", str(store_path), str(dst), "--overwrite")
        assert code == 1, dst
        one_clean_error(err)
    assert (around / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in store_path.rglob("*")) == before
    assert Store(str(store_path)).list()
    # a non-empty folder that is not an earlier export is refused even with --overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "data.bin").write_bytes(b"x")
    code, _, err = run(capsys, "export", str(store_path), str(other), "--overwrite")
    assert code == 1 and "not an earlier export" in err
    assert (other / "data.bin").read_bytes() == b"x"
    # an earlier export is replaced
    out = tmp_path / "out"
    assert run(capsys, "export", str(store_path), str(out))[0] == 0
    (out / "stale.txt").write_text("old")
    code, out_text, _ = run(capsys, "export", str(store_path), str(out), "--overwrite")
    assert code == 0, out_text
    assert not (out / "stale.txt").exists() and (out / "checkpoint_info.json").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["show", "{store}", "--step", "10", "--id", "7ff"],
        ["cp", "{store}", "{tmp}/copy", "--retries", "-1"],
        ["gc", "{store}", "--keep-tag", "", "--dry-run"],
        ["ls", ""],
    ],
)
def test_arguments_the_library_refuses_are_one_clean_error(store_path, tmp_path, capsys, argv):
    code, _, err = run(capsys, *[a.format(store=store_path, tmp=tmp_path) for a in argv])
    assert code == 1
    one_clean_error(err)


@pytest.mark.parametrize("uri", ["s3://", "s3:///run", "gs://", "gcs:///a/b"])
def test_an_object_store_uri_without_a_bucket_says_so(capsys, uri):
    """``s3://`` used to fail, after retries, with botocore's ParamValidationError about a Key."""
    code, _, err = run(capsys, "ls", uri)
    assert code == 1
    one_clean_error(err)
    assert "names no bucket" in err and "://BUCKET/PATH" in err


def test_storage_libraries_warnings_are_one_line_each(store_path, capsys, monkeypatch):
    """gcsfs warns that it 'could not determine bucket type' on every gs:// command without
    credentials; it printed raw through Python's last-resort handler, between ckptstore's lines."""
    import logging

    from ckptstore.cli import _inspect

    real = _inspect.cmd_ls

    def noisy(args):
        logging.getLogger("gcsfs").warning("Could not determine bucket type for bucket name b: no credentials")
        logging.getLogger("gcsfs").warning("Could not determine bucket type for bucket name b: no credentials")
        return real(args)

    monkeypatch.setattr(_inspect, "cmd_ls", noisy)
    code, out, err = run(capsys, "ls", str(store_path))
    assert code == 0 and "step" in out
    assert err == "ckptstore: warning: Could not determine bucket type for bucket name b: no credentials\n"
    assert logging.getLogger("gcsfs").propagate and not logging.getLogger("gcsfs").handlers
