"""Copy checkpoints between two stores at any two URIs (``ckptstore cp``, backup mirrors).

The copy follows the write order of docs/format.md at the destination: a checkpoint's objects
first (only those the destination lacks), then ``sync``, then its manifest (the same bytes, so
the same id), then ``sync``. Every object read from the source is checked against the hash in
its name before it is written ("verified on arrival"); ``readback=True`` also reads each new
object back from the destination and checks it there. An interrupted copy leaves the destination
consistent (at worst some unreferenced objects, which gc removes); running the copy again sends
only what is still missing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .._errors import CheckpointNotFoundError, IntegrityError, ObjectMissingError
from .._progress import byte_bar
from ..format import _hashing
from ..format._info import CheckpointInfo
from ..format._layout import MANIFESTS_DIR, OBJECTS_DIR, object_key, parse_manifest_key, parse_object_key
from ..format._manifest import Manifest, parse_manifest
from ._session import SaveSession

if TYPE_CHECKING:
    from ._store import Store


@dataclass(frozen=True)
class CopyResult:
    """What a copy did. ``copied``: checkpoints committed at the destination by this copy;
    ``present``: selected checkpoints the destination already had (records with the
    destination's ``uri``); objects and bytes that travelled and that were already there."""

    copied: tuple[CheckpointInfo, ...]
    present: tuple[CheckpointInfo, ...]
    objects_copied: int
    bytes_copied: int
    objects_present: int
    bytes_present: int


def select_checkpoints(
    src: Store,
    *,
    steps: Iterable[int] | None = None,
    ids: Iterable[str] | None = None,
    all: bool = False,
    latest: int | None = None,
) -> list[CheckpointInfo]:
    """The checkpoints a copy takes from ``src``: the union of ``steps`` (the newest at each),
    ``ids`` (unique prefixes), ``all`` and the ``latest`` K; the newest one when nothing is given."""
    if latest is not None and (isinstance(latest, bool) or not isinstance(latest, int) or latest < 1):
        raise ValueError(f"latest must be a positive int, not {latest!r}")
    steps, ids = list(steps or ()), list(ids or ())
    everything = src.list()
    if not everything:
        raise CheckpointNotFoundError(f"the store {src.uri} has no checkpoints to copy")
    chosen: dict[str, CheckpointInfo] = {}
    if all:
        chosen.update((i.id, i) for i in everything)
    if latest is not None:
        chosen.update((i.id, i) for i in everything[-latest:])
    for s in steps:
        i = src.info(s)
        chosen[i.id] = i
    for x in ids:
        i = src.info(id=x)
        chosen[i.id] = i
    if not (all or latest is not None or steps or ids):
        newest = src.latest()
        if newest is not None:
            chosen[newest.id] = newest
    return sorted(chosen.values(), key=lambda i: (i.step, i.created_at, i.id))


def copy_between(
    src: Store,
    dst: Store,
    chosen: list[CheckpointInfo],
    *,
    workers: int,
    readback: bool = False,
    progress: bool | None = None,
) -> CopyResult:
    """Copy ``chosen`` checkpoints of ``src`` to ``dst`` (created when missing): only objects the
    destination lacks travel, verified on arrival; each manifest goes last. The public entry points
    are ``ckptstore.copy_checkpoints`` and ``Store.copy_to``."""
    return _Copier(src, dst, workers, readback).run(chosen, progress)


class _Copier:
    def __init__(self, src: Store, dst: Store, workers: int, readback: bool) -> None:
        self.src, self.dst = src, dst
        self.workers = max(1, workers)
        self.readback = readback
        self.lock = threading.Lock()
        self.objects = 0
        self.bytes = 0

    def _manifest(self, info: CheckpointInfo) -> tuple[bytes, Manifest]:
        where = self.src.backend.describe(info.key)
        try:
            raw = self.src.backend.read(info.key)
        except FileNotFoundError:
            raise CheckpointNotFoundError(
                f"checkpoint {info.short_id} (step {info.step}) was removed from {self.src.uri} during the copy"
            ) from None
        if _hashing.digest(raw) != info.id:
            raise IntegrityError(f"manifest {where} does not match its hash; not copying a damaged checkpoint")
        return raw, parse_manifest(raw, where)

    def _copy_object(self, key: str, size: int, bar: Callable[[int], None] | None) -> None:
        okey = object_key(key)
        try:
            data = self.src.backend.read(okey)
        except FileNotFoundError:
            raise ObjectMissingError(
                f"object {key} is missing from the source {self.src.backend.describe(okey)}; "
                "the source checkpoint is damaged (see `ckptstore verify`)",
                key,
            ) from None
        if len(data) != size or _hashing.digest(data) != key:
            raise IntegrityError(
                f"object {key} read from {self.src.uri} does not match its hash; not copying it "
                "(the source is damaged, or the transfer was corrupted: retry)"
            )
        self.dst.backend.write(okey, data, if_absent=True)
        if self.readback:
            back = self.dst.backend.read(okey)
            if _hashing.digest(back) != key:
                raise IntegrityError(f"object {key} written to {self.dst.uri} reads back different bytes")
        with self.lock:
            self.objects += 1
            self.bytes += len(data)
        if bar is not None:
            bar(len(data))

    def run(self, chosen: list[CheckpointInfo], progress: bool | None) -> CopyResult:
        # a copy is a save at the destination: it decides to reuse objects there, so it holds a
        # save lease until its last manifest is written
        with SaveSession(self.dst) as session:
            return self._run(chosen, progress, session)

    def _run(self, chosen: list[CheckpointInfo], progress: bool | None, session: SaveSession) -> CopyResult:
        have_objects = {h for h in map(parse_object_key, self.dst.backend.list(OBJECTS_DIR)) if h is not None}
        have_manifests = {k for k in self.dst.backend.list(MANIFESTS_DIR) if parse_manifest_key(k) is not None}
        plans = []
        planned: set[str] = set()
        counted: set[str] = set()
        total = present_objects = present_bytes = 0
        for info in reversed(chosen):  # newest first: if interrupted, the newest made it
            raw, m = self._manifest(info)
            need = []
            for h, oi in m.objects.items():
                if h in have_objects or h in planned:
                    if h in have_objects and h not in counted:
                        counted.add(h)
                        present_objects += 1
                        present_bytes += oi.size
                    continue
                planned.add(h)
                need.append((h, oi.size))
                total += oi.size
            plans.append((info, raw, m, need))
        copied, present = [], []
        threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckptstore-copy")
        with byte_bar(total, f"copying to {self.dst.uri}", progress) as bar, threads as pool:
            for info, raw, m, need in plans:
                # list() consumes the iterator: the first failure propagates, nothing is committed
                list(pool.map(lambda hs: self._copy_object(hs[0], hs[1], bar), need))
                if info.key in have_manifests:
                    present.append(dataclasses.replace(info, uri=self.dst.uri))
                    continue
                self.dst.backend.sync()  # objects durable before the manifest names them
                copied.append(session.publish(raw, m))
        copied.sort(key=lambda i: (i.step, i.created_at, i.id))
        present.sort(key=lambda i: (i.step, i.created_at, i.id))
        return CopyResult(
            copied=tuple(copied),
            present=tuple(present),
            objects_copied=self.objects,
            bytes_copied=self.bytes,
            objects_present=present_objects,
            bytes_present=present_bytes,
        )
