"""Module-level verbs: each opens a :class:`Store` and delegates to it."""

from __future__ import annotations

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

    Parameters:
        ``state``: what to save: tensors, dicts, lists, numbers, strings (nested freely); other
            objects only with ``allow_pickle``.
        ``uri``: the store, a folder (a local path, ``file://``, ``s3://``, ``gs://``, any fsspec
            URI). A name ending like a file (``.pt``, ``.ckpt``, ...) warns: a store is a folder.
        ``step``: the training step (default: the newest checkpoint's step + 1, or 0).
        ``epoch``: the epoch, shown by ``ckptstore ls``.
        ``config``: the run's configuration as plain data (a dict, an ``argparse.Namespace`` or a
            dataclass), readable with ``ckptstore show``.
        ``metrics``: numbers by name (``{"val_loss": 0.3}``); retention's ``keep_best`` uses them.
        ``tags``: labels; ``"pinned"`` keeps the checkpoint from every retention rule.
        ``meta``: any other plain data to keep with the checkpoint (``total_steps`` shows progress).
        ``rng``: capture Python/NumPy/torch/CUDA RNG states (True), not (False), or an ``RngState``.
        ``compression``: ``"zstd"``, ``"none"``, True/False; default: the store's setting.
        ``allow_pickle``: store values JSON cannot hold with pickle (readers then need it too).
        ``progress``: show a progress bar (default: on a terminal, for large saves).
        ``storage_options``: fsspec options for the store (credentials, endpoint).
        ``keep``: a :class:`Retention` policy applied after this save commits.
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

    Parameters:
        ``uri``: the store (a path or any fsspec URI).
        ``step``: the checkpoint at this step (the most recent of equal steps).
        ``id``: the checkpoint with this id, or a unique prefix of it (as ``ckptstore ls`` shows).
        ``map_location``: where tensors go, as in ``torch.load``: a device, a dict, a function, or
            ``"auto"`` (CUDA, then MPS, then CPU); default: the device each was saved from.
        ``restore_rng``: also restore the RNG states captured at save time.
        ``allow_pickle``: unpickle values stored with pickle (runs code: trusted stores only).
        ``verify``: check every object against its hash while reading (default True).
        ``progress``: show a progress bar (default: on a terminal, for large loads).
        ``storage_options``: fsspec options for the store.
        ``mmap``: map local objects instead of reading them (default: when it helps); see
            :meth:`Store.load`.
        ``fallback``: a backup store's URI: a primary that has no store or not that checkpoint is
            skipped and the checkpoint is loaded from here, with one ``BackupWarning``.
        ``fallback_options``: fsspec options for the fallback store.
    """
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
    except StoreNotFoundError as e:  # its advice ("save a checkpoint there first") is not for this case
        reason = f"there is no checkpoint store at {e.path or uri}"
    except CheckpointNotFoundError as e:
        reason = str(e)
    with Store(fallback, storage_options=fallback_options) as store:
        state = store.load(step, id=id, **kw)
    warnings.warn(f"loaded from the fallback {store.uri}: {reason}", BackupWarning, stacklevel=2)
    return state


def list_checkpoints(
    uri: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None
) -> list[CheckpointInfo]:
    """Every committed checkpoint in the store at ``uri`` (a path or any fsspec URI), sorted by
    step; ``storage_options``: fsspec options for the store. Damaged manifests are skipped with a
    warning (``ckptstore verify`` reports them)."""
    with Store(uri, storage_options=storage_options) as store:
        return store.list()


def info(
    uri: str | os.PathLike[str],
    step: int | None = None,
    *,
    id: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """One checkpoint's record, without reading its tensors: in the store at ``uri``, the
    checkpoint at ``step`` or with id (or unique id prefix) ``id``, else the newest.
    ``storage_options``: fsspec options for the store."""
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
    repair: bool = False,
    progress: bool | None = None,
) -> CopyResult:
    """Copy checkpoints from ``src`` to ``dst`` (Stores or URIs; a missing destination store is
    created): the union of ``steps`` (the newest at each), ``ids`` (unique prefixes), ``all`` and
    the ``latest`` K, or an explicit ``checkpoints`` list; the newest one when nothing is given.
    Only objects the destination lacks travel, verified on arrival; manifests go last.

    ``src_options``/``dst_options``: fsspec options for each store given as a URI; ``retries``:
    retries per storage request (default 3); ``workers``: parallel transfers; ``readback``: also
    read every new object back from the destination and check it; ``repair``: read what the
    destination already holds of these checkpoints and replace what does not match its hash (a
    damaged store restored from its backup); ``progress``: a progress bar
    (default: on a terminal). A damaged source checkpoint does not stop the others: the healthy
    ones are copied, then ``IntegrityError`` names the damaged ones (its ``result`` and
    ``damaged`` attributes say what was done)."""
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
            repair=repair,
            progress=progress,
        )
    finally:
        for x, given in ((s, src), (d, dst)):
            if x is not given:
                x.close()
