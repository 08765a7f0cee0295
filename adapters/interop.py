"""Bring framework checkpoint files into a store, and write stored checkpoints back out.

Kept for older code: these are ``ckptstore.import_checkpoint`` and ``ckptstore.export_checkpoint``.

>>> from ckptstore import export_checkpoint, import_checkpoint    # doctest: +SKIP
>>> import_checkpoint("out/checkpoint-500", "s3://bucket/run1")       # HF Trainer folder
>>> import_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt", "runs/exp")
>>> import_checkpoint("old_run/", "runs/exp")     # checkpoint_step_4000.pt, final_model.pt, ...
>>> export_checkpoint("runs/exp", "exported/", step=4000)

The same as ``ckptstore import SRC DST`` and ``ckptstore export URI --step N DST``.
"""

from ckptstore import export_checkpoint, import_checkpoint

__all__ = ["export_checkpoint", "import_checkpoint"]
