"""``Store``: the facade that owns write and read ordering (docs/format.md, "Ordering").

It composes the layers below: the ``Catalog`` (what the store holds), a ``SaveSession`` per save
(stage, then commit), the reader pipeline for loads, gc and retention, and the backup mirror.
"""

from __future__ import annotations

import builtins
import logging
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import (
    CheckpointNotFoundError,
    CkptstoreWarning,
    IntegrityError,
    InvalidArgumentError,
    ObjectMissingError,
    PickleNotAllowedError,
    StoreNotFoundError,
)
from .._lazy import lazy
from .._progress import byte_bar
from ..format._info import CheckpointInfo
from ..format._layout import CONFIG_KEY, object_key
from ..format._manifest import MIN_CHUNK_SIZE, Manifest, RngState, StoreConfig
from ..format._sharded import assemble
from ..format._tensors import entry_to_tensor
from ..format._tree import Decoder, contains_pickle
from ..pipeline._codec import resolve_compression
from ..pipeline._devices import MapLocation, Placement
from ..pipeline._mmap import mmap_default
from ..pipeline._reader import blob_devices, check_manifest, read_blobs, select_tensors, verify_objects
from ..pipeline._rng import restore_rng_state
from ..storage._backend import Backend
from ..storage._open import open_backend
from . import _suspect
from ._backup import Backup, Mirror, as_backup
from ._catalog import Catalog
from ._gc import GcReport, apply_after_save, forget, resolve_policy, run_gc
from ._retention import Retention, RetentionPlan, check_policy, plan
from ._space import SpaceGuard

if TYPE_CHECKING:
    import torch

    from ._copy import CopyResult
    from ._session import SaveSession
else:
    torch = lazy("torch", globals())

log = logging.getLogger("ckptstore")

DEFAULT_CHUNK_SIZE = 32 << 20


def _default_workers() -> int:
    return max(2, min(8, 2 * (os.cpu_count() or 2)))


class Store:
    """A checkpoint store at a URI (local path, ``file://``, ``memory://``, ``s3://``, ``gs://``...).

    ``storage_options`` (or extra keyword arguments) go to fsspec unchanged. A store is reusable
    across many saves and loads, safe to share between threads, and a context manager.
    """

    def __init__(
        self,
        uri: str | os.PathLike[str],
        *,
        compression: str | bool | None = None,
        chunk_size: int | None = None,
        workers: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        retention: Retention | None = None,
        on_low_space: str = "fail",
        reserve: int | str = 0,
        quota: int | str | None = None,
        retries: int | None = None,
        backup: str | os.PathLike[str] | Backup | None = None,
        **more_storage_options: Any,
    ) -> None:
        if isinstance(uri, Store):
            raise TypeError("Store() takes a URI; you passed a Store")
        options = {**(storage_options or {}), **more_storage_options}
        self._backend: Backend = open_backend(uri, options, retries=retries)
        self.compression = resolve_compression(compression)
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < MIN_CHUNK_SIZE
        ):
            raise ValueError(f"chunk_size must be an int of at least 64 KiB, not {chunk_size!r}")
        self._chunk_size = chunk_size
        self._chunk_warned = False
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise InvalidArgumentError(
                f"workers must be an int of at least 1 (or None for the default), not {workers!r}"
            )
        self.workers = workers or _default_workers()
        self.retention = None if retention is None else check_policy(retention)
        self.space = SpaceGuard.make(on_low_space, reserve, quota)
        b = as_backup(backup)
        self._mirror: Mirror | None = Mirror(self, b) if b is not None else None
        self._catalog = Catalog(
            self._backend,
            restore=self._restore if self._mirror is not None else None,
            chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
        )

    @property
    def chunk_size(self) -> int:
        """The chunk size saves cut blobs with: the one the store records (docs/format.md §3: every
        writer of a store uses it), else the one given to ``Store`` (default 32 MiB)."""
        try:
            recorded = self._catalog.config().chunk_size
        except StoreNotFoundError:
            recorded = None
        if recorded is None:
            return self._chunk_size or DEFAULT_CHUNK_SIZE
        if self._chunk_size is not None and self._chunk_size != recorded and not self._chunk_warned:
            self._chunk_warned = True
            warnings.warn(
                f"the store {self.uri} records chunk_size={recorded} (every writer of a store uses the same, so "
                f"that their data deduplicates); chunk_size={self._chunk_size} is ignored",
                CkptstoreWarning,
                stacklevel=2,
            )
        return recorded

    def _restore(self) -> bool:
        assert self._mirror is not None
        return bool(self._mirror.restore_into(self))

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop caches and wait for pending backup copies (see ``Backup.close_timeout``). The store
        holds no open files between calls and stays usable."""
        if self._mirror is not None:
            self._mirror.close()
        self._catalog.clear()

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    @property
    def uri(self) -> str:
        return self._backend.uri

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def catalog(self) -> Catalog:
        """What this process knows of the store's manifests, config and dedup index."""
        return self._catalog

    @property
    def backup(self) -> Mirror | None:
        """The backup mirror (``.flush()``, ``.status``), or None."""
        return self._mirror

    def copy_to(
        self,
        dst: Store | str | os.PathLike[str],
        *,
        steps: Iterable[int] | None = None,
        ids: Iterable[str] | None = None,
        all: bool = False,
        latest: int | None = None,
        checkpoints: Iterable[CheckpointInfo] | None = None,
        workers: int | None = None,
        readback: bool = False,
        repair: bool = False,
        progress: bool | None = None,
    ) -> CopyResult:
        """Copy checkpoints to the store ``dst`` (a Store or a URI; created when missing): the union
        of ``steps`` (the newest at each), ``ids`` (unique prefixes), ``all`` and the ``latest`` K,
        or exactly ``checkpoints``; the newest when nothing is given (as ``ckptstore.copy_checkpoints``).
        ``workers``: parallel transfers; ``readback``: read every new object back and check it;
        ``repair``: read what ``dst`` already holds of them and replace what is damaged;
        ``progress``: a progress bar (default: on a terminal). A damaged source checkpoint does not
        stop the healthy ones: they are copied, then an ``IntegrityError`` names the damaged ones."""
        from ._copy import copy_between, select_checkpoints

        target = dst if isinstance(dst, Store) else Store(dst)
        try:
            chosen = (
                sorted(checkpoints, key=lambda i: (i.step, i.created_at, i.id))
                if checkpoints is not None
                else select_checkpoints(self, steps=steps, ids=ids, all=all, latest=latest)
            )
            return copy_between(
                self,
                target,
                chosen,
                workers=workers or target.workers,
                readback=readback,
                repair=repair,
                progress=progress,
            )
        finally:
            if target is not dst:
                target.close()

    # -- store config -----------------------------------------------------------------------
    def exists(self) -> bool:
        """True when a store (its ``ckptstore.json``) exists at the URI."""
        return self._catalog.exists()

    @property
    def config(self) -> StoreConfig:
        return self._catalog.config()

    # -- checkpoints ------------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        """Every committed checkpoint, sorted by step then creation time. Damaged manifests are
        skipped with a warning (``ckptstore verify`` reports them)."""
        return self._catalog.checkpoints(stacklevel=3)

    list_checkpoints = list

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint (highest step; the most recent of equal steps), or None.
        Raises ``UnsupportedFormatError`` when the newest is of a newer format version (upgrade)."""
        return self._catalog.newest(strict=True)

    def info(self, step: int | None = None, *, id: str | None = None) -> CheckpointInfo:
        """The checkpoint at ``step`` (the most recent of equal steps), with id (or a unique
        prefix of it) ``id``, or the newest when neither is given."""
        return self._catalog.find(step, id=id)

    def manifest(self, step: int | None = None, *, id: str | None = None) -> Manifest:
        """The validated manifest model of the checkpoint at ``step`` or with id (prefix) ``id``,
        the newest by default (see docs/format.md)."""
        return self._catalog.manifest(self.info(step, id=id).key)

    # -- save -------------------------------------------------------------------------------
    def session(self, *, keep: Retention | None = None, lease: bool = True) -> SaveSession:
        """A save as two steps, ``stage`` then ``commit`` (see ``SaveSession``): for writers that
        stage in several processes and commit once. ``with store.session() as s: ...``

        ``lease=False``: a session that only stages, under the save lease of the process that
        will commit (which must hold it from before this session opens until its commit, as the
        coordinator of a distributed save does): N ranks then write one lease, not N. ``keep``: a
        retention policy applied after the commit (as ``save(keep=...)``)."""
        from ._session import SaveSession

        return SaveSession(self, keep=keep, lease=lease)

    def save(
        self,
        state: Any,
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
        keep: Retention | None = None,
    ) -> CheckpointInfo:
        """Write ``state`` as a new checkpoint; returns when it is committed and durable.

        Then the retention policy (``keep``, else the Store's ``retention``, else the one stored
        with ``set_retention``) removes what it does not keep; the new checkpoint is never removed.

        ``step``: the training step (default: the newest checkpoint's + 1, or 0); ``epoch``: shown
        by ``ckptstore ls``; ``config``: the run's configuration as plain data (a dict, an
        ``argparse.Namespace``, a dataclass); ``metrics``: numbers by name, for ``keep_best``;
        ``tags``: labels (``"pinned"`` is never removed by retention); ``meta``: other plain data.
        ``rng``: True records the RNG states now; an ``RngState`` (from ``capture_rng_state()``)
        records one captured earlier (a background save of a state staged at an earlier step).
        ``compression``: ``"zstd"``/``"none"``/True/False (default: the Store's); ``allow_pickle``:
        store values JSON cannot hold with pickle; ``progress``: a progress bar (default: on a
        terminal, for large saves)."""
        from ._session import check_details

        step, metric_vals, tag_list = check_details(step=step, epoch=epoch, metrics=metrics, tags=tags)
        with self.session(keep=keep) as s:
            staged = s.stage(
                state,
                compression=compression,
                allow_pickle=allow_pickle,
                progress=progress,
                step=step,
                metrics=metric_vals,
                tags=tag_list,
            )
            info = s.commit(
                staged,
                step=step,
                epoch=epoch,
                config=config,
                metrics=metric_vals,
                tags=tag_list,
                meta=meta,
                rng=rng,
                allow_pickle=allow_pickle,
            )
        self._apply_retention(keep)
        if self._mirror is not None:
            self._mirror.submit(info)  # copied in the background; never blocks or fails the save
        return info

    # -- load -------------------------------------------------------------------------------
    def load(
        self,
        step: int | None = None,
        *,
        id: str | None = None,
        map_location: MapLocation = None,
        restore_rng: bool = False,
        allow_pickle: bool = False,
        verify: bool = True,
        progress: bool | None = None,
        mmap: bool | None = None,
    ) -> Any:
        """The state saved at ``step`` (or ``id``; the newest by default), every byte verified.

        ``map_location``: where tensors go, as in ``torch.load`` (a device, a dict, a function, or
        ``"auto"``); default: the device each was saved from. ``restore_rng``: also restore the
        recorded RNG states. ``allow_pickle``: unpickle values stored with pickle (trusted stores
        only). ``progress``: a progress bar (default: on a terminal, for large loads).

        ``verify=False`` skips hashing the bytes (BLAKE3: 1-7 GB/s per core, by CPU; the sizes and
        structure are still checked). ``mmap``: CPU tensors of uncompressed objects in a local
        store become copy-on-write mappings of the object files (no copy; writes to them never
        reach the store). ``None`` (default) maps on Linux local filesystems, not on network or
        FUSE mounts (a dropped mount would kill the process on access); ``True`` maps wherever
        there is a local path; ``False`` reads into fresh memory."""
        placement = Placement(map_location)
        info = self.info(step, id=id)
        m = self._catalog.manifest(info.key)
        where = f"checkpoint step {info.step} ({info.short_id}) in {self.uri}"
        if not allow_pickle and any(contains_pickle(part) for part in (m.tree, m.config, m.meta)):
            raise PickleNotAllowedError(
                f"{where} holds values saved with allow_pickle=True; loading them runs pickle, which can "
                "execute code. Pass allow_pickle=True only if you trust this store."
            )
        check_manifest(m, where)
        tensors = self._read_tensors(info, m, where, placement=placement, verify=verify, progress=progress, mmap=mmap)
        sharded = [assemble(st, tensors) for st in m.distributed.sharded] if m.distributed is not None else []
        state = Decoder(tensors, allow_pickle=allow_pickle, sharded=sharded).decode(m.tree)
        if restore_rng:
            restore_rng_state(m.rng)
        return state

    def load_tensors(
        self,
        indices: Iterable[int],
        step: int | None = None,
        *,
        id: str | None = None,
        map_location: MapLocation = None,
        verify: bool = True,
        mmap: bool | None = None,
        out: Sequence[torch.Tensor | None] | None = None,
    ) -> builtins.list[Any]:
        """Tensor entries ``indices`` of a checkpoint's tensor table (``Store.manifest(...).tensors``),
        reading and verifying only the objects they use: a process that needs a few chunks of a
        large checkpoint (a rank of a distributed load) reads only those. The checkpoint is the
        one at ``step`` or with id (prefix) ``id``, the newest by default; ``map_location``,
        ``verify`` and ``mmap`` as in ``load``.

        ``out``: one entry per index, a tensor to fill in place (or None). A contiguous tensor of
        the entry's dtype and shape receives the bytes straight from storage (no temporary, no
        mapping); any other tensor of the entry's shape gets a copy (converting the dtype). The returned
        list holds those tensors. On an error, an ``out`` tensor may hold part of the data."""
        info = self.info(step, id=id)
        m = self._catalog.manifest(info.key)
        where = f"checkpoint step {info.step} ({info.short_id}) in {self.uri}"
        check_manifest(m, where)
        wanted = builtins.list(indices)
        targets = builtins.list(out) if out is not None else []
        if out is not None and len(targets) != len(wanted):
            raise ValueError(f"out has {len(targets)} entries for {len(wanted)} indices; give one per index")
        sel = select_tensors(m, wanted)
        for j, dst in enumerate(targets):  # before any read: a refused out leaves every tensor as it was
            e = sel.tensors[j]
            if dst is not None and (e.kind != "torch" or tuple(dst.shape) != tuple(e.shape)):
                raise ValueError(
                    f"out[{j}] has shape {tuple(dst.shape)}; tensor entry {wanted[j]} of {where} is "
                    f"{'a numpy array of shape ' if e.kind != 'torch' else ''}{tuple(e.shape)}"
                )
        into = _direct_targets(sel, targets)
        loaded = self._read_tensors(
            info,
            sel,
            where,
            placement=Placement(map_location),
            verify=verify,
            progress=False,
            mmap=mmap,
            into=into,
        )
        for j, dst in enumerate(targets):
            if dst is None:
                continue
            if sel.tensors[j].blob in into:
                if not dst.is_inference():  # written in place: autograd must see it, as after copy_
                    torch.autograd.graph.increment_version(dst)
            else:
                with torch.no_grad():
                    dst.copy_(loaded[j])
            loaded[j] = dst
        return loaded

    def _read_tensors(
        self,
        info: CheckpointInfo,
        m: Manifest,
        where: str,
        *,
        placement: Placement,
        verify: bool,
        progress: bool | None,
        mmap: bool | None,
        into: dict[int, torch.Tensor] | None = None,
    ) -> builtins.list[Any]:
        """The tensors of ``m``'s tensor table, read and placed (blobs in ``into`` straight into
        those byte buffers)."""
        devices = blob_devices(m, placement)
        for bi, buf in (into or {}).items():
            devices[bi] = buf.device
        if mmap is None:
            root = self._backend.local_path(CONFIG_KEY)
            mmap = root is not None and mmap_default(root)
        with byte_bar(m.stats.logical_bytes, f"loading step {info.step}", progress) as bar:
            try:
                bufs = read_blobs(
                    self._backend,
                    m,
                    where=where,
                    workers=self.workers,
                    verify=verify,
                    progress=bar,
                    devices=devices,
                    mmap=bool(mmap),
                    into=into,
                )
            except ObjectMissingError as e:
                if not self._backend.exists(info.key):
                    raise CheckpointNotFoundError(
                        f"{where} was removed (by retention or gc) while it was being loaded; load another checkpoint"
                    ) from e
                self._suspect(e)
                raise
            except IntegrityError as e:
                self._suspect(e)
                raise
        tensors = _materialize(m, bufs, placement)
        if placement.kept_on_cpu:
            warnings.warn(
                f"{placement.kept_on_cpu} tensor storage(s) of float64/complex128 stay on the CPU: MPS has no "
                "64-bit floats. Convert them (e.g. .float()) if you need them on MPS.",
                CkptstoreWarning,
                stacklevel=3,
            )
        return tensors

    # -- maintenance ----------------------------------------------------------------------
    def forget(self, step: int | None = None, *, id: str | None = None) -> CheckpointInfo:
        """Remove one checkpoint's manifest (the one at ``step`` or with id prefix ``id``; the newest
        by default). Its objects stay until ``gc`` removes unreferenced data. Returns what was removed."""
        if step is None and id is None:
            raise ValueError("forget needs a step or an id")
        info = self.info(step, id=id)
        forget(self, [info])
        return info

    def verify(self, step: int | None = None, *, id: str | None = None, read_data: bool = True) -> None:
        """Check one checkpoint (the one at ``step`` or with id prefix ``id``; the newest by default):
        its manifest, its structure, and with ``read_data`` every object's bytes against its hash.
        Raises IntegrityError on damage."""
        info = self.info(step, id=id)
        m = self._catalog.manifest(info.key)
        where = f"checkpoint step {info.step} ({info.short_id}) in {self.uri}"
        check_manifest(m, where)
        try:
            if read_data:
                verify_objects(self._backend, m, where=where, workers=self.workers)
            else:
                for key in m.objects:
                    if not self._backend.exists(object_key(key)):
                        raise ObjectMissingError(f"{where}: object {key} is missing", key)
        except IntegrityError as e:
            self._suspect(e)
            raise

    def _suspect(self, e: IntegrityError) -> None:
        """Remember a damaged or missing object: later saves neither reuse nor skip it."""
        if e.key:
            _suspect.mark(self._backend.describe(), e.key)

    # -- retention and garbage collection (store/_gc.py, _retention.py) ---------------------
    def set_retention(self, policy: Retention | None) -> None:
        """Store ``policy`` in ``ckptstore.json`` (None removes it): every writer applies it after
        each save, and ``ckptstore gc`` applies it when given no rules."""
        self._catalog.set_stored_policy(None if policy is None else check_policy(policy))

    def get_retention(self) -> Retention | None:
        """The policy saves apply: the Store's ``retention``, else the stored one, else None."""
        return resolve_policy(self)

    def plan_retention(self, policy: Retention | None = None) -> RetentionPlan:
        """What ``policy`` (default: ``get_retention()``) keeps and removes, and why. Changes nothing."""
        return plan(self.list(), resolve_policy(self, policy) or Retention())

    def gc(
        self, policy: Retention | None = None, *, dry_run: bool = False, grace: float | None = None, wait: float = 60.0
    ) -> GcReport:
        """Forget the checkpoints ``policy`` (default: ``get_retention()``; none: forget nothing)
        removes, then delete objects no checkpoint references. Waits up to ``wait`` seconds for
        saves in other processes to finish before deleting objects (else defers that part).
        ``dry_run``: plan and count, change nothing; ``grace``: objects no checkpoint references
        are deleted only when older than this many seconds (default one hour: a save may still be
        writing them). Refuses (IntegrityError) when ``ckptstore.json`` does not match its checksum."""
        self._catalog.config()
        return run_gc(self, resolve_policy(self, policy), dry_run=dry_run, grace=grace, wait=wait)

    def prune(self, *, dry_run: bool = False, grace: float | None = None, wait: float = 60.0) -> GcReport:
        """Delete objects no checkpoint references (those of aborted saves only once older than
        ``grace`` seconds, default one hour) and stale temporary files. Forgets nothing.
        ``dry_run``: count, change nothing; ``wait``: seconds to wait for saves in other processes."""
        self._catalog.config()
        return run_gc(self, None, dry_run=dry_run, grace=grace, wait=wait)

    def _apply_retention(self, keep: Retention | None) -> None:
        """After a committed save: apply retention; a failure here never fails the save."""
        try:
            apply_after_save(self, keep)
        except Exception as e:  # noqa: BLE001 - the checkpoint is committed; report, do not raise
            warnings.warn(
                f"the checkpoint was saved, but applying the retention policy failed: {e}",
                CkptstoreWarning,
                stacklevel=3,
            )


def _direct_targets(m: Manifest, out: builtins.list[Any]) -> dict[int, torch.Tensor]:
    """Blobs of ``m`` that can be read straight into the ``out`` tensor of their entry: a plain
    contiguous tensor entry alone in its blob, and an ``out`` of its dtype and shape that is a
    plain contiguous tensor whose memory no other chosen ``out`` overlaps (two reads into one
    buffer would each hash the other's bytes). Maps the blob to the tensor's bytes (1-D uint8)."""
    users: dict[int, int] = {}
    for e in m.tensors:
        users[e.blob] = users.get(e.blob, 0) + 1
    found: dict[int, torch.Tensor] = {}
    spans: builtins.list[tuple[str, int, int]] = []  # (device, first byte, end) of chosen targets
    for e, dst in zip(m.tensors, out):
        if dst is None or e.kind != "torch" or users[e.blob] != 1 or e.offset != 0 or e.stride is not None:
            continue
        if not isinstance(dst, torch.Tensor) or dst.layout != torch.strided or dst.numel() == 0:
            continue
        if dst.is_conj() or dst.is_neg() or not dst.is_contiguous() or tuple(dst.shape) != tuple(e.shape):
            continue
        nbytes = dst.numel() * dst.element_size()
        if str(dst.dtype).removeprefix("torch.") != e.dtype or nbytes != m.blobs[e.blob].nbytes:
            continue
        where, start = str(dst.device), dst.data_ptr()
        if any(d == where and start < end and lo < start + nbytes for d, lo, end in spans):
            continue  # overlaps another target: that one is read directly, this one copied after
        spans.append((where, start, start + nbytes))
        found[e.blob] = dst.detach().reshape(-1).view(torch.uint8)
    return found


def _materialize(m: Manifest, bufs: list[Any], placement: Placement) -> list[Any]:
    by_blob: dict[int, list[int]] = {}
    for j, e in enumerate(m.tensors):
        by_blob.setdefault(e.blob, []).append(j)
    out: list[Any] = [None] * len(m.tensors)
    for bi, members in by_blob.items():
        base = bufs[bi]
        for j in members:
            e = m.tensors[j]
            t = entry_to_tensor(e, base)
            if placement.callable and e.kind == "torch":
                t = placement.move(t, e.device)
            out[j] = t
    return out
