"""Train a tiny GPT-2 with the Trainer and CkptstoreCallback (run by tests/test_hf_adapter.py).

Usage: python _hf_job.py JOB.json   where JOB.json is a list of runs, each
{"store": uri, "output_dir": path, "resume": bool, "final": path-or-null, "max_steps": int,
 "save_steps": int, "announce": bool}
Prints "COMMITTED <step>" after each checkpoint is in the store (when announce is true).
Kept importable: the test process calls run() directly for the uninterrupted reference run.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build(seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, set_seed

    set_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=32))

    class DS(torch.utils.data.Dataset):
        def __init__(self, n: int, seed: int) -> None:
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randint(0, 1000, (n, 16), generator=g)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int):
            return {"input_ids": self.x[i], "labels": self.x[i]}

    return model, DS(48, 1), DS(8, 2)


def run(job: dict) -> dict:
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        return _run(job)
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.set_num_threads(before[1])


def _run(job: dict) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from ckptstore.adapters.transformers import CkptstoreCallback

    model, train, evaluation = build()
    strategy = job.get("strategy", "steps")
    args = TrainingArguments(
        output_dir=job["output_dir"],
        max_steps=job.get("max_steps", -1),
        num_train_epochs=job.get("epochs", 3),
        save_strategy=strategy,
        save_steps=job.get("save_steps", 4),
        eval_strategy=strategy,
        eval_steps=job.get("save_steps", 4),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        report_to=[],
        logging_steps=2,
        learning_rate=1e-3,
        warmup_steps=3,
        lr_scheduler_type="linear",
        disable_tqdm=True,
        metric_for_best_model=job.get("metric"),
        load_best_model_at_end=bool(job.get("best_at_end")),
        save_total_limit=job.get("save_total_limit"),
    )
    ckpt = CkptstoreCallback(job["store"], **job.get("callback", {}))

    class Announce(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if job.get("announce"):
                print(f"COMMITTED {ckpt.last_saved.step}", flush=True)
                time.sleep(job.get("pause", 0))  # lets the test's SIGKILL land mid-run even on a loaded machine

    trainer = Trainer(
        model=model, args=args, train_dataset=train, eval_dataset=evaluation, callbacks=[ckpt, Announce()]
    )
    resume = ckpt.resume() if job.get("resume") else None
    print(f"RESUMING {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    if job.get("final"):
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
            job["final"],
        )
    return {"resume": resume, "global_step": trainer.state.global_step, "model": model, "trainer": trainer}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        out = run(job)
        print(f"DONE {out['global_step']} resumed_from={out['resume']}", flush=True)
