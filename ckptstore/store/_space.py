"""The disk-space guard of a save (docs/format.md, "Disk space").

Before a save writes anything it estimates the bytes it will add and compares them with the
free space at the destination (``Backend.free_bytes``; or a user-set ``quota`` minus the bytes
the store's checkpoints use, for object stores). Two estimates:

1. an upper bound without reading the data: every tensor byte, uncompressed, plus the
   manifest. Enough in the common case, and costs nothing;
2. when the bound does not fit: the bytes whose content hash is not in the dedup index (the
   writer will skip the rest), times the compression ratio the previous checkpoint reached
   plus 10 %, plus the manifest. This hashes the data once more.

``on_low_space``: ``"fail"`` (default) raises ``InsufficientSpaceError`` before any byte is
written; ``"make_room"`` first applies the retention policy as if the new checkpoint already
existed (the newest existing checkpoint is kept), then estimates again; ``"ignore"`` skips the
check. ``reserve`` bytes must stay free after the save in every mode but "ignore".

A disk that fills up during the write (another process, a bad estimate) raises
``InsufficientSpaceError`` too; the store stays consistent (no manifest was written) and the
objects this save had written are removed again.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._errors import InsufficientSpaceError
from .._units import fmt_bytes, parse_size
from ..format import _hashing
from ..format._info import CheckpointInfo
from ..format._layout import OBJECTS_DIR, parse_object_key
from ..format._tensors import PlannedBlob
from ..pipeline._writer import PACK_ALIGN, DedupIndex, host_bytes
from ._locks import acquire_gc
from ._retention import Retention

if TYPE_CHECKING:
    from ._store import Store

MODES = ("fail", "make_room", "ignore")
#: compression margin on top of the ratio the previous checkpoint reached
RATIO_MARGIN = 1.10


@dataclass(frozen=True)
class SpaceGuard:
    """How a store protects a save from a full disk."""

    on_low_space: str = "fail"
    reserve: int = 0
    quota: int | None = None

    @classmethod
    def make(
        cls, on_low_space: str = "fail", reserve: int | str | None = 0, quota: int | str | None = None
    ) -> SpaceGuard:
        if on_low_space not in MODES:
            raise ValueError(f"on_low_space must be one of {', '.join(MODES)}, not {on_low_space!r}")
        return cls(on_low_space, parse_size(reserve), None if quota is None else parse_size(quota))


def overhead(blobs: list[PlannedBlob]) -> int:
    """Bytes besides tensor data: the manifest and the lease (generous)."""
    return (64 << 10) + 600 * len(blobs)


def upper_bound(blobs: list[PlannedBlob]) -> int:
    return sum(b.nbytes for b in blobs) + overhead(blobs)


def new_raw_bytes(blobs: list[PlannedBlob], index: DedupIndex, *, chunk_size: int, pack_threshold: int) -> int:
    """Raw bytes the writer will store: content whose hash the index (or this save) lacks."""
    seen: set[str] = set()
    total = 0
    for b in blobs:
        n = b.nbytes
        if n == 0:
            continue
        if n < pack_threshold:
            h = _hashing.digest(host_bytes(b.source, 0, n, None)[0])
            with index.lock:
                hit = h in index.blobs
            if not hit and h not in seen:
                seen.add(h)
                total += n + PACK_ALIGN
            continue
        for a in range(0, n, chunk_size):
            e = min(a + chunk_size, n)
            h = _hashing.digest(host_bytes(b.source, a, e, None)[0])
            with index.lock:
                hit = h in index.raw_objects
            if not hit and h not in seen:
                seen.add(h)
                total += e - a
    return total


def compression_ratio(index: DedupIndex, codec: str) -> float:
    """Stored / raw bytes expected for new data: what the indexed objects reached, + 10 %."""
    if codec == "none":
        return 1.0
    with index.lock:
        infos = [info for _key, info in index.raw_objects.values()]
    raw = sum(i.raw_size for i in infos)
    if raw == 0:
        return 1.0
    return min(1.0, sum(i.size for i in infos) / raw * RATIO_MARGIN)


def used_bytes(store: Store) -> int:
    """Bytes of every object the store's checkpoints reference (for quotas)."""
    manifests, _problems = store.catalog.manifests()
    sizes: dict[str, int] = {}
    for m in manifests.values():
        for k, oi in m.objects.items():
            sizes[k] = oi.size
    return sum(sizes.values())


def available(store: Store, guard: SpaceGuard) -> int | None:
    """Bytes a save may add, before the reserve: free space, capped by the quota; None = unknown."""
    free = store.backend.free_bytes()
    if guard.quota is not None:
        q = max(0, guard.quota - used_bytes(store))
        free = q if free is None else min(free, q)
    return free


def _incoming(step: int, metrics: Mapping[str, float], tags: Iterable[str]) -> CheckpointInfo:
    return CheckpointInfo(
        id="~incoming",
        step=step,
        epoch=None,
        created_at=datetime.now(timezone.utc),
        metrics=dict(metrics),
        tags=tuple(tags),
        size=0,
        stored_bytes=0,
        new_bytes=0,
        num_tensors=0,
        key="",
        uri="",
    )


class SpaceCheck:
    """The disk-space guard of one save session (which holds the save lease ``lease_key``)."""

    def __init__(self, store: Store, lease_key: str, keep: Retention | None = None) -> None:
        self.store = store
        self.lease_key = lease_key
        self.keep = keep
        self.made_room: Any = None

    # -- before writing ---------------------------------------------------------------------
    def check(
        self,
        blobs: list[PlannedBlob],
        codec: str,
        index: DedupIndex,
        *,
        step: int,
        metrics: Mapping[str, float],
        tags: Iterable[str],
        parent: CheckpointInfo | None,
        chunk_size: int,
        pack_threshold: int,
    ) -> DedupIndex:
        """Raise ``InsufficientSpaceError`` (or make room) before anything is written; returns
        the dedup index to write with (a fresh one after making room)."""
        store = self.store
        guard: SpaceGuard = store.space
        if guard.on_low_space == "ignore":
            return index
        free = available(store, guard)
        if free is None or free - guard.reserve >= upper_bound(blobs):
            return index
        need = self._estimate(blobs, codec, index, chunk_size, pack_threshold)
        if free - guard.reserve >= need:
            return index
        if guard.on_low_space == "make_room":
            index = self._make_room(step, metrics, tags, parent)
            free = available(store, guard) or 0
            need = self._estimate(blobs, codec, index, chunk_size, pack_threshold)
            if free - guard.reserve >= need:
                return index
        raise self._error(step, need, free, guard)

    def _estimate(
        self, blobs: list[PlannedBlob], codec: str, index: DedupIndex, chunk_size: int, pack_threshold: int
    ) -> int:
        raw = new_raw_bytes(blobs, index, chunk_size=chunk_size, pack_threshold=pack_threshold)
        return math.ceil(raw * compression_ratio(index, codec)) + overhead(blobs)

    def _make_room(
        self, step: int, metrics: Mapping[str, float], tags: Iterable[str], parent: CheckpointInfo | None
    ) -> DedupIndex:
        from ._gc import resolve_policy, run_gc

        store = self.store
        policy = resolve_policy(store, self.keep)
        if policy is None:
            raise InsufficientSpaceError(
                f"not enough space at {store.backend.describe()} and on_low_space='make_room' has no retention "
                "policy to apply: pass retention=Retention(...) to Store, keep=... to save, or store one with "
                "set_retention().",
                needed=None,
                free=store.backend.free_bytes(),
            )
        self.made_room = run_gc(
            store,
            policy,
            incoming=_incoming(step, metrics, tags),
            protect=[parent.id] if parent is not None else [],
            exclude=[self.lease_key],
        )
        keys = store.catalog.manifest_keys()
        return store.catalog.dedup_index(keys, store.catalog.newest(keys))

    def _error(self, step: int, need: int, free: int, guard: SpaceGuard) -> InsufficientSpaceError:
        where = self.store.backend.describe()
        what = "a quota of " + fmt_bytes(guard.quota) + " leaves" if guard.quota is not None else "there are"
        msg = (
            f"not enough space to save step {step} at {where}: it needs about {fmt_bytes(need)} "
            f"({need} bytes) of new data"
        )
        if guard.reserve:
            msg += f" plus a reserve of {fmt_bytes(guard.reserve)}"
        msg += f", but {what} only {fmt_bytes(max(free, 0))} ({free} bytes) free."
        r = self.made_room
        if r is not None and not r.removed:
            msg += (
                " Making room removed nothing: the retention policy keeps every existing checkpoint "
                "(the newest is always kept while a new one is written)."
            )
        elif r is not None:
            msg += (
                f" Making room removed {len(r.removed)} checkpoint(s) and freed {fmt_bytes(r.freed_bytes)}"
                + (f" ({r.deferred})" if r.deferred else "")
                + "."
            )
        msg += (
            " Nothing was written; earlier checkpoints are intact. Free space, apply a retention policy "
            "(`ckptstore gc`, or Store(..., retention=..., on_low_space='make_room')), or save elsewhere."
        )
        return InsufficientSpaceError(msg, needed=need + guard.reserve, free=free)

    # -- after a failed write ---------------------------------------------------------------
    def remove_partial(self, started: float) -> int:
        """Delete unreferenced objects written since ``started``, if no other save runs."""
        store = self.store
        backend = store.backend
        try:
            lease, _busy = acquire_gc(backend, wait=0.0, exclude=[self.lease_key])
        except OSError:
            return 0  # not even a lease file fits; leave it to gc
        if lease is None:
            return 0
        freed = 0
        try:
            manifests, problems = store.catalog.manifests()
            if problems:
                return 0
            referenced = {k for m in manifests.values() for k in m.objects}
            for key in backend.list(OBJECTS_DIR):
                d = parse_object_key(key)
                if d is None or d in referenced:
                    continue
                try:
                    mt = backend.mtime(key)
                    size = backend.size(key)
                except OSError:
                    continue
                if mt is not None and mt >= started - 1.0:
                    backend.delete(key)
                    freed += size
            backend.sync()
        finally:
            lease.release()
        store.catalog.invalidate()
        return freed
