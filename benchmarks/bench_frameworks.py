"""What the framework adapters cost and save, on CPU with small GPT-2 models built from configs.

Usage: python benchmarks/bench_frameworks.py [DIR]  -> prints a table, writes JSON to
benchmarks/results/frameworks.json. Nothing is downloaded.

Rows:
- ``trainer's own save``: seconds the Trainer spends writing a ``checkpoint-N/`` folder.
- ``commit per save``: seconds CkptstoreCallback adds per checkpoint (read the folder, store it,
  delete it), median over the saves.
- bytes the Trainer alone leaves on disk vs. what the store holds, and the most local disk the
  callback run ever used for checkpoints.
- ``frozen`` / ``LoRA``: bytes each later checkpoint adds when most weights are frozen.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,  # noqa: E402
    TrainingArguments,
    set_seed,
)

import ckptstore  # noqa: E402
from ckptstore.adapters.transformers import CkptstoreCallback  # noqa: E402


def dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


class Data(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randint(0, 5000, (64, 32), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def model() -> GPT2LMHeadModel:
    set_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=5000, n_positions=64))


class Timing(TrainerCallback):
    """Time from the optimizer step of a saving step to on_save = the Trainer's own write (plus ours)."""

    def __init__(self, out: Path) -> None:
        self.out, self.t0, self.saves, self.peak = out, 0.0, [], 0

    def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
        self.t0 = time.perf_counter()

    def on_save(self, args, state, control, **kw):  # noqa: ANN001
        self.saves.append(time.perf_counter() - self.t0)
        self.peak = max(self.peak, dir_bytes(self.out))


def run(out: Path, store: Path | None, steps: int = 20, every: int = 5) -> dict:
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        save_steps=every,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=8,
        disable_tqdm=True,
        logging_steps=every,
    )
    timing = Timing(out)
    callbacks: list = [timing]
    ckpt = None
    if store is not None:
        ckpt = CkptstoreCallback(store)
        real = ckpt._commit
        ckpt.commit_times = []  # type: ignore[attr-defined]

        def timed(*a, **k):  # noqa: ANN002, ANN003
            t = time.perf_counter()
            r = real(*a, **k)
            ckpt.commit_times.append(time.perf_counter() - t)  # type: ignore[attr-defined]
            return r

        ckpt._commit = timed  # type: ignore[method-assign]
        callbacks.append(ckpt)  # after Timing: Timing sees the folder before the callback deletes it
    t = time.perf_counter()
    Trainer(model=model(), args=args, train_dataset=Data(), callbacks=callbacks).train()
    return {
        "total_s": time.perf_counter() - t,
        "save_s": timing.saves,
        "peak_disk": timing.peak,
        "left_on_disk": dir_bytes(out),
        "commit_s": getattr(ckpt, "commit_times", []),
    }


def frozen_growth(tmp: Path) -> dict:
    m = model()
    for name, p in m.named_parameters():
        p.requires_grad = name.startswith("transformer.ln_f")
    args = TrainingArguments(
        output_dir=str(tmp / "fz"),
        max_steps=9,
        save_steps=3,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=8,
        disable_tqdm=True,
    )
    Trainer(model=m, args=args, train_dataset=Data(), callbacks=[CkptstoreCallback(tmp / "fz-store")]).train()
    infos = ckptstore.list_checkpoints(tmp / "fz-store")
    out = {"frozen": [(i.step, i.size, i.new_bytes) for i in infos]}
    try:
        import peft

        lm = peft.get_peft_model(
            model(), peft.LoraConfig(r=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
        )
        args = TrainingArguments(
            output_dir=str(tmp / "lora"),
            max_steps=9,
            save_steps=3,
            use_cpu=True,
            report_to=[],
            per_device_train_batch_size=8,
            disable_tqdm=True,
        )
        Trainer(model=lm, args=args, train_dataset=Data(), callbacks=[CkptstoreCallback(tmp / "lora-store")]).train()
        out["lora"] = [(i.step, i.size, i.new_bytes) for i in ckptstore.list_checkpoints(tmp / "lora-store")]
    except ImportError:
        pass
    out["base_bytes"] = sum(p.numel() * p.element_size() for p in model().parameters())
    return out


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="ckptstore-bench-"))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    plain = run(root / "plain", None)
    stored = run(root / "with", root / "store")
    infos = ckptstore.list_checkpoints(root / "store")
    growth = frozen_growth(root)
    mib = 1 << 20
    rows = [
        ("trainer's own save, median s", f"{statistics.median(plain['save_s']):.3f}"),
        ("commit per save, median s (read + store + delete)", f"{statistics.median(stored['commit_s']):.3f}"),
        ("run total s (plain / with callback)", f"{plain['total_s']:.1f} / {stored['total_s']:.1f}"),
        ("checkpoint size MiB", f"{infos[-1].size / mib:.1f}"),
        (
            "left on local disk MiB (plain / with callback)",
            f"{plain['left_on_disk'] / mib:.1f} / {stored['left_on_disk'] / mib:.1f}",
        ),
        (
            "peak local checkpoint disk MiB (plain / with callback, at a save)",
            f"{plain['peak_disk'] / mib:.1f} / {stored['peak_disk'] / mib:.1f}",
        ),
        ("store size MiB (sum of new_bytes)", f"{sum(i.new_bytes for i in infos) / mib:.1f}"),
        (
            "frozen model: later checkpoint new / size KiB",
            f"{growth['frozen'][-1][2] / 1024:.0f} / {growth['frozen'][-1][1] / 1024:.0f}",
        ),
    ]
    if "lora" in growth:
        rows.append(
            (
                "LoRA: later checkpoint new KiB (base model KiB)",
                f"{growth['lora'][-1][2] / 1024:.0f} ({growth['base_bytes'] / 1024:.0f})",
            )
        )
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k.ljust(w)}  {v}")
    res = Path(__file__).resolve().parent / "results"
    res.mkdir(exist_ok=True)
    doc = {
        "plain": plain,
        "with_callback": stored,
        "checkpoints": [(i.step, i.size, i.new_bytes) for i in infos],
        "growth": growth,
        "torch_threads": torch.get_num_threads(),
    }
    (res / "frameworks.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
