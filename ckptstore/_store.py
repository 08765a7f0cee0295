"""``Store``: the facade that owns write and read ordering (docs/format.md, "Ordering")."""

from __future__ import annotations

import logging
import os
import platform
import threading
import warnings
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import torch

from . import _hashing, _suspect
from ._backend import Backend, open_backend
from ._backup import Backup, Mirror, as_backup
from ._codec import resolve_compression
from ._devices import MapLocation, Placement
from ._errors import (CheckpointNotFoundError, IntegrityError, ObjectMissingError, StoreNotFoundError,
                      UnsupportedFormatError)
from ._info import CheckpointInfo
from ._layout import CONFIG_KEY, MANIFESTS_DIR, manifest_key, parse_manifest_key
from ._mmap import mmap_default
from ._manifest import (Manifest, RngState, Stats, StoreConfig, TensorEntry, dump, parse_manifest,
                        parse_store_config)
from ._progress import byte_bar
from ._reader import blob_devices, check_manifest, read_blobs, verify_objects
from ._rng import capture_rng_state, restore_rng_state
from ._tensors import entry_to_tensor, plan_tensors
from ._tree import Decoder, Encoder, contains_pickle
from ._writer import DedupIndex, blob_groups, effective_chunking, planned_device_sync, write_blobs

if TYPE_CHECKING:
    from ._gc import GcReport
    from ._retention import Retention, RetentionPlan

log = logging.getLogger("ckptstore")

_FIND = object()  # "look it up" default for arguments where None is a meaningful value

DEFAULT_CHUNK_SIZE = 32 << 20
DEFAULT_PACK_THRESHOLD = 1 << 20  # smaller tensors share pack objects; larger ones get their own, so gc can free them separately
DEFAULT_PACK_SIZE = 16 << 20


def _default_workers() -> int:
    return max(2, min(8, 2 * (os.cpu_count() or 2)))


def _version() -> str:
    from . import __version__

    return __version__


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
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        workers: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
        retention: "Retention | None" = None,
        on_low_space: str = "fail",
        reserve: int | str = 0,
        quota: int | str | None = None,
        retries: int | None = None,
        backup: "str | os.PathLike[str] | Backup | None" = None,
        **more_storage_options: Any,
    ) -> None:
        if isinstance(uri, Store):
            raise TypeError("Store() takes a URI; you passed a Store")
        options = {**(storage_options or {}), **more_storage_options}
        self._backend: Backend = open_backend(uri, options, retries=retries)
        self.compression = resolve_compression(compression)
        if not isinstance(chunk_size, int) or chunk_size < (64 << 10):
            raise ValueError(f"chunk_size must be an int of at least 64 KiB, not {chunk_size!r}")
        self.chunk_size = chunk_size
        self.workers = workers or _default_workers()
        self._manifests: dict[str, Manifest] = {}
        self._bad: dict[str, str] = {}
        self._index: DedupIndex | None = None
        self._config: StoreConfig | None = None
        self._lock = threading.RLock()
        self._index_keys: set[str] | None = None  # manifests present when the index was last checked
        from ._gc import _check_policy
        from ._space import SpaceGuard

        self.retention = None if retention is None else _check_policy(retention)
        self.space = SpaceGuard.make(on_low_space, reserve, quota)
        b = as_backup(backup)
        self._mirror: Mirror | None = Mirror(self, b) if b is not None else None

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop caches and wait for pending backup copies (see ``Backup.close_timeout``). The store
        holds no open files between calls and stays usable."""
        if self._mirror is not None:
            self._mirror.close()
        with self._lock:
            self._manifests.clear()
            self._index = None

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    @property
    def uri(self) -> str:
        return self._backend.uri

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def backup(self) -> Mirror | None:
        """The backup mirror (``.flush()``, ``.status``), or None."""
        return self._mirror

    def copy_to(self, dst: Any, **kwargs: Any) -> Any:
        """Copy checkpoints to another store: ``ckptstore.copy_checkpoints(self, dst, ...)``."""
        from ._copy import copy_checkpoints

        return copy_checkpoints(self, dst, **kwargs)

    # -- store config -----------------------------------------------------------------------
    def exists(self) -> bool:
        """True when a store (its ``ckptstore.json``) exists at the URI."""
        return self._backend.exists(CONFIG_KEY)

    def _not_found(self) -> StoreNotFoundError:
        where = self._backend.describe()
        state = self._backend.root_state()
        if state == "missing":
            msg = f"no checkpoint store at {where}: the path does not exist. Check the path, or save a checkpoint there first."
        elif state == "file":
            msg = (f"{where} is a file, not a checkpoint store. To bring a torch.save file into a store, "
                   "use `ckptstore import`.")
        else:
            msg = f"{where} exists but is not a checkpoint store (it has no {CONFIG_KEY})."
        return StoreNotFoundError(msg, path=where)

    def _read_config(self) -> StoreConfig:
        if self._config is None:
            if self._backend.root_state() == "file":
                raise self._not_found()
            try:
                data = self._backend.read(CONFIG_KEY)
            except (FileNotFoundError, NotADirectoryError):
                if self._mirror is None or not self._mirror.restore_into(self):
                    raise self._not_found() from None
                data = self._backend.read(CONFIG_KEY)  # the restore created the store
            self._config = parse_store_config(data, f"{self._backend.describe(CONFIG_KEY)}")
        return self._config

    def _ensure_store(self) -> StoreConfig:
        with self._lock:
            if self._config is not None:
                return self._config
            if self._backend.root_state() == "file":
                raise self._not_found()
            if not self._backend.exists(CONFIG_KEY):
                cfg = StoreConfig(created_at=datetime.now(timezone.utc))
                self._backend.write(CONFIG_KEY, dump(cfg), if_absent=True)
                self._backend.sync()
            return self._read_config()

    @property
    def config(self) -> StoreConfig:
        return self._read_config()

    # -- manifests --------------------------------------------------------------------------
    def _keys(self) -> list[tuple[int, str, str]]:
        """(step, id, key) of every manifest, in key order (by step)."""
        out = []
        for key in self._backend.list(MANIFESTS_DIR):
            parsed = parse_manifest_key(key)
            if parsed is not None:
                out.append((parsed[0], parsed[1], key))
        out.sort()
        return out

    def _manifest(self, key: str) -> Manifest:
        with self._lock:
            m = self._manifests.get(key)
        if m is not None:
            return m
        step, digest = parse_manifest_key(key)  # type: ignore[misc]
        where = self._backend.describe(key)
        try:
            data = self._backend.read(key)
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"checkpoint {digest[:12]} (step {step}) was removed: {where}") from None
        if _hashing.digest(data) != digest:
            raise IntegrityError(f"manifest {where} does not match its hash; the checkpoint is damaged")
        m = parse_manifest(data, where, digest)
        if m.step != step:
            raise IntegrityError(f"manifest {where} records step {m.step}, its name says {step}")
        with self._lock:
            self._manifests[key] = m
        return m

    def _info(self, key: str, digest: str, m: Manifest) -> CheckpointInfo:
        config = Decoder([]).decode(m.config) if m.config is not None else None
        return CheckpointInfo.from_manifest(m, id=digest, key=key, uri=self.uri, config=config)

    def list(self) -> list[CheckpointInfo]:
        """Every committed checkpoint, sorted by step then creation time. Damaged manifests are
        skipped with a warning (``ckptstore verify`` reports them)."""
        self._read_config()
        out = []
        for step, digest, key in self._keys():
            try:
                m = self._manifest(key)
            except (IntegrityError, UnsupportedFormatError) as e:
                if key not in self._bad:
                    self._bad[key] = str(e)
                    warnings.warn(f"skipping checkpoint at step {step}: {e}", stacklevel=2)
                continue
            except CheckpointNotFoundError:
                continue
            out.append(self._info(key, digest, m))
        out.sort(key=lambda i: (i.step, i.created_at, i.id))
        return out

    list_checkpoints = list

    def latest(self) -> CheckpointInfo | None:
        """The newest checkpoint (highest step; the most recent of equal steps), or None."""
        self._read_config()
        return self._newest(self._keys())

    def _newest(self, keys: list[tuple[int, str, str]]) -> CheckpointInfo | None:
        """``latest()`` over an existing listing (a save reuses the one its lease check made)."""
        best: CheckpointInfo | None = None
        for step, digest, key in reversed(keys):
            if best is not None and step < best.step:
                break
            try:
                info = self._info(key, digest, self._manifest(key))
            except (IntegrityError, UnsupportedFormatError, CheckpointNotFoundError) as e:
                log.warning("skipping damaged checkpoint at step %d: %s", step, e)
                continue
            if best is None or (info.created_at, info.id) > (best.created_at, best.id):
                best = info
        return best

    def info(self, step: int | None = None, *, id: str | None = None) -> CheckpointInfo:
        """The checkpoint at ``step`` (the most recent of equal steps), with id (or a unique
        prefix of it) ``id``, or the newest when neither is given."""
        self._read_config()
        if step is not None and id is not None:
            raise ValueError("give step or id, not both")
        if id is not None:
            if not isinstance(id, str) or not id or any(c not in "0123456789abcdef" for c in id):
                raise ValueError(f"a checkpoint id is lowercase hex, not {id!r}")
            matches = [k for k in self._keys() if k[1].startswith(id)]
            if len(matches) > 1:
                raise CheckpointNotFoundError(f"id prefix {id!r} matches {len(matches)} checkpoints; give more digits")
            if not matches:
                raise CheckpointNotFoundError(f"no checkpoint with id {id!r} in {self.uri}")
            s, digest, key = matches[0]
            return self._info(key, digest, self._manifest(key))
        if step is None:
            info = self.latest()
            if info is None:
                raise CheckpointNotFoundError(f"the store {self.uri} has no checkpoints yet")
            return info
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, not {type(step).__name__}")
        found = [k for k in self._keys() if k[0] == step]
        if not found:
            steps = sorted({k[0] for k in self._keys()})
            near = ", ".join(str(s) for s in steps[-10:]) or "none"
            raise CheckpointNotFoundError(f"no checkpoint at step {step} in {self.uri} (latest steps: {near})")
        infos, errors = [], []
        for _, digest, key in found:
            try:
                infos.append(self._info(key, digest, self._manifest(key)))
            except (IntegrityError, UnsupportedFormatError, CheckpointNotFoundError) as e:
                errors.append(e)
        if not infos:
            raise errors[0]
        return max(infos, key=lambda i: (i.created_at, i.id))

    def manifest(self, step: int | None = None, *, id: str | None = None) -> Manifest:
        """The validated manifest model of a checkpoint (see docs/format.md)."""
        return self._manifest(self.info(step, id=id).key)

    # -- save -------------------------------------------------------------------------------
    def _dedup_index(self, newest: Any = _FIND) -> DedupIndex:
        """The index of what the store holds, built from the newest checkpoint (found here unless
        the caller passes the one it already found)."""
        with self._lock:
            if self._index is None:
                self._index = DedupIndex()
                if newest is _FIND:
                    newest = self.latest() if self.exists() else None
                if newest is not None:
                    self._index.add_manifest(self._manifest(newest.key))
            return self._index

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
        keep: "Retention | None" = None,
    ) -> CheckpointInfo:
        """Write ``state`` as a new checkpoint; returns when it is committed and durable.

        Then the retention policy (``keep``, else the Store's ``retention``, else the one stored
        with ``set_retention``) removes what it does not keep; the new checkpoint is never removed.

        ``rng``: True records the RNG states now; an ``RngState`` (from ``capture_rng_state()``)
        records one captured earlier (a background save of a state staged at an earlier step)."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"step must be a non-negative int, not {step!r}")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
            raise ValueError(f"epoch must be an int or None, not {epoch!r}")
        if isinstance(tags, str):
            tags = [tags]
        tag_list = list(tags)
        if not all(isinstance(t, str) and t for t in tag_list):
            raise ValueError(f"tags must be non-empty strings, not {tag_list!r}")
        metric_values = _metrics(metrics)
        codec = self.compression if compression is None else resolve_compression(compression)

        enc = Encoder(allow_pickle=allow_pickle)
        tree = enc.encode(state)
        config_tree = Encoder(allow_pickle=allow_pickle, allow_tensors=False).encode(config, "config")
        meta_tree = Encoder(allow_tensors=False).encode(dict(meta or {}), "meta")
        plan = plan_tensors(enc.tensors)
        rng_state = rng if isinstance(rng, RngState) else (capture_rng_state() if rng else None)

        self._ensure_store()
        from ._space import SaveGuard

        with SaveGuard(self, keep) as guard:
            with self._lock:
                parent = self._newest(guard.keys)
                index = self._dedup_index(parent)
            if step is None:
                step = parent.step + 1 if parent is not None else 0
            planned_device_sync(plan.blobs)
            total = sum(b.nbytes for b in plan.blobs)
            suspect = _suspect.bad(self._backend.describe())
            chunk, pack_threshold, pack_size = effective_chunking(
                codec, self.chunk_size, min(DEFAULT_PACK_THRESHOLD, self.chunk_size // 2),
                min(DEFAULT_PACK_SIZE, self.chunk_size))
            index = guard.check_space(plan.blobs, codec, index, step=step, metrics=metric_values, tags=tag_list,
                                      parent=parent, chunk_size=chunk, pack_threshold=pack_threshold)
            with byte_bar(total, f"saving step {step}", progress) as bar:
                res = write_blobs(self._backend, plan.blobs, codec=codec, index=index, chunk_size=self.chunk_size,
                                  pack_threshold=pack_threshold, pack_size=pack_size, workers=self.workers,
                                  groups=blob_groups(plan.entries, len(plan.blobs)), progress=bar,
                                  suspect=suspect)
            self._backend.sync()  # objects' names are durable before the manifest exists

            tensors = [TensorEntry(kind=e.kind, dtype=e.dtype, shape=e.shape, stride=e.stride, blob=e.blob,
                                   offset=e.offset, device=e.device, requires_grad=e.requires_grad,
                                   parameter=e.parameter) for e in plan.entries]
            stats = Stats(logical_bytes=total, stored_bytes=sum(i.size for i in res.objects.values()),
                          new_bytes=res.new_bytes, new_objects=res.new_objects)
            m = Manifest(step=step, epoch=epoch, created_at=datetime.now(timezone.utc), config=config_tree,
                         metrics=metric_values, tags=tag_list, meta=meta_tree, rng=rng_state,
                         producer={"ckptstore": _version(), "torch": torch.__version__,
                                   "python": platform.python_version()},
                         parent=parent.id if parent is not None else None, tree=tree, tensors=tensors,
                         blobs=res.blobs, objects=dict(sorted(res.objects.items())), stats=stats)
            data = dump(m)
            digest = _hashing.digest(data)
            key = manifest_key(step, digest)
            guard.confirm(res.objects)
            self._backend.write(key, data)  # the commit point
            self._backend.sync()
            with self._lock:
                self._manifests[key] = m
                index.add_manifest(m)
            guard.committed(key)
            if suspect:
                _suspect.clear(self._backend.describe(), suspect & set(res.objects))  # rewritten whole
        self._apply_retention(keep)
        info = self._info(key, digest, m)
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

        ``verify=False`` skips hashing the bytes (BLAKE3: 1-7 GB/s per core, by CPU; the sizes and
        structure are still checked). ``mmap``: CPU tensors of uncompressed objects in a local
        store become copy-on-write mappings of the object files (no copy; writes to them never
        reach the store). ``None`` (default) maps on Linux local filesystems, not on network or
        FUSE mounts (a dropped mount would kill the process on access); ``True`` maps wherever
        there is a local path; ``False`` reads into fresh memory."""
        placement = Placement(map_location)
        info = self.info(step, id=id)
        m = self._manifest(info.key)
        where = f"checkpoint step {info.step} ({info.short_id}) in {self.uri}"
        if contains_pickle(m.tree) and not allow_pickle:
            from ._errors import PickleNotAllowedError

            raise PickleNotAllowedError(
                f"{where} holds values saved with allow_pickle=True; loading them runs pickle, which can "
                "execute code. Pass allow_pickle=True only if you trust this store.")
        check_manifest(m, where)
        devices = blob_devices(m, placement)
        if mmap is None:
            root = self._backend.local_path(CONFIG_KEY)
            mmap = root is not None and mmap_default(root)
        with byte_bar(m.stats.logical_bytes, f"loading step {info.step}", progress) as bar:
            try:
                bufs = read_blobs(self._backend, m, where=where, workers=self.workers, verify=verify, progress=bar,
                                  devices=devices, mmap=bool(mmap))
            except ObjectMissingError as e:
                if not self._backend.exists(info.key):
                    raise CheckpointNotFoundError(
                        f"{where} was removed (by retention or gc) while it was being loaded; "
                        "load another checkpoint") from e
                self._suspect(e)
                raise
            except IntegrityError as e:
                self._suspect(e)
                raise
        tensors = _materialize(m, bufs, placement)
        if placement.kept_on_cpu:
            warnings.warn(
                f"{placement.kept_on_cpu} tensor storage(s) of float64/complex128 stay on the CPU: MPS has no "
                "64-bit floats. Convert them (e.g. .float()) if you need them on MPS.", stacklevel=2)
        state = Decoder(tensors, allow_pickle=allow_pickle).decode(m.tree)
        if restore_rng:
            restore_rng_state(m.rng)
        return state

    # -- maintenance ----------------------------------------------------------------------
    def forget(self, step: int | None = None, *, id: str | None = None) -> CheckpointInfo:
        """Remove one checkpoint's manifest (its objects stay until ``gc`` removes unreferenced
        data). Returns what was removed."""
        if step is None and id is None:
            raise ValueError("forget needs a step or an id")
        info = self.info(step, id=id)
        self._backend.delete(info.key)
        self._backend.sync()
        with self._lock:
            self._manifests.pop(info.key, None)
            self._index = None
        return info

    def verify(self, step: int | None = None, *, id: str | None = None, read_data: bool = True) -> None:
        """Check one checkpoint (the newest by default): its manifest, its structure, and with
        ``read_data`` every object's bytes against its hash. Raises IntegrityError on damage."""
        info = self.info(step, id=id)
        m = self._manifest(info.key)
        where = f"checkpoint step {info.step} ({info.short_id}) in {self.uri}"
        check_manifest(m, where)
        try:
            if read_data:
                verify_objects(self._backend, m, where=where, workers=self.workers)
            else:
                from ._layout import object_key

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


    # -- retention and garbage collection (ckptstore/_gc.py, _retention.py) -----------------
    def set_retention(self, policy: "Retention | None") -> None:
        """Store ``policy`` in ``ckptstore.json`` (None removes it): every writer applies it after
        each save, and ``ckptstore gc`` applies it when given no rules."""
        from ._gc import set_stored_policy

        set_stored_policy(self, policy)

    def get_retention(self) -> "Retention | None":
        """The policy saves apply: the Store's ``retention``, else the stored one, else None."""
        from ._gc import resolve_policy

        return resolve_policy(self)

    def plan_retention(self, policy: "Retention | None" = None) -> "RetentionPlan":
        """What ``policy`` (default: ``get_retention()``) keeps and removes, and why. Changes nothing."""
        from ._gc import resolve_policy
        from ._retention import Retention, plan

        return plan(self.list(), resolve_policy(self, policy) or Retention())

    def gc(self, policy: "Retention | None" = None, *, dry_run: bool = False, grace: float | None = None,
           wait: float = 60.0) -> "GcReport":
        """Forget the checkpoints ``policy`` (default: ``get_retention()``; none: forget nothing)
        removes, then delete objects no checkpoint references. Waits up to ``wait`` seconds for
        saves in other processes to finish before deleting objects (else defers that part)."""
        from ._gc import resolve_policy, run_gc

        self._read_config()
        return run_gc(self, resolve_policy(self, policy), dry_run=dry_run, grace=grace, wait=wait)

    def prune(self, *, dry_run: bool = False, grace: float | None = None, wait: float = 60.0) -> "GcReport":
        """Delete objects no checkpoint references (those of aborted saves only once older than
        ``grace`` seconds, default one hour) and stale temporary files. Forgets nothing."""
        from ._gc import run_gc

        self._read_config()
        return run_gc(self, None, dry_run=dry_run, grace=grace, wait=wait)

    def _apply_retention(self, keep: "Retention | None") -> None:
        """After a committed save: apply retention; a failure here never fails the save."""
        from ._gc import apply_after_save

        try:
            apply_after_save(self, keep)
        except Exception as e:  # noqa: BLE001 - the checkpoint is committed; report, do not raise
            warnings.warn(f"the checkpoint was saved, but applying the retention policy failed: {e}",
                          stacklevel=3)

def _metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"metric names must be non-empty strings, not {k!r}")
        try:
            if isinstance(v, torch.Tensor):
                v = v.detach().float().item()
            f = float(v)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"metric {k!r} must be a number (or a one-element tensor), not {type(v).__name__}") from None
        if isinstance(v, bool):
            raise ValueError(f"metric {k!r} must be a number, not a bool")
        out[k] = f
    return out


def _materialize(m: Manifest, bufs: list[torch.Tensor], placement: Placement) -> list[Any]:
    by_blob: dict[int, list[int]] = {}
    for j, e in enumerate(m.tensors):
        by_blob.setdefault(e.blob, []).append(j)
    out: list[Any] = [None] * len(m.tensors)
    for bi, members in by_blob.items():
        entries = [m.tensors[j] for j in members]
        base = bufs[bi]
        for j, e in zip(members, entries):
            t = entry_to_tensor(e, base if e.kind == "torch" else bufs[bi])
            if placement.callable and e.kind == "torch":
                moved = placement.map_location(t, e.device)  # type: ignore[operator]
                t = t if moved is None else moved
            out[j] = t
    return out
