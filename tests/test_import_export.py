"""``ckptstore import`` / ``export`` on files the real libraries wrote in the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore.cli import main

from ._fw_util import child_env


class Opaque:
    """Not plain data: a torch.save file holding this needs real unpickling."""

    def __init__(self, n: int = 1) -> None:
        self.n = n


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_core_import_does_not_load_frameworks() -> None:
    code = (
        "import sys, ckptstore, ckptstore.cli._main, ckptstore.interop._importer, ckptstore.adapters.interop; "
        "bad = [m for m in ('transformers', 'lightning', 'pytorch_lightning', 'peft') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_plain_torch_files_import_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(3, 4)).sum().backward()
    opt.step()
    old = tmp_path / "old_run"
    old.mkdir()
    torch.save(
        {
            "model_state_dict": net.state_dict(),
            "optimizer_state_dict": opt.state_dict(),
            "epoch": 3,
            "loss_history": [2.0, 1.5, 1.25],
            "val_loss": 1.2,
        },
        old / "checkpoint_step_4000.pt",
    )
    torch.save(net.state_dict(), old / "final_model.pt")
    torch.save({"model": net.state_dict()}, old / "ckpt_step_300.pt")

    assert main(["import", str(old), str(tmp_path / "store")]) == 0
    assert "final_model.pt records no step" in capsys.readouterr().err
    infos = ckptstore.list_checkpoints(tmp_path / "store")
    assert [(i.step, i.epoch, i.meta["name"]) for i in infos] == [
        (300, None, "ckpt_step_300.pt"),
        (4000, 3, "checkpoint_step_4000.pt"),
        (4001, None, "final_model.pt"),
    ]
    assert infos[1].metrics == {"val_loss": 1.2}
    state = ckptstore.load(tmp_path / "store", step=4000)  # the raw-loop Checkpointer's layout
    assert state["extra"] == {"loss_history": [2.0, 1.5, 1.25], "val_loss": 1.2}
    assert _equal(state["model"], net.state_dict())
    assert isinstance(state["optimizer"]["state"][0]["exp_avg"], torch.Tensor)

    assert main(["export", str(tmp_path / "store"), "--step", "4000", str(tmp_path / "exp")]) == 0
    assert sorted(os.listdir(tmp_path / "exp")) == ["checkpoint.pt", "checkpoint_info.json", "model.safetensors"]
    back = torch.load(tmp_path / "exp" / "checkpoint.pt", weights_only=True)  # the file's own keys again
    assert set(back) == {"model_state_dict", "optimizer_state_dict", "epoch", "loss_history", "val_loss"}
    assert back["epoch"] == 3 and _equal(back["model_state_dict"], net.state_dict())
    from safetensors.torch import load_file

    assert _equal(load_file(str(tmp_path / "exp" / "model.safetensors")), net.state_dict())
    net2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    net2.load_state_dict(load_file(str(tmp_path / "exp" / "model.safetensors")))
    capsys.readouterr()
    assert main(["export", str(tmp_path / "store"), str(tmp_path / "exp")]) == 1
    assert "exists and is not empty" in capsys.readouterr().err


def test_pickled_objects_need_the_explicit_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"step": 7, "w": torch.ones(3), "extra": Opaque(5)}, tmp_path / "custom.pt")
    assert main(["import", str(tmp_path / "custom.pt"), str(tmp_path / "store")]) == 1
    err = capsys.readouterr().err
    assert "test_import_export.Opaque" in err and "--allow-pickle" in err
    assert not (tmp_path / "store").exists()  # nothing was written

    assert main(["import", "--allow-pickle", str(tmp_path / "custom.pt"), str(tmp_path / "store")]) == 0
    with pytest.raises(ckptstore.PickleNotAllowedError):
        ckptstore.load(tmp_path / "store")
    state = ckptstore.load(tmp_path / "store", allow_pickle=True)
    assert state["extra"]["extra"].n == 5 and ckptstore.info(tmp_path / "store").step == 7
    assert main(["import", str(tmp_path / "missing.pt"), str(tmp_path / "store")]) == 1
    assert "missing.pt" in capsys.readouterr().err


def test_hf_checkpoint_folder_import_export_resume(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import GPT2LMHeadModel, Trainer, TrainingArguments

    from . import _hf_job

    def trainer(model: torch.nn.Module, out: Path) -> Trainer:
        args = TrainingArguments(
            output_dir=str(out),
            max_steps=6,
            save_steps=3,
            use_cpu=True,
            seed=0,
            per_device_train_batch_size=4,
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
            learning_rate=1e-3,
        )
        return Trainer(model=model, args=args, train_dataset=train)

    model, train, _ = _hf_job.build()
    trainer(model, tmp_path / "out").train()  # the library's own checkpoint-3/ and checkpoint-6/
    assert main(["import", str(tmp_path / "out"), str(tmp_path / "store")]) == 0
    infos = ckptstore.list_checkpoints(tmp_path / "store")
    assert [(i.step, i.epoch) for i in infos] == [(3, 0), (6, 0)]
    assert "loss" not in infos[0].metrics or isinstance(infos[0].metrics["loss"], float)
    files = ckptstore.load(tmp_path / "store", step=6)["files"]
    from safetensors.torch import load_file

    original = load_file(str(tmp_path / "out" / "checkpoint-6" / "model.safetensors"))
    assert _equal(files["model.safetensors"]["tensors"], original)
    assert files["optimizer.pt"]["kind"] == "torch" and "training_args.bin" not in files

    assert main(["export", str(tmp_path / "store"), "--step", "3", str(tmp_path / "exp")]) == 0
    loaded = GPT2LMHeadModel.from_pretrained(str(tmp_path / "exp"))  # a plain HF model folder too
    at3 = load_file(str(tmp_path / "out" / "checkpoint-3" / "model.safetensors"))
    assert torch.equal(loaded.transformer.wte.weight, at3["transformer.wte.weight"])
    loaded.save_pretrained(str(tmp_path / "pretrained"))  # a save_pretrained folder imports too
    assert main(["import", str(tmp_path / "pretrained"), str(tmp_path / "models")]) == 0
    assert main(["export", str(tmp_path / "models"), str(tmp_path / "models-out")]) == 0
    again = GPT2LMHeadModel.from_pretrained(str(tmp_path / "models-out"))
    assert torch.equal(again.transformer.h[0].mlp.c_fc.weight, loaded.transformer.h[0].mlp.c_fc.weight)

    fresh, _, _ = _hf_job.build()
    t = trainer(fresh, tmp_path / "out2")
    t.train(resume_from_checkpoint=str(tmp_path / "exp"))
    assert t.state.global_step == 6
    final = {k: v for k, v in fresh.state_dict().items() if k in original}
    assert _equal(final, original)  # resumed from the export, ended where the original run ended


def test_lightning_ckpt_import_resume_and_export(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from . import _lightning_job

    def fit(epochs: int, **kw: object) -> tuple[L.Trainer, L.LightningModule]:
        L.seed_everything(0, verbose=False)
        model = _lightning_job.module_class()()
        train, val = _lightning_job.data()
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            devices=1,
            default_root_dir=str(tmp_path),
            **kw,
        )  # type: ignore[arg-type]
        trainer.fit(model, train, val)
        return trainer, model

    ckdir = tmp_path / "ck"
    fit(2, callbacks=[ModelCheckpoint(dirpath=str(ckdir), save_last=True)])  # Lightning's own .ckpt files
    assert main(["import", str(ckdir / "last.ckpt"), str(tmp_path / "store")]) == 0
    info = ckptstore.info(tmp_path / "store")
    assert (info.step, info.epoch, info.meta["framework"]) == (16, 1, "lightning")
    original = torch.load(ckdir / "last.ckpt", weights_only=False)  # written by this test: trusted

    # resume from the store with the plugin: continues at step 16
    from ckptstore.adapters.lightning import CkptstoreCheckpointIO, CkptstoreModelCheckpoint

    L.seed_everything(0, verbose=False)
    model = _lightning_job.module_class()()
    train, val = _lightning_job.data()
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        plugins=[CkptstoreCheckpointIO(tmp_path / "store")],
        callbacks=[CkptstoreModelCheckpoint(dirpath=str(tmp_path / "ck2"), save_last=True)],
    )
    trainer.fit(model, train, val, ckpt_path="last")
    assert str(trainer.ckpt_path).startswith("ckptstore://") and trainer.global_step == 24

    # export the imported checkpoint: a .ckpt a stock Trainer resumes from, and safetensors weights
    assert main(["export", str(tmp_path / "store"), "--step", "16", str(tmp_path / "exp")]) == 0
    assert sorted(os.listdir(tmp_path / "exp")) == ["checkpoint_info.json", "last.ckpt", "model.safetensors"]
    from safetensors.torch import load_file

    assert _equal(load_file(str(tmp_path / "exp" / "model.safetensors")), dict(original["state_dict"]))
    # The hyper-parameters hold a pathlib.Path and a Namespace, exactly as in the file Lightning wrote,
    # so Lightning needs weights_only=False for this file just as for its own (the plugin does not).
    restored = _lightning_job.module_class().load_from_checkpoint(
        str(tmp_path / "exp" / "last.ckpt"), weights_only=False
    )
    assert _equal(dict(restored.state_dict()), dict(original["state_dict"]))
    L.seed_everything(0, verbose=False)
    again = _lightning_job.module_class()()
    t2 = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
    )
    t2.fit(again, train, val, ckpt_path=str(tmp_path / "exp" / "last.ckpt"), weights_only=False)
    assert t2.global_step == 24


def test_public_hf_folder_and_plain_value_helpers(tmp_path: Path) -> None:
    """The pieces the framework adapters use, through the public API only."""
    import argparse
    import json

    from safetensors.torch import load_file, save_file

    src = tmp_path / "checkpoint-12"
    src.mkdir()
    w = {"a.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(w, str(src / "model.safetensors"))
    torch.save({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]}, src / "optimizer.pt")
    (src / "trainer_state.json").write_text(
        json.dumps({"global_step": 12, "epoch": 1.5, "log_history": [{"step": 12, "loss": 0.5, "train_runtime": 3.0}]})
    )
    (src / "notes.txt").write_bytes(b"hello")
    torch.save({"obj": Opaque(2)}, src / "training_args.bin")
    with pytest.warns(UserWarning, match="training_args.bin was left out"):
        ckptstore.import_checkpoint(src, tmp_path / "warned")
    read = ckptstore.interop.read_hf_folder(src, leave_out=["training_args.bin"])
    assert (read.step, read.epoch, read.epoch_float, read.metrics, read.skipped) == (12, 1, 1.5, {"loss": 0.5}, [])
    ckptstore.save(read.state, tmp_path / "s", step=read.step)
    dest = tmp_path / "out" / "checkpoint-12"
    files = ckptstore.interop.write_hf_folder(ckptstore.load(tmp_path / "s"), dest)
    assert (
        sorted(files)
        == sorted(os.listdir(dest))
        == ["model.safetensors", "notes.txt", "optimizer.pt", "trainer_state.json"]
    )
    assert _equal(load_file(str(dest / "model.safetensors")), w) and (dest / "notes.txt").read_bytes() == b"hello"
    assert os.listdir(tmp_path / "out") == ["checkpoint-12"]  # no temporary folder left beside it
    (dest / "stale.txt").write_text("from an older write")  # an earlier folder is replaced whole
    ckptstore.interop.write_hf_folder(ckptstore.load(tmp_path / "s"), dest)
    assert not (dest / "stale.txt").exists() and (dest / "trainer_state.json").is_file()
    busy = tmp_path / "mine"  # a folder of other files is refused, and left as it was
    busy.mkdir()
    (busy / "keep.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a Hugging Face checkpoint folder"):
        ckptstore.interop.write_hf_folder(ckptstore.load(tmp_path / "s"), busy)
    assert os.listdir(busy) == ["keep.txt"]
    with pytest.raises(ckptstore.UnsupportedFormatError, match="not a Hugging Face checkpoint folder"):
        ckptstore.interop.write_hf_folder({"model": w}, tmp_path / "other")
    assert not (tmp_path / "other").exists()

    value = {"hp": argparse.Namespace(lr=0.1, out=Path("/x/y")), "n": [1, 2]}
    plain, fixes = ckptstore.interop.to_plain(value)
    assert plain == {"hp": {"lr": 0.1, "out": "/x/y"}, "n": [1, 2]} and json.dumps(fixes)
    back = ckptstore.interop.from_plain(plain, fixes)
    assert isinstance(back["hp"], argparse.Namespace) and back["hp"].out == Path("/x/y")


def test_importing_the_same_source_twice_is_a_no_op_that_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "old"
    src.mkdir()
    torch.save({"model": {"w": torch.arange(5.0)}, "step": 10}, src / "ckpt_step_10.pt")
    torch.save({"model": {"w": torch.arange(6.0)}, "step": 20}, src / "ckpt_step_20.pt")
    store = tmp_path / "store"
    assert main(["import", str(src), str(store)]) == 0
    first = capsys.readouterr().out.splitlines()
    assert len([ln for ln in first if ln.startswith("imported ")]) == 2
    files = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file() and "locks" not in p.parts)
    assert main(["import", str(src), str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not [ln for ln in out if ln.startswith("imported ")]
    assert len([ln for ln in out if ln.startswith("already imported")]) == 2 and "nothing written" in out[-1]
    assert [i.step for i in ckptstore.list_checkpoints(store)] == [10, 20]
    assert sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file() and "locks" not in p.parts) == files
    # the API returns the existing records
    again = ckptstore.interop.import_checkpoint(src / "ckpt_step_20.pt", store)
    assert [i.step for i in again] == [20] and len(ckptstore.list_checkpoints(store)) == 2
    # a changed file is a new source
    torch.save({"model": {"w": torch.arange(7.0)}, "step": 20}, src / "ckpt_step_20.pt")
    assert main(["import", str(src), str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([ln for ln in out if ln.startswith("already imported")]) == 1
    assert len([ln for ln in out if ln.startswith("imported ")]) == 1
    assert [i.step for i in ckptstore.list_checkpoints(store)] == [10, 20, 20]
