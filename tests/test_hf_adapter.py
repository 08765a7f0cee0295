"""The Hugging Face Trainer adapter, on a tiny GPT-2 built from a config (nothing downloaded)."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

import ckptstore  # noqa: E402

from . import _hf_job  # noqa: E402
from ._fw_util import damage_newest, run_jobs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")

BASE = {"max_steps": 20, "save_steps": 4}


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted run, in this process: its store, output folder and final weights."""
    tmp = tmp_path_factory.mktemp("hf_ref")
    out = _hf_job.run({**BASE, "store": str(tmp / "store"), "output_dir": str(tmp / "out")})
    return {"store": tmp / "store", "out": tmp / "out", "weights": _weights(out["model"]), "run": out}


def test_every_checkpoint_lands_in_the_store_and_staging_is_removed(reference: dict) -> None:
    infos = ckptstore.list_checkpoints(reference["store"])
    assert [i.step for i in infos] == [4, 8, 12, 16, 20]
    assert not [p for p in reference["out"].iterdir() if p.name.startswith("checkpoint-")]
    assert "eval_loss" in infos[-1].metrics and "loss" in infos[-1].metrics
    assert infos[-1].epoch == 1 and infos[-1].meta["epoch_float"] == pytest.approx(20 / 12)
    assert infos[-1].config["max_steps"] == 20  # the training arguments, as JSON
    assert infos[-1].meta["total_steps"] == 20 and infos[1].meta["progress"] == 0.4

    state = ckptstore.load(reference["store"])  # no allow_pickle needed: nothing was pickled
    files = state["files"]
    assert files["model.safetensors"]["kind"] == "safetensors"
    opt = files["optimizer.pt"]
    assert opt["kind"] == "torch" and isinstance(opt["value"]["state"][0]["exp_avg"], torch.Tensor)
    assert files["trainer_state.json"]["kind"] == "json"
    assert files["trainer_state.json"]["value"]["global_step"] == 20
    assert files["rng_state.pth"]["kind"] == "torch"
    assert files["rng_state.pth"]["value"]["cpu"].dtype == torch.uint8
    assert files["scheduler.pt"]["value"]["last_epoch"] == 20
    assert "training_args.bin" not in files  # a real pickle: replaced by the JSON config
    final = files["model.safetensors"]["tensors"]
    assert _equal({k: final[k] for k in reference["weights"]}, reference["weights"])


@pytest.mark.slow
def test_sigkill_then_resume_from_store_equals_uninterrupted_run(reference: dict, tmp_path: Path) -> None:
    store, out = tmp_path / "store", tmp_path / "out"
    rc, stdout, _ = run_jobs(
        "_hf_job.py",
        [{**BASE, "store": str(store), "output_dir": str(out), "announce": True, "pause": 0.3}],
        tmp_path,
        kill_after="COMMITTED 12",
    )
    assert rc == -9, stdout
    killed_at = ckptstore.info(store).step
    assert 12 <= killed_at < 20

    # A second store in the same state whose newest checkpoint is damaged: resume must fall back.
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    bad = damage_newest(damaged)
    # A checkpoint folder the killed Trainer was still writing: it must not be resumed from.
    half = out / f"checkpoint-{killed_at + 4}"
    half.mkdir(exist_ok=True)
    (half / "model.safetensors").write_bytes(b"\x00" * 10)

    finals = [tmp_path / "final-a.safetensors", tmp_path / "final-b.safetensors"]
    rc, stdout, stderr = run_jobs(
        "_hf_job.py",
        [
            {**BASE, "store": str(store), "output_dir": str(out), "resume": True, "final": str(finals[0])},
            {
                **BASE,
                "store": str(damaged),
                "output_dir": str(tmp_path / "out2"),
                "resume": True,
                "final": str(finals[1]),
            },
        ],
        tmp_path,
    )
    assert rc == 0, stderr[-3000:]
    assert f"RESUMING {out}/.ckptstore-resume/checkpoint-{killed_at}" in stdout
    assert f"checkpoint-{killed_at + 4} was never committed" in stderr
    prev = [i for i in ckptstore.list_checkpoints(damaged) if i.step < bad.step][-1]
    assert f"step {bad.step} ({bad.short_id})" in stderr and "is damaged" in stderr
    assert f"Resuming from step {prev.step} ({prev.short_id}) instead" in stderr
    assert f"RESUMING {tmp_path / 'out2'}/.ckptstore-resume/checkpoint-{prev.step}" in stdout

    from safetensors.torch import load_file

    for f in finals:
        assert _equal(load_file(str(f)), reference["weights"]), f"{f.name} differs from the uninterrupted run"
    assert [i.step for i in ckptstore.list_checkpoints(store)][-1] == 20
    # the resume folder and every staging folder are gone once training ends
    assert sorted(p.name for p in out.iterdir()) == []


def test_resume_returns_none_on_empty_store_and_folder_is_atomic(tmp_path: Path, reference: dict) -> None:
    from ckptstore.adapters.transformers import resume_from_store

    assert resume_from_store(tmp_path / "nothing", tmp_path / "dest") is None
    path = resume_from_store(reference["store"], tmp_path / "dest", step=8)
    assert path == str(tmp_path / "dest" / "checkpoint-8")
    names = sorted(os.listdir(path))
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
    ]
    assert sorted(os.listdir(tmp_path / "dest")) == ["checkpoint-8"]  # no temporary folder left
    # the files are what the Trainer reads: plain torch.load(weights_only=True) works
    opt = torch.load(os.path.join(path, "optimizer.pt"), weights_only=True)
    assert opt["state"][0]["step"].item() == 8


def test_epoch_strategy_best_model_at_end(tmp_path: Path) -> None:
    job = {
        "store": str(tmp_path / "store"),
        "output_dir": str(tmp_path / "out"),
        "strategy": "epoch",
        "epochs": 3,
        "metric": "eval_loss",
        "best_at_end": True,
    }
    out = _hf_job.run(job)
    state = out["trainer"].state
    infos = ckptstore.list_checkpoints(tmp_path / "store")
    assert [i.step for i in infos] == [12, 24, 36] and [i.epoch for i in infos] == [1, 2, 3]
    best = min(infos, key=lambda i: i.metrics["eval_loss"])
    assert state.best_global_step == best.step
    stored = ckptstore.load(tmp_path / "store", step=best.step)["files"]["model.safetensors"]["tensors"]
    weights = _weights(out["model"])
    assert _equal({k: stored[k] for k in weights}, weights)  # the best weights were loaded at the end
    assert not (tmp_path / "out" / ".ckptstore-resume").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith("checkpoint-")]


def test_store_retention_replaces_save_total_limit(tmp_path: Path) -> None:
    job = {
        "store": str(tmp_path / "store"),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 20,
        "save_steps": 4,
        "metric": "eval_loss",
        "save_total_limit": 2,
    }
    _hf_job.run(job)
    infos = ckptstore.list_checkpoints(tmp_path / "store")
    every = {4, 8, 12, 16, 20}
    kept = {i.step for i in infos}
    assert {16, 20} <= kept < every
    best = min(infos, key=lambda i: i.metrics["eval_loss"])
    assert kept <= {16, 20, best.step}


def test_training_args_pickle_kept_only_with_opt_in(tmp_path: Path) -> None:
    job = {
        "store": str(tmp_path / "store"),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        "save_steps": 2,
        "callback": {"allow_pickle": True},
    }
    _hf_job.run(job)
    files = ckptstore.load(tmp_path / "store")["files"]
    assert files["training_args.bin"]["kind"] == "pickle"
    raw = files["training_args.bin"]["data"].numpy().tobytes()
    assert raw[:2] == b"PK"  # the torch.save zip, byte for byte; never unpickled by ckptstore
    from ckptstore.adapters.transformers import resume_from_store

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = resume_from_store(tmp_path / "store", tmp_path / "r1")
    assert not os.path.exists(os.path.join(path, "training_args.bin"))
    assert any("allow_pickle=True" in str(w.message) for w in caught)
    path = resume_from_store(tmp_path / "store", tmp_path / "r2", allow_pickle=True)
    assert Path(path, "training_args.bin").read_bytes() == raw


def test_frozen_weights_cost_nothing_after_first_checkpoint(tmp_path: Path) -> None:
    from transformers import Trainer, TrainingArguments

    from ckptstore.adapters.transformers import CkptstoreCallback

    model, train, _ = _hf_job.build()
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("transformer.ln_f")
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        save_steps=2,
        use_cpu=True,
        per_device_train_batch_size=4,
        report_to=[],
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=train, callbacks=[CkptstoreCallback(tmp_path / "store")]).train()
    first, second = ckptstore.list_checkpoints(tmp_path / "store")
    assert second.size == first.size > 600_000
    assert second.new_bytes < 0.02 * second.size, (first.new_bytes, second.new_bytes, second.size)


def test_peft_lora_adapter_only_and_resume(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import Trainer, TrainingArguments

    from ckptstore.adapters.transformers import CkptstoreCallback

    base, train, _ = _hf_job.build()
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    )

    def trainer(m: torch.nn.Module, steps: int) -> tuple[Trainer, CkptstoreCallback]:
        cb = CkptstoreCallback(tmp_path / "store")
        args = TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=steps,
            save_steps=2,
            use_cpu=True,
            per_device_train_batch_size=4,
            report_to=[],
            disable_tqdm=True,
            seed=0,
        )
        return Trainer(model=m, args=args, train_dataset=train, callbacks=[cb]), cb

    t, _ = trainer(model, 4)
    t.train()
    infos = ckptstore.list_checkpoints(tmp_path / "store")
    files = ckptstore.load(tmp_path / "store")["files"]
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    assert infos[-1].new_bytes < 0.2 * base_bytes  # the frozen base is never stored again

    base2, _, _ = _hf_job.build(seed=0)
    model2 = peft.get_peft_model(
        base2, peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
    )
    t2, cb2 = trainer(model2, 6)
    t2.train(resume_from_checkpoint=cb2.resume())
    assert t2.state.global_step == 6
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path / "store")] == [2, 4, 6]


def test_store_at_a_non_local_uri(tmp_path: Path) -> None:
    """Any fsspec URI works; resume writes the checkpoint into a local folder for the Trainer."""
    uri = f"memory://hf-{os.getpid()}-{tmp_path.name}"
    out = _hf_job.run({"store": uri, "output_dir": str(tmp_path / "out"), "max_steps": 4, "save_steps": 2})
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [2, 4]
    again = _hf_job.run(
        {"store": uri, "output_dir": str(tmp_path / "out"), "max_steps": 6, "save_steps": 2, "resume": True}
    )
    assert again["resume"] == str(tmp_path / "out" / ".ckptstore-resume" / "checkpoint-4")
    assert again["global_step"] == 6 and out["global_step"] == 4
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [2, 4, 6]
    assert not (tmp_path / "out" / ".ckptstore-resume").exists()
