"""Garbage collection: forget checkpoints a retention plan removes, then sweep objects no
manifest references (mark and sweep; docs/format.md, "Deleting").

Order, and why it is safe against saves in other processes:

1. *Forget*: delete the removed checkpoints' manifests (always safe: a manifest is only read).
2. Take a ``gc`` lease and wait until no live ``save`` lease exists (``_locks``). A save holds
   its lease from before it builds its dedup index until its manifest is written, and a save that
   starts now sees our lease and waits; so no save is between "decided to reuse object X" and
   "committed a manifest naming X" while we sweep.
3. *Mark*: read every manifest present now; every object they name is live. A manifest that
   cannot be read stops the sweep (we cannot know what it references).
4. *Sweep*: delete unreferenced objects. Objects of manifests this run forgot are deleted at
   once; any other unreferenced object (an aborted save's data) only when its modification time
   is older than ``grace`` seconds; temporary files ``.<name>.tmp-*`` when older than both
   ``grace`` and ``TEMP_MIN_AGE`` (ten minutes).

The store's in-memory dedup index is dropped afterwards, so its next save cannot name a
deleted object.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .._errors import (
    CheckpointNotFoundError,
    CkptstoreWarning,
    IntegrityError,
    InvalidArgumentError,
    UnsupportedFormatError,
)
from ..format._info import CheckpointInfo
from ..format._layout import MANIFESTS_DIR, OBJECTS_DIR, is_temporary, parse_object_key
from ..format._manifest import Manifest
from ._locks import LOCKS_DIR, Lease, acquire_gc
from ._retention import Retention, RetentionPlan, check_policy, plan

if TYPE_CHECKING:
    from ._store import Store

log = logging.getLogger("ckptstore")

#: unreferenced objects younger than this are left alone (seconds)
GRACE = 3600.0
#: temporary files younger than this are left alone whatever the grace (a write in progress,
#: including a lease being written, which no lease protects)
TEMP_MIN_AGE = 600.0


@dataclass
class GcReport:
    """What a gc (or prune) did, or with ``dry_run`` would do."""

    plan: RetentionPlan | None
    removed: list[CheckpointInfo] = field(default_factory=list)
    """Checkpoints forgotten (dry run: that would be)."""
    deleted_objects: int = 0
    freed_bytes: int = 0
    """Bytes of objects deleted (dry run: that would be)."""
    deleted_temp: int = 0
    young_objects: int = 0
    """Unreferenced objects left because they are younger than the grace period."""
    young_bytes: int = 0
    deferred: str | None = None
    """Why objects were not swept (a save in progress), or None."""
    problems: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        rm = "would remove" if self.dry_run else "removed"
        out = (
            f"{rm} {len(self.removed)} checkpoint(s), {self.deleted_objects} object(s); {verb} {self.freed_bytes} bytes"
        )
        if self.young_objects:
            out += f"; left {self.young_objects} unreferenced object(s) younger than the grace period"
        if self.deferred:
            out += f"; sweep deferred: {self.deferred}"
        return out


def mark(store: Store) -> tuple[set[str], list[str], dict[str, Manifest]]:
    """(referenced object keys, problems, manifests by key) from every manifest present now."""
    manifests, problems = store.catalog.manifests()
    referenced = {k for m in manifests.values() for k in m.objects}
    return referenced, problems, manifests


def forget(store: Store, infos: Iterable[CheckpointInfo]) -> list[CheckpointInfo]:
    """Delete these checkpoints' manifests (their objects stay until a sweep)."""
    done = list(infos)
    _delete_manifests(store, [i.key for i in done])
    return done


def _delete_manifests(store: Store, keys: list[str]) -> None:
    for key in keys:
        store.backend.delete(key)
    if keys:
        store.backend.sync()
        store.catalog.removed(keys)


@dataclass(frozen=True)
class ManifestEntry:
    """One manifest present in a store, readable or not: what ``forget_manifests`` takes."""

    step: int
    id: str
    key: str
    damage: str | None = None
    """Why the manifest cannot be used (its bytes do not match its name, it does not validate), or None."""


def select_manifests(
    store: Store, *, steps: Iterable[int] = (), ids: Iterable[str] = (), damaged: bool = False
) -> list[ManifestEntry]:
    """The manifest at each of ``steps`` (``InvalidArgumentError`` when a step holds several), with
    ids or unique id prefixes ``ids``, and with ``damaged`` every damaged one: found from the
    listing alone, so a damaged manifest can be named too. ``CheckpointNotFoundError`` for a step
    or id that names none. A manifest of a newer format version is not damage and is never
    selected by ``damaged``."""
    keys = store.catalog.manifest_keys()
    chosen: dict[str, tuple[int, str]] = {}
    for step in steps:
        found = [k for k in keys if k[0] == step]
        if not found:
            raise CheckpointNotFoundError(f"no checkpoint at step {step} in {store.uri}")
        if len(found) > 1:  # saving a step twice keeps both: which one is meant is not for us to guess
            ids = ", ".join(d[:12] for _s, d, _k in found)
            raise InvalidArgumentError(f"step {step} holds {len(found)} checkpoints ({ids}): name one with --id")
        chosen.update((key, (s, d)) for s, d, key in found)
    for prefix in ids:
        s, d, key = store.catalog.key_for_id(prefix, keys)
        chosen[key] = (s, d)
    out = []
    for step, digest, key in keys:
        damage = None
        if key in chosen or damaged:
            try:
                store.catalog.manifest(key)
            except CheckpointNotFoundError:
                continue
            except UnsupportedFormatError:
                pass
            except IntegrityError as e:
                damage = str(e)
        if key in chosen or (damaged and damage is not None):
            out.append(ManifestEntry(step, digest, key, damage))
    return out


def forget_manifests(store: Store, entries: Iterable[ManifestEntry]) -> list[ManifestEntry]:
    """Delete these manifests, damaged ones included (their objects stay until a sweep)."""
    done = list(entries)
    _delete_manifests(store, [e.key for e in done])
    return done


def _objects_of(store: Store, infos: Iterable[CheckpointInfo]) -> dict[str, int]:
    out: dict[str, int] = {}
    for info in infos:
        try:
            m = store.catalog.manifest(info.key)
        except (CheckpointNotFoundError, IntegrityError, UnsupportedFormatError):
            continue
        for k, oi in m.objects.items():
            out[k] = oi.size
    return out


def _age(store: Store, key: str, now: float) -> float | None:
    try:
        mt = store.backend.mtime(key)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    return None if mt is None else now - mt


#: how to repair a damaged ``ckptstore.json``: storing a policy rewrites it with a fresh checksum
REPAIR_CONFIG = (
    "Store the policy again: `ckptstore gc URI --set-policy --keep-...` (or `--clear-policy` for none), "
    "or Store.set_retention(...)"
)

#: what to do about manifests that cannot be read (gc, du and verify say it)
DAMAGED_MANIFESTS = (
    "Run `ckptstore verify URI`; a damaged checkpoint is copied again from a backup with `ckptstore cp BACKUP "
    "URI --all --repair`, or removed with `ckptstore forget URI --damaged` (then gc frees the data only it used)"
)

#: what gc and verify say of a store with objects and no manifests/ folder
LOST_MANIFESTS = (
    "the store holds objects but no checkpoint (its manifests/ folder is missing), so gc deletes none of them: "
    "if its checkpoints were lost in a copy, copy them again; if the store is no longer wanted, delete its folder"
)


def manifests_folder_missing(store: Store) -> bool:
    """Whether a local store has no manifests/ folder at all: its objects then belong to
    checkpoints that were lost (a partial copy), not forgotten (forgetting the last checkpoint
    leaves the folder). Object stores have no folders to tell the two apart: False."""
    path = store.backend.local_path(MANIFESTS_DIR)
    return path is not None and os.path.isdir(os.path.dirname(path)) and not os.path.isdir(path)


def sweep(
    store: Store,
    report: GcReport,
    *,
    known: dict[str, int],
    grace: float,
    wait: float,
    exclude: Iterable[str] = (),
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Steps 2-4 of the module docstring, adding to ``report``. ``known``: objects (key -> size)
    of manifests this run forgot; they skip the grace period."""
    backend = store.backend
    lease: Lease | None = None
    if not dry_run:
        lease, busy = acquire_gc(backend, wait=wait, exclude=exclude)
        if lease is None:
            report.deferred = (
                "a save is in progress ("
                + "; ".join(b.describe() for b in busy[:3])
                + "); run gc again later to free the space"
            )
            return
    try:
        referenced, problems, manifests = mark(store)
        if problems:
            report.problems.extend(problems)
            report.deferred = f"some manifests cannot be read, so no object was deleted. {DAMAGED_MANIFESTS}"
            return
        if dry_run:
            # the plan's removals are not forgotten yet: what only they reference is garbage
            removed_keys = {i.key for i in report.removed}
            referenced = set()
            for key, m in manifests.items():
                if key not in removed_keys:
                    referenced.update(m.objects)
        now = time.time()
        temp_age = max(grace, TEMP_MIN_AGE)
        lost_manifests = not manifests and manifests_folder_missing(store)
        doomed: list[tuple[str, int]] = []
        for key in backend.list(OBJECTS_DIR):
            if is_temporary(key):
                age = _age(store, key, now)
                if age is not None and age >= temp_age:
                    doomed.append((key, -1))
                continue
            digest = parse_object_key(key)
            if digest is None or digest in referenced:
                continue
            if digest in known:
                doomed.append((key, known[digest]))
                continue
            if lost_manifests:
                report.deferred = LOST_MANIFESTS
                continue
            age = _age(store, key, now)
            try:
                size = backend.size(key)
            except (FileNotFoundError, OSError):
                continue
            if age is not None and age >= grace:
                doomed.append((key, size))
            else:
                report.young_objects += 1
                report.young_bytes += size
        for prefix in (MANIFESTS_DIR, LOCKS_DIR):
            for key in backend.list(prefix):
                if is_temporary(key):
                    age = _age(store, key, now)
                    if age is not None and age >= temp_age:
                        doomed.append((key, -1))
        deleted: set[str] = set()
        last_check = time.time()
        for key, size in doomed:
            if lease is not None and time.time() - last_check > 1.0:
                if not lease.held():
                    report.deferred = "the gc lease was lost (this process was paused too long); run gc again"
                    break
                last_check = time.time()
            if not dry_run:
                backend.delete(key)
            if size < 0:
                report.deleted_temp += 1
                continue
            report.deleted_objects += 1
            report.freed_bytes += size
            d = parse_object_key(key)
            if d is not None:
                deleted.add(d)
            if progress:
                progress(1)
        if not dry_run and doomed:
            backend.sync()
            store.catalog.objects_deleted(deleted)
    finally:
        if lease is not None:
            lease.release()


def run_gc(
    store: Store,
    policy: Retention | None,
    *,
    dry_run: bool = False,
    grace: float | None = None,
    wait: float = 0.0,
    exclude: Iterable[str] = (),
    protect: Iterable[str] = (),
    incoming: CheckpointInfo | None = None,
    sweep_objects: bool = True,
    infos: list[CheckpointInfo] | None = None,
) -> GcReport:
    """Plan with ``policy`` (None: forget nothing), forget, then sweep.

    ``incoming``: a checkpoint about to be saved, planned as if present (the disk-space guard's
    "make room"); it is never removed since it does not exist yet.
    """
    if not (dry_run and policy is not None):  # a dry run of explicit rules reads no stored policy
        store.catalog.refuse_damaged_config("collecting garbage")
    grace = GRACE if grace is None else grace
    infos = store.list() if infos is None else infos
    the_plan: RetentionPlan | None = None
    removed: list[CheckpointInfo] = []
    if policy is not None:
        cps = infos + ([incoming] if incoming is not None else [])
        the_plan = plan(cps, policy, protect=tuple(protect))
        removed = [c for c in the_plan.remove if incoming is None or c.id != incoming.id]
    report = GcReport(plan=the_plan, dry_run=dry_run)
    known = _objects_of(store, removed)
    report.removed = removed if dry_run else forget(store, removed)
    if sweep_objects:
        sweep(store, report, known=known, grace=grace, wait=wait, exclude=exclude, dry_run=dry_run)
    return report


def apply_after_save(store: Store, override: Retention | None = None) -> GcReport | None:
    """Retention after a committed save: forget what the plan removes and sweep, without waiting
    for other writers (their data is swept by a later gc). None when no policy applies, or when
    ``ckptstore.json`` does not match its checksum (then with a warning: nothing is deleted)."""
    damage = store.catalog.config_damage()
    if damage is not None:
        warnings.warn(
            f"{damage}: no retention policy was applied after this save and nothing was deleted. {REPAIR_CONFIG}.",
            CkptstoreWarning,
            stacklevel=4,
        )
        return None
    policy = resolve_policy(store, override)
    if policy is None or policy.is_empty():
        return None
    infos = store.list()
    if not plan(infos, policy).remove:
        return None
    report = run_gc(store, policy, wait=0.0, infos=infos)
    if report.deferred:
        log.info("retention after save: %s", report.deferred)
    return report


__all__ = ["GRACE", "GcReport", "apply_after_save", "forget", "mark", "resolve_policy", "run_gc", "sweep"]


# -- the policy a store applies ---------------------------------------------------------------
def resolve_policy(store: Store, override: Retention | None = None) -> Retention | None:
    """``override`` (``save(keep=...)``), else ``Store(retention=...)``, else the stored policy."""
    if override is not None:
        return check_policy(override)
    if store.retention is not None:
        return store.retention
    return store.catalog.stored_policy()
