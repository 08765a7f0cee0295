"""``ckptstore.dashboard`` and ``ckptstore.diff_checkpoints``: the Python entry points."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Union, overload

from .._errors import CheckpointNotFoundError
from ..format._info import CheckpointInfo
from ..store._retention import Retention
from ..store._store import Store
from ._collect import snapshot
from ._diff import CheckpointDiff, diff
from ._page import render
from ._server import DashboardServer, Source

#: a checkpoint as the user names it: a step (int, or digits), an id or unique id prefix, "latest"
Which = Union[int, str]


def find(store: Store, which: Which) -> CheckpointInfo:
    """The checkpoint ``which`` names: an int or a string of digits is a step (the newest at that
    step), ``"latest"`` the newest, ``"id:<hex>"`` or any other hex string an id prefix."""
    if isinstance(which, bool):
        raise TypeError("a checkpoint is a step (int) or an id (str), not a bool")
    if isinstance(which, int):
        return store.info(which)
    if not isinstance(which, str) or not which:
        raise TypeError(f"a checkpoint is a step (int) or an id (str), not {which!r}")
    text = which.strip()
    if text in ("latest", "newest"):
        return store.info()
    if text.startswith("id:"):
        return store.info(id=text[3:])
    if text.isdigit():
        return store.info(int(text))
    if not all(c in "0123456789abcdef" for c in text.lower()):
        raise CheckpointNotFoundError(
            f"{which!r} names no checkpoint: give a step (500), an id or id prefix (3fa9c2), or 'latest'"
        )
    return store.info(id=text.lower())


def _open(uri: str | os.PathLike[str] | Store, storage_options: Mapping[str, Any] | None) -> tuple[Store, bool]:
    if isinstance(uri, Store):
        return uri, False
    return Store(uri, storage_options=storage_options), True


def diff_checkpoints(
    uri: str | os.PathLike[str] | Store,
    a: Which,
    b: Which = "latest",
    *,
    load: bool = True,
    allow_pickle: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointDiff:
    """Compare checkpoint ``a`` with ``b`` (the newest by default) of the store at ``uri``.

    ``a``/``b``: a step, an id (or unique prefix; ``"id:..."`` forces an id) or ``"latest"``.
    The manifests say which tensors were added, removed, reshaped or are byte-identical
    (deduplicated); when some differ and ``load`` is true, both checkpoints are loaded to measure
    ``||b - a|| / ||a||`` per tensor and per layer. Config and metric differences come along.
    ``allow_pickle``: the checkpoints hold pickled values you trust; ``storage_options``: fsspec
    options for the store."""
    store, owned = _open(uri, storage_options)
    try:
        return diff(store, find(store, a), find(store, b), allow_pickle=allow_pickle, load=load)
    finally:
        if owned:
            store.close()


@overload
def dashboard(
    uri: str | os.PathLike[str] | Store,
    *,
    output: None = None,
    port: int = 0,
    refresh: float = 5.0,
    backup: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backup_options: Mapping[str, Any] | None = None,
    retention: Retention | None = None,
    compare: tuple[Which, Which] | None = None,
    allow_pickle: bool = False,
) -> DashboardServer: ...


@overload
def dashboard(
    uri: str | os.PathLike[str] | Store,
    *,
    output: str | os.PathLike[str],
    port: int = 0,
    refresh: float = 5.0,
    backup: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backup_options: Mapping[str, Any] | None = None,
    retention: Retention | None = None,
    compare: tuple[Which, Which] | None = None,
    allow_pickle: bool = False,
) -> str: ...


def dashboard(
    uri: str | os.PathLike[str] | Store,
    *,
    output: str | os.PathLike[str] | None = None,
    port: int = 0,
    refresh: float = 5.0,
    backup: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    backup_options: Mapping[str, Any] | None = None,
    retention: Retention | None = None,
    compare: tuple[Which, Which] | None = None,
    allow_pickle: bool = False,
) -> DashboardServer | str:
    """A web page with a run's checkpoints (the store at ``uri``, a path or URI or a ``Store``):
    metrics, retention, storage, progress, health.

    Without ``output``: serve it on ``http://127.0.0.1:<port>/`` (a free port by default) from a
    background thread (``port`` 0: a free one) and return the running :class:`DashboardServer` (``.url``, ``.close()``,
    ``.wait()``); the page refreshes every ``refresh`` seconds while a run writes. Nothing opens a
    browser. With ``output``: write the page as one self-contained HTML file and return its path
    (``StoreNotFoundError`` when there is no store at ``uri``); ``compare=(a, b)`` adds the
    comparison of two checkpoints to that file (``allow_pickle``: they hold pickled values you trust).

    ``backup``: a backup store to check each checkpoint against (default: the mirror of a
    ``Store`` passed with ``backup=``). ``storage_options``/``backup_options``: fsspec options for
    the store and the backup. ``retention``: the policy whose decisions the table shows
    (default: the store's own, as ``Store.get_retention``). Reads manifests only; tensors are
    loaded only to compare two checkpoints."""
    if refresh <= 0:
        raise ValueError(f"refresh must be a positive number of seconds, not {refresh!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 (any free port) to 65535, not {port!r}")
    store, owned = _open(uri, storage_options)
    if backup is None and store.backup is not None:
        backup = store.backup.backup.uri
        backup_options = backup_options if backup_options is not None else store.backup.backup.storage_options
    try:
        if output is not None:
            if not store.exists():  # a page of nothing: most likely a mistyped path
                raise store.catalog.not_found()
            snap = snapshot(store, backup=backup, backup_options=backup_options, policy=retention)
            cmp = None
            if compare is not None:
                a, b = compare
                cmp = diff(store, find(store, a), find(store, b), allow_pickle=allow_pickle).to_json()
            path = os.fspath(output)
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(render(snap, mode="static", refresh=refresh, diff=cmp))
            os.replace(tmp, path)
            return path
        source = Source(store, backup=backup, backup_options=backup_options, policy=retention)
        server = DashboardServer(source, port=port, refresh=refresh, on_close=store.close if owned else None)
        owned = False  # the server closes it
        return server
    finally:
        if owned:
            store.close()
