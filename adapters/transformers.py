"""Hugging Face ``Trainer`` checkpoints in a ckptstore store (``ckptstore.adapters.transformers``).

>>> from ckptstore.adapters.transformers import CkptstoreCallback          # doctest: +SKIP
>>> ckpt = CkptstoreCallback("s3://bucket/run1", keep_last=3)
>>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[ckpt])
>>> trainer.train(resume_from_checkpoint=ckpt.resume())   # None on the first run

Every ``checkpoint-N/`` folder the Trainer writes is read as soon as it is complete, committed to
the store (weights and optimizer state as tensors, ``trainer_state.json`` and configs as JSON,
``rng_state.pth``/``scheduler.pt`` converted without pickle, the training arguments as the
checkpoint's config) and then deleted, so the local disk holds at most one checkpoint.
``resume()`` writes the newest checkpoint that reads back whole into a fresh local folder and
returns its path for ``resume_from_checkpoint``; a checkpoint the Trainer was writing when the
process died is never used (``resume_from_store(uri, dest)`` does the same without a Trainer).
The store's retention replaces ``save_total_limit``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import warnings
from collections.abc import Mapping
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"ckptstore.adapters.transformers needs transformers: pip install 'ckptstore[hf]' ({e})") from e

import ckptstore

from ._resume import find_resumable

__all__ = ["CkptstoreCallback", "resume_from_store"]

log = logging.getLogger("ckptstore.adapters.transformers")
_CKPT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")
RESUME_DIR = ".ckptstore-resume"


def _metric_name(name: str) -> str:
    return name if name.startswith("eval_") else f"eval_{name}"


def resume_from_store(
    store: ckptstore.Store | str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    step: int | None = None,
    id: str | None = None,
    allow_pickle: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str | None:
    """Write a stored Trainer checkpoint into ``dest/checkpoint-N`` and return that path.

    Without ``step``/``id`` the newest checkpoint that reads back whole is used (a damaged newest
    one is skipped with a warning naming both). The folder appears complete or not at all.
    Returns None when the store holds no checkpoint yet.
    """
    s = store if isinstance(store, ckptstore.Store) else ckptstore.Store(store, storage_options=storage_options)
    try:
        found = find_resumable(s, step=step, id=id, map_location="cpu")
        if found is None:
            return None
        info, state = found
        final = os.path.join(os.fspath(dest), f"checkpoint-{info.step}")
        try:
            ckptstore.interop.write_hf_folder(_drop_stale_best_path(state), final, allow_pickle=allow_pickle)
        except ckptstore.UnsupportedFormatError as e:
            raise ckptstore.UnsupportedFormatError(
                f"checkpoint step {info.step} ({info.short_id}) in {s.uri}: {e}"
            ) from None
        log.info("ckptstore: resuming from step %d (%s) of %s via %s", info.step, info.short_id, s.uri, final)
        return final
    finally:
        if s is not store:
            s.close()


def _world() -> tuple[Any, int] | None:
    """(torch.distributed, this rank) when the Trainer runs in several processes, else None."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist, dist.get_rank()
    return None


def _drop_stale_best_path(state: Any) -> Any:
    """The best checkpoint's staging folder is gone (it lives in the store): say so in the state
    the Trainer reads, instead of letting it warn about a missing folder."""
    files = state.get("files") if isinstance(state, dict) else None
    entry = files.get("trainer_state.json") if isinstance(files, dict) else None
    if isinstance(entry, dict) and entry.get("kind") == "json":
        ts = entry.get("value")
        if isinstance(ts, dict) and ts.get("best_model_checkpoint") and not os.path.isdir(ts["best_model_checkpoint"]):
            entry["value"] = {**ts, "best_model_checkpoint": None}
    return state


class CkptstoreCallback(TrainerCallback):
    """Commit every checkpoint the Trainer writes to the store at ``uri``, then delete the folder.

    Retention (applied by the store after each commit): ``keep_last`` newest checkpoints,
    ``keep_best=(metric, "min" | "max"[, k])``, and checkpoints tagged ``keep_tags``. By default
    ``keep_last`` is ``args.save_total_limit``, and next to it ``keep_best`` follows
    ``args.metric_for_best_model``/``greater_is_better`` (``keep_best=False`` turns that off);
    ``retention=ckptstore.Retention(...)`` replaces all of it. With no limit at all, every
    checkpoint is kept.

    ``allow_pickle=True`` keeps files that are more than tensors and plain data (the pickled
    ``training_args.bin``) byte for byte; without it they are left out (the arguments are
    recorded as the checkpoint's JSON ``config`` instead) and nothing is ever unpickled.
    With ``args.load_best_model_at_end`` the best checkpoint's weights are loaded from the store
    when training ends. Single-process training (or rank 0 with a shared output folder).
    """

    def __init__(
        self,
        uri: ckptstore.Store | str | os.PathLike[str],
        *,
        keep_last: int | None = None,
        keep_best: Any = None,
        keep_tags: tuple[str, ...] | None = None,
        retention: Any = None,
        allow_pickle: bool = False,
        compression: str | bool | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(uri, ckptstore.Store) and (
            retention is not None or keep_last is not None or keep_best or keep_tags
        ):
            raise ValueError(
                "give the retention policy to the Store you pass (Store(uri, retention=...)), not to CkptstoreCallback"
            )
        self._uri = uri
        self._keep = {"keep_last": keep_last, "keep_best": keep_best, "keep_tags": keep_tags}
        self._retention = retention
        self.allow_pickle = allow_pickle
        self._compression = compression
        self._storage_options = dict(storage_options or {})
        self._args: Any = None
        self._store: ckptstore.Store | None = uri if isinstance(uri, ckptstore.Store) else None
        self._resume_dir: str | None = None
        #: the record of the last checkpoint committed by this callback
        self.last_saved: ckptstore.CheckpointInfo | None = None

    # -- the store --------------------------------------------------------------------------
    def _policy(self, args: Any) -> Any:
        if self._retention is not None:
            return self._retention
        keep_last, keep_best, keep_tags = self._keep["keep_last"], self._keep["keep_best"], self._keep["keep_tags"]
        if keep_last is None and args is not None and args.save_total_limit:
            keep_last = int(args.save_total_limit)
        if keep_best is True or (keep_best is None and keep_last is not None):
            # best-by-metric only next to a limit: alone it would remove every non-best checkpoint
            keep_best = None
            if args is not None and args.metric_for_best_model:
                greater = args.greater_is_better
                if greater is None:
                    greater = not args.metric_for_best_model.endswith("loss")
                keep_best = (_metric_name(args.metric_for_best_model), "max" if greater else "min")
        elif keep_best is False:
            keep_best = None
        if keep_last is None and keep_best is None and keep_tags is None:
            return None
        kw: dict[str, Any] = {"keep_last": keep_last, "keep_best": keep_best}
        if keep_tags is not None:
            kw["keep_tags"] = tuple(keep_tags)
        return ckptstore.Retention(**kw)

    @property
    def store(self) -> ckptstore.Store:
        """The store checkpoints go to (opened on first use)."""
        if self._store is None:
            kw: dict[str, Any] = {"compression": self._compression, "storage_options": self._storage_options}
            policy = self._policy(self._args)
            if policy is not None:
                kw["retention"] = policy
            self._store = ckptstore.Store(self._uri, **kw)  # type: ignore[arg-type]
        return self._store

    # -- resume -----------------------------------------------------------------------------
    def resume(
        self, *, step: int | None = None, id: str | None = None, dest: str | os.PathLike[str] | None = None
    ) -> str | None:
        """The path to pass as ``trainer.train(resume_from_checkpoint=...)``, or None when the store
        has no checkpoint. Call it after creating the Trainer (the folder goes under
        ``args.output_dir/.ckptstore-resume`` unless ``dest`` is given); it is deleted once
        the next checkpoint is committed, and when training ends."""
        if dest is None:
            if self._args is None:
                raise RuntimeError("create the Trainer with this callback first (or pass dest=)")
            dest = os.path.join(self._args.output_dir, RESUME_DIR)
        group = _world()
        if group is not None:  # several processes (DDP): all resume from the checkpoint rank 0 chose
            dist, rank = group
            if step is None and id is None:
                box: list[Any] = [None]
                if rank == 0:
                    found = find_resumable(self.store, map_location="cpu")
                    box[0] = None if found is None else found.info.id
                dist.broadcast_object_list(box, src=0)
                if box[0] is None:
                    return None
                id = box[0]
            # one writer per machine: the other processes of the node wait and share its folder
            path = None
            if int(os.environ.get("LOCAL_RANK", rank)) == 0:
                path = resume_from_store(self.store, dest, step=step, id=id, allow_pickle=self.allow_pickle)
            dist.barrier()
            if path is None:
                path = os.path.join(os.fspath(dest), f"checkpoint-{self.store.info(step, id=id).step}")
        else:
            path = resume_from_store(self.store, dest, step=step, id=id, allow_pickle=self.allow_pickle)
        if path is not None:
            self._resume_dir = os.fspath(dest)
        return path

    def _drop_resume_dir(self) -> None:
        if self._resume_dir is not None:
            shutil.rmtree(self._resume_dir, ignore_errors=True)
            self._resume_dir = None

    # -- Trainer events -----------------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._args = args
        if not isinstance(self._uri, ckptstore.Store):
            self._store = None  # reopen with the retention that follows from args
        if args.save_strategy in ("no", None) or str(args.save_strategy).endswith("NO"):
            warnings.warn(
                "CkptstoreCallback: save_strategy is 'no', so the Trainer writes no checkpoints to store",
                ckptstore.CkptstoreWarning,
                stacklevel=2,
            )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not os.path.isdir(args.output_dir):
            return
        stored = {i.step for i in self.store.list()} if self.store.exists() else set()
        for name in sorted(os.listdir(args.output_dir)):
            m = _CKPT_DIR_RE.match(name)
            path = os.path.join(args.output_dir, name)
            if not m or not os.path.isdir(path):
                continue
            if int(m.group(1)) in stored:
                shutil.rmtree(path, ignore_errors=True)  # committed; the process died before deleting it
            else:
                warnings.warn(
                    f"{path} was never committed to {self.store.uri} (a run was probably stopped while "
                    "writing it) and is not used. Delete it, or if it is complete and you want it, "
                    f"`ckptstore import {path} {self.store.uri}`",
                    ckptstore.CkptstoreWarning,
                    stacklevel=2,
                )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        group = _world()
        if group is not None:  # every process has written its files (rng_state_<rank>.pth) before rank 0 reads
            group[0].barrier()
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            warnings.warn(
                f"CkptstoreCallback: expected the Trainer's checkpoint at {folder}; nothing stored "
                "(hyperparameter-search runs are not supported)",
                ckptstore.CkptstoreWarning,
                stacklevel=2,
            )
            return
        self.last_saved = self._commit(folder, args, state)
        shutil.rmtree(folder, ignore_errors=True)
        self._drop_resume_dir()
        # The best checkpoint's folder no longer exists locally; the store keeps it and
        # on_train_end loads it when asked to. Keeps the Trainer from looking for the folder.
        state.best_model_checkpoint = None

    def _commit(self, folder: str, args: Any, state: Any) -> ckptstore.CheckpointInfo:
        leave_out = () if self.allow_pickle else ("training_args.bin",)  # the config holds the arguments
        read = ckptstore.interop.read_hf_folder(folder, allow_pickle=self.allow_pickle, leave_out=leave_out)
        for reason in read.skipped:
            warnings.warn(reason, ckptstore.CkptstoreWarning, stacklevel=3)
        meta: dict[str, Any] = {
            "framework": "transformers",
            "folder": os.path.basename(folder),
            "epoch_float": read.epoch_float,
            "skipped": read.skipped,
        }
        total = getattr(state, "max_steps", None)
        if isinstance(total, int) and total > 0:
            meta["total_steps"] = total
            meta["progress"] = round(min(1.0, state.global_step / total), 6)
        config = json.loads(args.to_json_string())
        info = self.store.save(
            read.state,
            step=int(state.global_step),
            epoch=read.epoch,
            metrics=read.metrics,
            config=config,
            meta=meta,
            allow_pickle=False,
        )
        log.info(
            "ckptstore: committed %s as step %d (%s), %d new bytes", folder, info.step, info.short_id, info.new_bytes
        )
        return info

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._drop_resume_dir()
        if not args.load_best_model_at_end or model is None or not state.is_world_process_zero:
            return
        best = self._best_checkpoint(args, state)
        if best is None:
            warnings.warn(
                f"no best checkpoint by {args.metric_for_best_model} in {self.store.uri}; keeping the final weights",
                ckptstore.CkptstoreWarning,
                stacklevel=2,
            )
            return
        _load_weights(model, self.store.load(id=best.id, map_location="cpu"))
        log.info("ckptstore: loaded the best model (step %d) from the store", best.step)

    def _best_checkpoint(self, args: Any, state: Any) -> ckptstore.CheckpointInfo | None:
        step = getattr(state, "best_global_step", None)  # transformers >= 4.5x records it
        if step:
            try:
                return self.store.info(int(step))
            except ckptstore.CheckpointNotFoundError:
                return None
        if not args.metric_for_best_model:
            return None
        name = _metric_name(args.metric_for_best_model)
        scored = [i for i in self.store.list() if name in i.metrics]
        pick = max if args.greater_is_better else min
        return pick(scored, key=lambda i: i.metrics[name]) if scored else None


def _load_weights(model: Any, tree: Mapping[str, Any]) -> None:
    """Load a stored checkpoint's model (or PEFT adapter) weights into ``model``."""
    adapter: dict[str, torch.Tensor] = {}
    full: dict[str, torch.Tensor] = {}
    for rel, e in tree["files"].items():
        name = rel.rsplit("/", 1)[-1]
        if e.get("kind") == "safetensors":
            tensors = e.get("tensors")
        elif e.get("kind") == "torch" and name.endswith(".bin"):
            tensors = e.get("value")
        else:
            continue
        if name.startswith("adapter_model") and isinstance(tensors, dict):
            adapter.update(tensors)
        elif name.startswith(("model", "pytorch_model")) and isinstance(tensors, dict):
            full.update(tensors)
    if adapter:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, adapter)
    elif full:
        model.load_state_dict(full, strict=False)
    else:
        warnings.warn(
            "the best checkpoint holds no model weights; keeping the final weights",
            ckptstore.CkptstoreWarning,
            stacklevel=3,
        )
