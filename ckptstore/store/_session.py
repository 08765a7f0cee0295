"""A save as two steps: *stage* (write a state's objects durably) and *commit* (write the manifest).

``Store.save`` is one session with one stage and one commit. A copy commits manifests it did not
stage (``publish``); a distributed save stages on every rank and commits once, on the coordinator,
with every rank's ``Staged`` part. A session holds the save lease from ``open`` (before it decides
which objects to reuse) until ``close``, so no gc sweeps an object it named (docs/format.md §15)::

    with store.session() as s:
        staged = s.stage(state)
        info = s.commit(staged, step=100, metrics={"loss": 0.1})
"""

from __future__ import annotations

import operator
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, JsonValue

from .._errors import InsufficientSpaceError, StorageError
from .._lazy import lazy
from .._progress import byte_bar
from .._units import fmt_bytes
from .._version import __version__
from ..format import _hashing
from ..format._config import config_as_data
from ..format._info import CheckpointInfo
from ..format._layout import MAX_STEP, manifest_key, object_key
from ..format._manifest import (
    Blob,
    Distributed,
    Manifest,
    ObjectInfo,
    RngState,
    Stats,
    TensorEntry,
    dump,
    manifest_version,
)
from ..format._tensors import plan_tensors
from ..format._tree import V3_TAGS, Decoder, Encoder, TensorRef, contains_tag, rebase_tensors
from ..pipeline._codec import resolve_compression
from ..pipeline._reader import check_manifest
from ..pipeline._rng import capture_rng_state
from ..pipeline._writer import DedupIndex, blob_groups, effective_chunking, planned_device_sync, write_blobs
from . import _suspect
from ._catalog import Catalog
from ._locks import Lease, acquire_save
from ._retention import Retention, check_policy
from ._space import SpaceCheck

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())

if TYPE_CHECKING:
    from ._store import Store

#: smaller tensors share pack objects; larger ones get their own, so gc can free them separately
DEFAULT_PACK_THRESHOLD = 1 << 20
DEFAULT_PACK_SIZE = 16 << 20


class Staged(BaseModel):
    """What one ``stage`` wrote: the encoded state and where its bytes are. Every object it names
    was durable when ``stage`` returned. JSON-serializable, so it can travel between processes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tree: JsonValue
    tensors: list[TensorEntry]
    blobs: list[Blob]
    objects: dict[str, ObjectInfo]
    logical_bytes: int
    new_bytes: int = 0
    new_objects: int = 0

    @classmethod
    def merge(cls, parts: Sequence[Staged], tree: Any = None) -> Staged:
        """One ``Staged`` from several: tensor tables concatenated in order (their blob indices
        rebased). ``tree`` indexes the concatenated table; by default, the list of the parts'
        trees (each rebased)."""
        if len(parts) == 1 and tree is None:
            return parts[0]
        tensors: list[TensorEntry] = []
        blobs: list[Blob] = []
        objects: dict[str, ObjectInfo] = {}
        trees = []
        for p in parts:
            trees.append(rebase_tensors(p.tree, len(tensors)))
            tensors.extend(t.model_copy(update={"blob": t.blob + len(blobs)}) for t in p.tensors)
            blobs.extend(p.blobs)
            objects.update(p.objects)
        return cls(
            tree=trees if tree is None else tree,
            tensors=tensors,
            blobs=blobs,
            objects=objects,
            logical_bytes=sum(p.logical_bytes for p in parts),
            new_bytes=sum(p.new_bytes for p in parts),
            new_objects=sum(p.new_objects for p in parts),
        )


def check_step(step: Any) -> int | None:
    """``step`` as an int (NumPy and 0-d integer tensor steps too), or None; a ValueError for
    anything else or a negative or too large step."""
    if step is None:
        return None
    if not isinstance(step, int) and hasattr(step, "__index__") and getattr(step, "ndim", 0) == 0:
        try:
            step = operator.index(step)  # numpy.int64(8), torch.tensor(8)
        except TypeError:
            pass
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be an int from 0 to {MAX_STEP}, not {step!r}")
    return step


def check_details(
    *, step: Any = None, epoch: Any = None, metrics: Mapping[str, Any] | None = None, tags: Iterable[str] | str = ()
) -> tuple[int | None, dict[str, float], list[str]]:
    """Validate a checkpoint's step, epoch, metrics and tags before anything is written."""
    step = check_step(step)
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)):
        raise ValueError(f"epoch must be an int or None, not {epoch!r}")
    tag_list = [tags] if isinstance(tags, str) else list(tags)
    if not all(isinstance(t, str) and t for t in tag_list):
        raise ValueError(f"tags must be non-empty strings, not {tag_list!r}")
    return step, metric_values(metrics), tag_list


def metric_values(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    if metrics is not None and not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a mapping of names to numbers, like {{'loss': 0.5}}, not {metrics!r}")
    for k, v in (metrics or {}).items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"metric names must be non-empty strings, not {k!r}")
        if isinstance(v, bool):
            raise ValueError(f"metric {k!r} must be a number, not a bool")
        try:
            if isinstance(v, torch.Tensor):
                v = v.detach().float().item()
            out[k] = float(v)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"metric {k!r} must be a number (or a one-element tensor), not {type(v).__name__}"
            ) from None
    return out


class SaveSession:
    """One save (or copy) into ``store``; see the module docstring. Use as a context manager, or
    call ``open`` and then ``close`` (``abort`` is ``close`` without a commit)."""

    def __init__(self, store: Store, *, keep: Retention | None = None, lease: bool = True) -> None:
        self.store = store
        self.catalog: Catalog = store.catalog
        self.backend = store.backend
        self.keep = None if keep is None else check_policy(keep)
        self.own_lease = lease
        """False: stage only, under a lease another process holds (docs/format.md §21)."""
        self.lease: Lease | None = None
        self._open = False
        self.parent: CheckpointInfo | None = None
        """The newest checkpoint when the session opened (the new one's parent), or None."""
        self.index: DedupIndex | None = None
        self.started = 0.0
        self.committed: list[CheckpointInfo] = []
        self._space: SpaceCheck | None = None
        self._writing = False
        self._written: set[str] = set()  # objects this session created: what a failed save removes
        self._suspect: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> SaveSession:
        return self.open()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if isinstance(exc, InsufficientSpaceError) and self._writing and self._space is not None:
                freed = self._space.remove_partial(self.started, self._written)
                inner = str(exc).rstrip(".")
                tail = f" The {fmt_bytes(freed)} this save had written were removed again." if freed else ""
                raise InsufficientSpaceError(
                    f"the disk at {self.backend.describe()} filled up during the save: {inner}.{tail}",
                    needed=None,
                    free=self.backend.free_bytes(),
                ) from exc
        finally:
            self.close()

    def open(self) -> SaveSession:
        """Create the store if needed, take the save lease, find the parent, build the dedup index."""
        if self._open:
            return self
        self.catalog.ensure()
        if self.own_lease:
            self.lease = acquire_save(self.backend)
        self.started = time.time()
        try:
            keys = self.catalog.manifest_keys()  # one listing: the parent and the index's check reuse it
            self.parent = self.catalog.newest(keys)
            self.index = self.catalog.dedup_index(keys, self.parent)
        except BaseException:
            self.close()
            raise
        self._space = SpaceCheck(self.store, self.lease.key if self.lease is not None else "", self.keep)
        self._open = True
        return self

    def close(self) -> None:
        """Release the lease. Objects staged but never committed stay until a gc's grace period ends."""
        self._open = False
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release()

    abort = close

    def _require_open(self) -> tuple[Lease | None, DedupIndex, SpaceCheck]:
        if not self._open or self.index is None or self._space is None:
            raise RuntimeError("the save session is not open: use `with store.session() as s:`")
        return self.lease, self.index, self._space

    # -- stage -----------------------------------------------------------------------------
    def stage(
        self,
        state: Any,
        *,
        compression: str | bool | None = None,
        allow_pickle: bool = False,
        progress: bool | None = None,
        step: int | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Iterable[str] = (),
        cores: int | None = None,
    ) -> Staged:
        """Write the tensors of ``state`` as objects (deduplicated against the store, durable when
        this returns) and encode the rest as a JSON tree. ``step``, ``metrics`` and ``tags`` only
        label messages and the disk-space guard's plan (``on_low_space="make_room"``).
        ``compression``, ``allow_pickle``, ``progress``: as in ``Store.save``. ``cores``: how many
        CPU cores the writer threads may keep busy (default: all of the machine's; a process that
        stages while others on the same machine do, such as one rank of several, passes its
        share so that they do not crowd the cores)."""
        _lease, index, space = self._require_open()
        store = self.store
        codec = store.compression if compression is None else resolve_compression(compression)
        enc = Encoder(allow_pickle=allow_pickle)
        tree = enc.encode(state)
        plan = plan_tensors(enc.tensors)
        label = step if step is not None else (self.parent.step + 1 if self.parent is not None else 0)
        planned_device_sync(plan.blobs)
        total = sum(b.nbytes for b in plan.blobs)
        suspect = _suspect.bad(self.backend.describe())
        chunk, pack_threshold, pack_size = effective_chunking(
            codec,
            store.chunk_size,
            min(DEFAULT_PACK_THRESHOLD, store.chunk_size // 2),
            min(DEFAULT_PACK_SIZE, store.chunk_size),
        )
        index = space.check(
            plan.blobs,
            codec,
            index,
            step=label,
            metrics=dict(metrics or {}),
            tags=list(tags),
            parent=self.parent,
            chunk_size=chunk,
            pack_threshold=pack_threshold,
        )
        self.index = index
        self._writing = True  # from here, a full disk removes what this save wrote
        with byte_bar(total, f"saving step {label}", progress) as bar:
            res = write_blobs(
                self.backend,
                plan.blobs,
                codec=codec,
                index=index,
                chunk_size=store.chunk_size,
                pack_threshold=pack_threshold,
                pack_size=pack_size,
                workers=store.workers,
                groups=blob_groups(plan.entries, len(plan.blobs)),
                progress=bar,
                suspect=suspect,
                written=self._written,
                cores=cores,
            )
        self.backend.sync()  # objects' names are durable before any manifest names them
        self._suspect |= suspect & set(res.objects)
        tensors = [
            TensorEntry(
                kind="numpy" if e.kind == "numpy" else "torch",
                dtype=e.dtype,
                shape=e.shape,
                stride=e.stride,
                blob=e.blob,
                offset=e.offset,
                device=e.device,
                requires_grad=e.requires_grad,
                parameter=e.parameter,
            )
            for e in plan.entries
        ]
        return Staged(
            tree=tree,
            tensors=tensors,
            blobs=res.blobs,
            objects=dict(res.objects),
            logical_bytes=total,
            new_bytes=res.new_bytes,
            new_objects=res.new_objects,
        )

    # -- commit ----------------------------------------------------------------------------
    def commit(
        self,
        staged: Staged | Sequence[Staged],
        *,
        tree: Any = None,
        step: int | None = None,
        epoch: int | None = None,
        config: Any = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Iterable[str] | str = (),
        meta: Mapping[str, Any] | None = None,
        rng: bool | RngState | None = True,
        allow_pickle: bool = False,
        state: Any = None,
        distributed: Distributed | None = None,
    ) -> CheckpointInfo:
        """Write the manifest of ``staged`` (one part, or the parts of every rank, merged with
        ``Staged.merge``): the commit point. ``step`` defaults to the parent's + 1.

        ``state`` (instead of ``tree``): the state as Python values whose tensors are
        ``TensorRef(i)`` (tensor ``i`` of the concatenated tables of the parts) or
        ``ShardedTensor`` leaves (chunks naming such indices). ``distributed``: the section of a
        checkpoint written by several processes (docs/format.md §21); its ``sharded`` list is
        filled from ``state``. Such a manifest is format version 2. ``epoch``, ``config``,
        ``metrics``, ``tags``, ``meta``, ``rng`` and ``allow_pickle``: as in ``Store.save``."""
        step, metric_vals, tag_list = check_details(step=step, epoch=epoch, metrics=metrics, tags=tags)
        parts = [staged] if isinstance(staged, Staged) else list(staged)
        if not parts:
            raise ValueError("commit needs at least one staged part")
        if state is not None:
            if tree is not None:
                raise ValueError("pass either tree or state to commit, not both")
            enc = Encoder(allow_pickle=allow_pickle, refs=True)
            tree = enc.encode(state)
            if distributed is not None:
                distributed = distributed.model_copy(update={"sharded": list(enc.sharded)})
            elif enc.sharded:
                raise ValueError("a state with sharded tensors needs a distributed section")
        s = Staged.merge(parts, tree)
        config_tree = Encoder(allow_pickle=allow_pickle, allow_tensors=False).encode(config_as_data(config), "config")
        meta_tree = Encoder(allow_tensors=False).encode(dict(meta or {}), "meta")
        rng_state = rng if isinstance(rng, RngState) else (capture_rng_state() if rng else None)
        parent = self.parent
        if step is None:
            step = parent.step + 1 if parent is not None else 0
        stats = Stats(
            logical_bytes=s.logical_bytes,
            stored_bytes=sum(i.size for i in s.objects.values()),
            new_bytes=s.new_bytes,
            new_objects=s.new_objects,
        )
        m = Manifest(
            step=step,
            epoch=epoch,
            created_at=datetime.now(timezone.utc),
            config=config_tree,
            metrics=metric_vals,
            tags=tag_list,
            meta=meta_tree,
            rng=rng_state,
            producer={"ckptstore": __version__, "torch": torch.__version__, "python": platform.python_version()},
            parent=parent.id if parent is not None else None,
            tree=s.tree,
            tensors=s.tensors,
            blobs=s.blobs,
            objects=dict(sorted(s.objects.items())),
            stats=stats,
            version=manifest_version(distributed=distributed is not None, v3=contains_tag(s.tree, V3_TAGS)),
            distributed=distributed,
        )
        if distributed is not None or state is not None:  # assembled here: check it as a reader will
            check_manifest(m, "the new checkpoint")
            Decoder(
                [TensorRef(i) for i in range(len(m.tensors))],
                allow_pickle=True,
                sharded=m.distributed.sharded if m.distributed is not None else None,
            ).decode(m.tree)
        info = self.publish(dump(m), m)
        if self._suspect:
            _suspect.clear(self.backend.describe(), self._suspect)  # rewritten whole
            self._suspect = set()
        return info

    def publish(self, data: bytes, m: Manifest) -> CheckpointInfo:
        """Write manifest bytes ``data`` (of model ``m``) whose objects are durable: the commit
        point. A copy publishes a source manifest's exact bytes, so the checkpoint keeps its id."""
        lease, _index, _space = self._require_open()
        if lease is None:
            raise RuntimeError("a session opened with lease=False only stages; the process holding the lease commits")
        self._confirm(lease, m.objects)
        digest = _hashing.digest(data)
        key = manifest_key(m.step, digest)
        self.backend.write(key, data)
        self.backend.sync()
        self._writing = False
        self._written = set()
        self.catalog.added(key, m, data)
        info = self.catalog.info(key, digest, m)
        self.committed.append(info)
        return info

    def _confirm(self, lease: Lease, objects: Iterable[str]) -> None:
        """If the lease was lost (this process paused past the stale time and a gc ran), take a
        new one and check every object still exists before committing."""
        if lease.held():
            return
        lease.release()
        self.lease = None
        self.lease = acquire_save(self.backend)
        missing = [k for k in objects if not self.backend.exists(object_key(k))]
        if missing:
            self.catalog.invalidate()
            raise StorageError(
                f"this save to {self.backend.describe()} was paused longer than the lock timeout and a gc removed "
                f"{len(missing)} object(s) it needed (e.g. {missing[0]}). Nothing was committed; save again."
            )


__all__ = ["SaveSession", "Staged", "check_details", "metric_values"]
