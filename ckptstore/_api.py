"""Module-level verbs: each opens a :class:`Store` and delegates to it."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from ._devices import MapLocation
from ._info import CheckpointInfo
from ._retention import Retention
from ._manifest import RngState
from ._store import Store

URI = "str | os.PathLike[str]"


def save(
    state: Any,
    uri: str | os.PathLike[str],
    *,
    step: int | None = None,
    epoch: int | None = None,
    config: Any = None,
    metrics: Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
    meta: Mapping[str, Any] | None = None,
    rng: "bool | RngState" = True,
    compression: str | bool | None = None,
    allow_pickle: bool = False,
    progress: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    keep: Retention | None = None,
) -> CheckpointInfo:
    """Save ``state`` as a new checkpoint in the store at ``uri`` (created if needed).

    Like ``torch.save(obj, f)``: the object comes first. Returns the committed checkpoint's
    :class:`CheckpointInfo`; when it returns, the checkpoint is durable.
    """
    with Store(uri, storage_options=storage_options) as store:
        return store.save(state, step=step, epoch=epoch, config=config, metrics=metrics, tags=tags, meta=meta,
                          rng=rng, compression=compression, allow_pickle=allow_pickle, progress=progress,
                          keep=keep)


def load(
    uri: str | os.PathLike[str],
    *,
    step: int | None = None,
    id: str | None = None,
    map_location: MapLocation = None,
    restore_rng: bool = False,
    allow_pickle: bool = False,
    verify: bool = True,
    progress: bool | None = None,
    storage_options: Mapping[str, Any] | None = None,
    mmap: bool | None = None,
    fallback: str | os.PathLike[str] | None = None,
    fallback_options: Mapping[str, Any] | None = None,
) -> Any:
    """Load a checkpoint's state (the newest unless ``step`` or ``id`` is given).

    With ``fallback`` (a backup store's URI), a primary that has no store or not that checkpoint
    is skipped and the checkpoint is loaded from the fallback, with a warning. ``verify`` and
    ``mmap``: see :meth:`Store.load`."""
    if fallback is not None:
        from ._backup import load_with_fallback

        return load_with_fallback(uri, fallback, step=step, id=id, storage_options=storage_options,
                                  fallback_options=fallback_options, map_location=map_location,
                                  restore_rng=restore_rng, allow_pickle=allow_pickle, verify=verify,
                                  progress=progress)
    with Store(uri, storage_options=storage_options) as store:
        return store.load(step, id=id, map_location=map_location, restore_rng=restore_rng,
                          allow_pickle=allow_pickle, verify=verify, progress=progress, mmap=mmap)


def list_checkpoints(uri: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
                     ) -> list[CheckpointInfo]:
    """Every committed checkpoint in the store, sorted by step."""
    with Store(uri, storage_options=storage_options) as store:
        return store.list()


def info(uri: str | os.PathLike[str], step: int | None = None, *, id: str | None = None,
         storage_options: Mapping[str, Any] | None = None) -> CheckpointInfo:
    """One checkpoint's record (the newest by default), without reading its tensors."""
    with Store(uri, storage_options=storage_options) as store:
        return store.info(step, id=id)
