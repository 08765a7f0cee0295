"""Train a tiny LightningModule with the store plugin (run by tests/test_lightning_adapter.py).

Usage: python _lightning_job.py JOB.json   (a list of runs; see run()). Prints
"COMMITTED <step> <name>" after each checkpoint is in the store when "announce" is set.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time


def module_class():
    import lightning as L
    import torch

    class Tiny(L.LightningModule):
        def __init__(
            self,
            lr: float = 0.01,
            hidden: int = 16,
            data_dir: pathlib.Path = pathlib.Path("/data"),
            opts: argparse.Namespace | None = None,
        ) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, hidden), torch.nn.Tanh(), torch.nn.Dropout(0.1), torch.nn.Linear(hidden, 1)
            )

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)}

    return Tiny


def data():
    import torch

    g = torch.Generator().manual_seed(3)
    x = torch.randn(80, 8, generator=g)
    y = x @ torch.linspace(-1, 1, 8, dtype=x.dtype).unsqueeze(1)
    train = torch.utils.data.TensorDataset(x[:64], y[:64])
    val = torch.utils.data.TensorDataset(x[64:], y[64:])
    return (
        torch.utils.data.DataLoader(train, batch_size=8, shuffle=True),
        torch.utils.data.DataLoader(val, batch_size=16),
    )


def run(job: dict) -> dict:
    """job: store, dir, epochs, ckpt_path (None | "last" | a path), announce, final (path or None),
    plain (use the stock ModelCheckpoint). Restores the torch switches Trainer(deterministic=True) flips."""
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        return _run(job)
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _run(job: dict) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from ckptstore.adapters.lightning import CkptstoreCheckpointIO, CkptstoreModelCheckpoint

    class LoudIO(CkptstoreCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            super().save_checkpoint(checkpoint, path, storage_options)
            if job.get("announce"):
                print(f"COMMITTED {checkpoint['global_step']} {os.path.basename(path)}", flush=True)
                time.sleep(job.get("pause", 0))  # lets the test's SIGKILL land mid-run on a loaded machine

    L.seed_everything(0, verbose=False)
    model = module_class()(opts=argparse.Namespace(depth=2, name="tiny"))
    train, val = data()
    io = LoudIO(job["store"])
    kw = {} if job.get("plain") else {"restore_rng": job.get("restore_rng", True)}
    cls = ModelCheckpoint if job.get("plain") else CkptstoreModelCheckpoint
    ckpt = cls(dirpath=os.path.join(job["dir"], "checkpoints"), monitor="val_loss", save_top_k=2, save_last=True, **kw)
    trainer = L.Trainer(
        max_epochs=job.get("epochs", 6),
        plugins=[io],
        callbacks=[ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        accelerator="cpu",
        devices=job.get("devices", 1),  # 2 under torchrun: DDP on gloo
        **({"strategy": job["strategy"]} if job.get("strategy") else {}),
        default_root_dir=job["dir"],
    )
    trainer.fit(model, train, val, ckpt_path=job.get("ckpt_path"))
    print(f"RESUMED_FROM {trainer.ckpt_path}", flush=True)
    if job.get("final"):
        from safetensors.torch import save_file

        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, job["final"])
    return {"model": model, "trainer": trainer, "callback": ckpt, "io": io}


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        out = run(job)
        print(f"DONE {out['trainer'].global_step}", flush=True)
