"""Copy checkpoints between two stores at any two URIs (``ckptstore cp``, backup mirrors).

The copy follows the write order of docs/format.md at the destination: a checkpoint's objects
first (only those the destination lacks), then ``sync``, then its manifest (the same bytes, so
the same id), then ``sync``. Every object read from the source is checked against the hash in
its name before it is written ("verified on arrival"); ``readback=True`` also reads each new
object back from the destination and checks it there; ``repair=True`` first reads what the
destination already holds of the chosen checkpoints and writes again what does not match its hash
(restoring a damaged store from its backup). An interrupted copy leaves the destination
consistent (at worst some unreferenced objects, which gc removes); running the copy again sends
only what is still missing.

A damaged source checkpoint (its manifest or an object it needs does not match its hash, or is
missing) does not stop the others: every healthy checkpoint is copied, then
``CopyIncompleteError`` (an ``IntegrityError``) names the damaged ones and carries the result.
A storage failure (network, dead mount) stops the copy at once; a rerun resumes.
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
    replaced: int = 0
    """With ``repair``: damaged objects, manifests and config at the destination written again."""
    config_rewritten: bool = False
    """With ``repair``: the destination's damaged ``ckptstore.json`` was written again, without a
    retention policy (the damaged one's cannot be trusted)."""


class CopyIncompleteError(IntegrityError):
    """Some selected checkpoints are damaged at the source and were not copied; every healthy one
    was. ``result``: what the copy did; ``damaged``: (checkpoint, what is wrong) for the others."""

    def __init__(self, result: CopyResult, damaged: list[tuple[CheckpointInfo, str]]) -> None:
        what = "; ".join(f"step {i.step} ({i.short_id}): {why}" for i, why in damaged)
        super().__init__(
            f"{len(damaged)} checkpoint(s) damaged at the source, not copied: {what}. "
            f"The {len(result.copied) + len(result.present)} healthy one(s) are in the destination; "
            "`ckptstore verify` on the source shows the damage"
        )
        self.result = result
        self.damaged = damaged


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
    repair: bool = False,
    progress: bool | None = None,
) -> CopyResult:
    """Copy ``chosen`` checkpoints of ``src`` to ``dst`` (created when missing): only objects the
    destination lacks travel, verified on arrival; each manifest goes last. ``repair``: first read
    what the destination already has of them and replace what does not match its hash. The public
    entry points are ``ckptstore.copy_checkpoints`` and ``Store.copy_to``."""
    return _Copier(src, dst, workers, readback, repair).run(chosen, progress)


class _Copier:
    def __init__(self, src: Store, dst: Store, workers: int, readback: bool, repair: bool = False) -> None:
        self.src, self.dst = src, dst
        self.workers = max(1, workers)
        self.readback = readback
        self.repair = repair
        self.replaced = 0
        self.damaged_here: set[str] = set()
        self.config_rewritten = False
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
        self.dst.backend.write(okey, data, if_absent=not self.repair)  # repair: a damaged copy may be there
        if self.readback:
            back = self.dst.backend.read(okey)
            if _hashing.digest(back) != key:
                raise IntegrityError(f"object {key} written to {self.dst.uri} reads back different bytes")
        with self.lock:
            self.objects += 1
            self.bytes += len(data)
            self.replaced += key in self.damaged_here
        if bar is not None:
            bar(len(data))

    def _intact(self, key: str, digest: str) -> bool:
        """Whether the destination's bytes at ``key`` hash to ``digest`` (False when unreadable)."""
        try:
            return _hashing.digest(self.dst.backend.read(key)) == digest
        except FileNotFoundError:
            return False

    def _damaged_at_dst(self, chosen: list[CheckpointInfo], have_objects: set[str], have_manifests: set[str]) -> None:
        """``repair``: drop from the two sets what the destination holds damaged (read and hashed
        there), so that the copy writes it again."""
        manifests = [i for i in chosen if i.key in have_manifests]
        needed: set[str] = set()
        for info in chosen:
            try:
                needed.update(h for h in self._manifest(info)[1].objects if h in have_objects)
            except IntegrityError:
                continue  # damaged at the source: reported by the copy itself
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckptstore-repair") as pool:
            bad_m = [
                i.key for i, ok in zip(manifests, pool.map(lambda i: self._intact(i.key, i.id), manifests)) if not ok
            ]
            objs = sorted(needed)
            bad_o = [h for h, ok in zip(objs, pool.map(lambda h: self._intact(object_key(h), h), objs)) if not ok]
        have_manifests.difference_update(bad_m)
        have_objects.difference_update(bad_o)
        self.damaged_here = set(bad_m) | set(bad_o)  # counted in ``replaced`` once written again

    def run(self, chosen: list[CheckpointInfo], progress: bool | None) -> CopyResult:
        # a copy is a save at the destination: it decides to reuse objects there, so it holds a
        # save lease until its last manifest is written
        exists = self.dst.exists()
        if not exists and not self.dst.catalog.manifest_keys():
            # a new destination cuts as the source does: what is saved there later dedups against the copies
            self.dst.catalog.chunk_size = self.src.config.chunk_size or self.dst.catalog.chunk_size
        elif not exists and self.repair:  # checkpoints without a config: its config is written again
            self.config_rewritten = True
            self.replaced += 1
        if self.repair and exists and self.dst.catalog.config_damage() is not None:
            # what is still legible of it is kept (chunk size, creation time); its policy cannot be trusted
            self.dst.catalog.set_stored_policy(None)
            self.config_rewritten = True
            self.replaced += 1
        with SaveSession(self.dst) as session:
            return self._run(chosen, progress, session)

    def _run(self, chosen: list[CheckpointInfo], progress: bool | None, session: SaveSession) -> CopyResult:
        have_objects = {h for h in map(parse_object_key, self.dst.backend.list(OBJECTS_DIR)) if h is not None}
        have_manifests = {k for k in self.dst.backend.list(MANIFESTS_DIR) if parse_manifest_key(k) is not None}
        if self.repair:
            self._damaged_at_dst(chosen, have_objects, have_manifests)
        plans = []
        planned: set[str] = set()
        counted: set[str] = set()
        total = present_objects = present_bytes = 0
        damaged: list[tuple[CheckpointInfo, str]] = []
        for info in reversed(chosen):  # newest first: if interrupted, the newest made it
            try:
                raw, m = self._manifest(info)
            except IntegrityError as e:
                damaged.append((info, str(e)))
                continue
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
        bad: dict[str, str] = {}  # object -> what is wrong with it at the source
        threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckptstore-copy")
        with byte_bar(total, f"copying to {self.dst.uri}", progress) as bar, threads as pool:
            for info, raw, m, need in plans:
                futures = [(h, pool.submit(self._copy_object, h, size, bar)) for h, size in need]
                for h, fut in futures:  # every one finishes; a storage failure propagates
                    try:
                        fut.result()
                    except IntegrityError as e:  # damaged at the source (or missing there)
                        bad[h] = str(e)
                problems = [bad[h] for h in m.objects if h in bad]
                if problems:
                    damaged.append((info, problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")))
                    continue
                if info.key in have_manifests:
                    present.append(dataclasses.replace(info, uri=self.dst.uri))
                    continue
                self.dst.backend.sync()  # objects durable before the manifest names them
                copied.append(session.publish(raw, m))
                self.replaced += info.key in self.damaged_here
        copied.sort(key=lambda i: (i.step, i.created_at, i.id))
        present.sort(key=lambda i: (i.step, i.created_at, i.id))
        result = CopyResult(
            copied=tuple(copied),
            present=tuple(present),
            objects_copied=self.objects,
            bytes_copied=self.bytes,
            objects_present=present_objects,
            bytes_present=present_bytes,
            replaced=self.replaced,
            config_rewritten=self.config_rewritten,
        )
        if damaged:
            damaged.sort(key=lambda d: (d[0].step, d[0].created_at, d[0].id))
            raise CopyIncompleteError(result, damaged)
        return result
