"""PyTorch Lightning checkpoints in a ckptstore store (``ckptstore.adapters.lightning``).

>>> from ckptstore.adapters.lightning import CkptstoreCheckpointIO, CkptstoreModelCheckpoint  # doctest: +SKIP
>>> trainer = L.Trainer(plugins=[CkptstoreCheckpointIO("s3://bucket/run1")],
...                     callbacks=[CkptstoreModelCheckpoint(monitor="val_loss", save_top_k=3, save_last=True)])
>>> trainer.fit(model, ckpt_path="last")   # the newest checkpoint in the store; from scratch if none

``CkptstoreCheckpointIO`` receives every save, load and remove the Trainer makes. Each save becomes
one checkpoint in the store, named by the path Lightning gave it; saving to a path again replaces
what was there, and ``ModelCheckpoint``'s removals forget that checkpoint (data that other
checkpoints share stays). Nothing is written to the checkpoint folder on disk.

Lightning resolves ``ckpt_path="last"`` by listing files on disk, so with a store-only plugin
the stock ``ModelCheckpoint`` finds nothing and training silently starts over.
``CkptstoreModelCheckpoint`` (a ``ModelCheckpoint`` with the same arguments) answers that
question from the store instead: "last" is the newest checkpoint that reads back whole (a
damaged newest one is skipped with a warning). Explicit paths (``ckpt_path=".../epoch=3-step=96.ckpt"``)
resolve by the recorded path, then by file name; an existing local file is loaded as usual.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

import fsspec
from fsspec.spec import AbstractFileSystem

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import ModelCheckpoint
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"ckptstore.adapters.lightning needs lightning: pip install 'ckptstore[lightning]' ({e})") from e

import ckptstore

from ._resume import find_resumable

__all__ = ["CkptstoreCheckpointIO", "CkptstoreModelCheckpoint"]

log = logging.getLogger("ckptstore.adapters.lightning")
PROTOCOL = "ckptstore"


class _ResolvedFS(AbstractFileSystem):
    """Just enough of a filesystem for Lightning to accept a ``ckptstore://<id>/<name>`` path that
    a store resolved for ``ckpt_path="last"`` (it checks ``exists`` and ``modified``)."""

    protocol = PROTOCOL
    known: ClassVar[dict[str, datetime]] = {}

    def _id(self, path: str) -> str:
        return self._strip_protocol(str(path)).split("/", 1)[0]

    def exists(self, path: str, **kwargs: Any) -> bool:
        return self._id(path) in self.known

    def modified(self, path: str) -> datetime:
        return self.known[self._id(path)]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        if not self.exists(path):
            raise FileNotFoundError(path)
        return {"name": path, "size": 0, "type": "file"}


fsspec.register_implementation(PROTOCOL, _ResolvedFS, clobber=True)


def _metrics(checkpoint: Mapping[str, Any]) -> dict[str, float]:
    """The monitored value of each ModelCheckpoint at this save, e.g. {"val_loss": 0.12}."""
    out: dict[str, float] = {}
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("monitor"), str):
            score = state.get("current_score")
            try:
                if score is not None:
                    out[state["monitor"]] = float(score)
            except (TypeError, ValueError, RuntimeError):
                continue
    return out


class CkptstoreCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that keeps every checkpoint in the store at ``uri``.

    The checkpoint dict is stored without pickle: tensors as tensors, loops and callback states
    as JSON; ``hyper_parameters`` holding an ``AttributeDict``, ``Namespace``, paths or OmegaConf
    containers are stored as plain values and turned back into those types on load. Anything else
    that is not plain data is refused with a message, unless ``allow_pickle=True``.
    ``retention`` (a ``ckptstore.Retention``) is off by default: ``ModelCheckpoint`` decides what
    to keep, and its removals are honoured.
    """

    def __init__(
        self,
        uri: ckptstore.Store | str | os.PathLike[str],
        *,
        allow_pickle: bool = False,
        retention: Any = None,
        compression: str | bool | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(uri, ckptstore.Store):
            if retention is not None:
                raise ValueError("give the retention policy to the Store you pass, not to CkptstoreCheckpointIO")
            self._store: ckptstore.Store | None = uri
        else:
            kw: dict[str, Any] = {"compression": compression, "storage_options": dict(storage_options or {})}
            if retention is not None:
                kw["retention"] = retention
            self._store = ckptstore.Store(uri, **kw)
        self.allow_pickle = allow_pickle
        self._verified: dict[str, Any] = {}
        self._loaded_once = False
        self._warned_fresh = False
        #: RNG states recorded with the checkpoint last loaded (CkptstoreModelCheckpoint applies them)
        self.pending_rng: Any = None
        #: the run's total optimizer steps when known (set by CkptstoreModelCheckpoint), for progress
        self.total_steps: int | None = None
        #: the record of the last checkpoint this plugin committed
        self.last_saved: ckptstore.CheckpointInfo | None = None

    @property
    def store(self) -> ckptstore.Store:
        assert self._store is not None
        return self._store

    # -- lookups ------------------------------------------------------------------------------
    def _named(self, path: str) -> list[ckptstore.CheckpointInfo]:
        """Checkpoints saved under ``path`` (exact, then absolute), oldest first."""
        if not self.store.exists():
            return []
        infos = [i for i in self.store.list() if i.meta.get("framework") == "lightning"]
        exact = [i for i in infos if i.meta.get("path") == path]
        if exact or "://" in path:
            return exact
        absolute = os.path.abspath(path)
        return [i for i in infos if os.path.abspath(str(i.meta.get("path"))) == absolute]

    def resolve(self, path: str | os.PathLike[str]) -> ckptstore.CheckpointInfo:
        """The stored checkpoint a Lightning path means: a ``ckptstore://<id>/...`` path, a path
        saved earlier (the newest save under it), or failing that the newest with that file name."""
        p = os.fspath(path)
        if p.startswith(f"{PROTOCOL}://"):
            return self.store.info(id=p[len(PROTOCOL) + 3 :].split("/", 1)[0])
        named = self._named(p)
        if not named:
            base = os.path.basename(p)
            named = [i for i in self.store.list() if i.meta.get("name") == base] if self.store.exists() else []
        if not named:
            have = sorted({str(i.meta.get("name")) for i in self.store.list()}) if self.store.exists() else []
            raise ckptstore.CheckpointNotFoundError(
                f"no checkpoint saved as {p!r} in {self.store.uri} and no such local file "
                f"(the store has: {', '.join(have[-10:]) or 'nothing'})"
            )
        return max(named, key=lambda i: (i.created_at, i.id))

    def last_path(self) -> str | None:
        """A path for ``fit(ckpt_path=...)`` naming the newest checkpoint that reads back whole
        (it is read and verified now, and kept for the load that follows), or None."""
        found = find_resumable(self.store, map_location="cpu", allow_pickle=self.allow_pickle)
        if found is None:
            return None
        info, state = found
        self._verified = {info.id: state}
        _ResolvedFS.known[info.id] = info.created_at.astimezone(timezone.utc)
        return f"{PROTOCOL}://{info.id}/{info.meta.get('name') or 'checkpoint.ckpt'}"

    # -- CheckpointIO ---------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        p = os.fspath(path)
        if not self._loaded_once and not self._warned_fresh:
            self._warned_fresh = True
            latest = self.store.latest() if self.store.exists() else None
            if latest is not None and int(checkpoint.get("global_step") or 0) <= latest.step:
                warnings.warn(
                    f"{self.store.uri} already holds checkpoints up to step {latest.step}, but this run did not "
                    "resume from it. To continue, use CkptstoreModelCheckpoint and fit(ckpt_path='last').",
                    ckptstore.CkptstoreWarning,
                    stacklevel=2,
                )
        plain, fixes = ckptstore.interop.to_plain(checkpoint)
        step = checkpoint.get("global_step")
        epoch = checkpoint.get("epoch")
        meta = {
            "framework": "lightning",
            "path": p,
            "name": os.path.basename(p),
            "plain_fixes": fixes,
            "lightning": checkpoint.get("pytorch-lightning_version"),
        }
        if self.total_steps and isinstance(step, int):
            meta["total_steps"] = self.total_steps
            meta["progress"] = round(min(1.0, step / self.total_steps), 6)
        info = self.store.save(
            plain,
            step=int(step) if isinstance(step, int) else None,
            epoch=int(epoch) if isinstance(epoch, int) else None,
            metrics=_metrics(checkpoint),
            meta=meta,
            allow_pickle=self.allow_pickle,
        )
        for old in self._named(p):  # saving to a path replaces what was saved there
            if old.id != info.id:
                self.store.forget(id=old.id)
        self.last_saved = info
        log.info("ckptstore: committed %s as step %s (%s), %d new bytes", p, info.step, info.short_id, info.new_bytes)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        p = os.fspath(path)
        self._loaded_once = True
        self.pending_rng = None
        if not p.startswith(f"{PROTOCOL}://") and not self._named(p) and os.path.isfile(p):
            from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

            log.info("ckptstore: %s is not in the store; loading the local file", p)
            return TorchCheckpointIO().load_checkpoint(p, map_location=map_location, weights_only=weights_only)
        info = self.resolve(p)
        state = self._verified.pop(info.id, None)
        if state is None:
            state = self.store.load(id=info.id, map_location=map_location or "cpu", allow_pickle=self.allow_pickle)
        self.pending_rng = info.rng
        log.info("ckptstore: loaded step %d (%s) from %s", info.step, info.short_id, self.store.uri)
        return ckptstore.interop.from_plain(state, info.meta.get("plain_fixes") or [])

    def remove_checkpoint(self, path: Any) -> None:
        for info in self._named(os.fspath(path)):
            self.store.forget(id=info.id)

    def teardown(self) -> None:
        self._verified.clear()
        self.pending_rng = None


def _store_io(trainer: Any) -> CkptstoreCheckpointIO:
    io = trainer.strategy.checkpoint_io
    seen = 0
    while not isinstance(io, CkptstoreCheckpointIO) and hasattr(io, "checkpoint_io") and seen < 5:
        io, seen = io.checkpoint_io, seen + 1
    if not isinstance(io, CkptstoreCheckpointIO):
        raise ValueError(
            "CkptstoreModelCheckpoint needs the store plugin: "
            "L.Trainer(plugins=[CkptstoreCheckpointIO(uri)], callbacks=[CkptstoreModelCheckpoint(...)])"
        )
    return io


class CkptstoreModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments, same top-k / last behaviour) whose ``ckpt_path="last"``
    is the newest checkpoint in the store of the Trainer's ``CkptstoreCheckpointIO``.

    Lightning does not checkpoint random-number generators; the store records them with every
    checkpoint, and with ``restore_rng=True`` (the default) ``fit`` restores them as it resumes, so
    shuffling and dropout continue as if the run had never stopped (exactly so for checkpoints
    written at the end of an epoch; Lightning itself cannot resume mid-epoch reproducibly). With
    several processes (DDP) they are not restored: the store records rank 0's states only.
    """

    def __init__(self, *args: Any, restore_rng: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.restore_rng = restore_rng

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        _store_io(trainer)
        super().setup(trainer, pl_module, stage)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.estimated_stepping_batches
        known = isinstance(total, (int, float)) and math.isfinite(total)
        _store_io(trainer).total_steps = int(total) if known else None

    def _find_last_checkpoints(self, trainer: Any) -> set[str]:
        path = _store_io(trainer).last_path()
        return {path} if path else set()

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # Runs right after the checkpoint is read, before the fit loop creates its first data
        # iterator (Lightning's sanity check runs with its own isolated RNG).
        io = _store_io(trainer)
        rng, io.pending_rng = io.pending_rng, None
        fitting = getattr(trainer.state.fn, "value", trainer.state.fn) == "fit"
        if self.restore_rng and rng is not None and fitting:
            if trainer.world_size == 1:
                ckptstore.restore_rng(rng)
            else:  # the states were captured on rank 0 only; giving them to every rank would be wrong
                log.info("ckptstore: RNG states not restored (%d processes)", trainer.world_size)
