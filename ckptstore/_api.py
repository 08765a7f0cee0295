"""Module-level verbs: each opens a :class:`Store` and delegates to it."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Union

from ._errors import BackupWarning, CheckpointNotFoundError, StoreNotFoundError
from .format._info import CheckpointInfo
from .format._manifest import RngState
from .pipeline._devices import MapLocation
from .store._copy import CopyResult
from .store._retention import Retention
from .store._store import Store

log = logging.getLogger("ckptstore")

StoreLike = Union[Store, str, "os.PathLike[str]"]


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
    rng: bool | RngState = True,
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
        return store.save(
            state,
            step=step,
            epoch=epoch,
            config=config,
            metrics=metrics,
            tags=tags,
            meta=meta,
            rng=rng,
            compression=compression,
            allow_pickle=allow_pickle,
            progress=progress,
            keep=keep,
        )


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
    kw: dict[str, Any] = dict(
        map_location=map_location,
        restore_rng=restore_rng,
        allow_pickle=allow_pickle,
        verify=verify,
        progress=progress,
        mmap=mmap,
    )
    if fallback is None:
        with Store(uri, storage_options=storage_options) as store:
            return store.load(step, id=id, **kw)
    try:
        with Store(uri, storage_options=storage_options) as store:
            return store.load(step, id=id, **kw)
    except (StoreNotFoundError, CheckpointNotFoundError) as e:
        reason = e
    with Store(fallback, storage_options=fallback_options) as store:
        state = store.load(step, id=id, **kw)
    msg = f"loaded from the fallback {store.uri}: {reason}"
    log.warning(msg)
    warnings.warn(msg, BackupWarning, stacklevel=2)
    return state


def list_checkpoints(
    uri: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> list[CheckpointInfo]:
    """Every committed checkpoint in the store, sorted by step."""
    with Store(uri, storage_options=storage_options) as store:
        return store.list()


def info(
    uri: str | os.PathLike[str],
    step: int | None = None,
    *,
    id: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """One checkpoint's record (the newest by default), without reading its tensors."""
    with Store(uri, storage_options=storage_options) as store:
        return store.info(step, id=id)


def copy_checkpoints(
    src: StoreLike,
    dst: StoreLike,
    *,
    steps: Iterable[int] | None = None,
    ids: Iterable[str] | None = None,
    all: bool = False,
    latest: int | None = None,
    checkpoints: Iterable[CheckpointInfo] | None = None,
    src_options: Mapping[str, Any] | None = None,
    dst_options: Mapping[str, Any] | None = None,
    retries: int | None = None,
    workers: int | None = None,
    readback: bool = False,
    progress: bool | None = None,
) -> CopyResult:
    """Copy checkpoints from ``src`` to ``dst`` (Stores or URIs; a missing destination store is
    created): the union of ``steps`` (the newest at each), ``ids`` (unique prefixes), ``all`` and
    the ``latest`` K, or an explicit ``checkpoints`` list; the newest one when nothing is given.
    Only objects the destination lacks travel, verified on arrival; manifests go last."""
    s = src if isinstance(src, Store) else Store(src, storage_options=src_options, retries=retries)
    d = dst if isinstance(dst, Store) else Store(dst, storage_options=dst_options, retries=retries)
    try:
        return s.copy_to(
            d,
            steps=steps,
            ids=ids,
            all=all,
            latest=latest,
            checkpoints=checkpoints,
            workers=workers,
            readback=readback,
            progress=progress,
        )
    finally:
        for x, given in ((s, src), (d, dst)):
            if x is not given:
                x.close()
