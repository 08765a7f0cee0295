"""A snapshot of a store for the dashboard: one JSON-ready dict, built without loading tensors.

Everything comes from manifests (through ``store.catalog``), one listing of ``objects/`` and the
store's retention policy: the checkpoints with their retention decision and reason, every metric,
storage totals and what the next gc would free, progress with an ETA from the save times,
damaged manifests and missing objects, and which checkpoints a backup store holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from .._errors import CheckpointNotFoundError, CkptstoreError, IntegrityError, UnsupportedFormatError
from .._version import __version__
from ..format import _hashing
from ..format._info import CheckpointInfo
from ..format._layout import OBJECTS_DIR, parse_object_key
from ..format._manifest import Manifest
from ..store._retention import Retention, plan
from ..store._store import Store

#: metric names (lowercase substrings) where a higher value is better; any other metric is "min"
HIGHER_IS_BETTER = ("acc", "score", "f1", "bleu", "rouge", "auc", "precision", "recall", "reward", "map", "iou")
#: metric names (lowercase, exact) that describe the run rather than rank it: no "best" is marked
NO_BEST = ("lr", "learning_rate", "lr_scale", "momentum", "grad_norm", "epoch", "step", "tokens", "samples")
#: a metric is drawn on a log scale when all its values are > 0 and span at least this factor
LOG_SPAN = 20.0
#: how many of the newest checkpoints the save rate (and so the ETA) is measured over
RATE_WINDOW = 20


def signature(store: Store, keys: list[tuple[int, str, str]] | None = None) -> str:
    """A short hash of the manifest listing (``keys``, or a fresh LIST): it changes when a
    checkpoint is added or removed."""
    keys = store.catalog.manifest_keys() if keys is None else keys
    return _hashing.digest("\n".join(k for _s, _d, k in keys).encode())[:16]


def metric_mode(name: str, policy: Retention | None) -> str | None:
    """``"min"`` or ``"max"``: the retention policy's mode for its ``keep_best`` metric, else by
    name; None for a learning rate and the like (nothing is "best")."""
    if policy is not None and policy.best is not None and policy.best[0] == name:
        return policy.best[1]
    low = name.lower()
    if low.rsplit("/", 1)[-1] in NO_BEST:
        return None
    return "max" if any(w in low for w in HIGHER_IS_BETTER) else "min"


def json_number(v: Any) -> float | str | None:
    """A metric value for JSON: finite floats as numbers, NaN and infinities as their names."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "Infinity" if f > 0 else "-Infinity"
    return f


def _finite(v: Any) -> float | None:
    return v if isinstance(v, float) and math.isfinite(v) else None


def read_checkpoints(
    store: Store, keys: list[tuple[int, str, str]] | None = None
) -> tuple[list[tuple[CheckpointInfo, Manifest]], list[dict[str, Any]]]:
    """(info, manifest) of every readable checkpoint by step, and the damaged manifests, from
    ``keys`` (a listing) or a fresh one. Unlike ``Store.list`` this warns about nothing: the page
    shows the damage instead."""
    catalog = store.catalog
    catalog.config()
    good: list[tuple[CheckpointInfo, Manifest]] = []
    damaged: list[dict[str, Any]] = []
    for step, digest, key in catalog.manifest_keys() if keys is None else keys:
        try:
            m = catalog.manifest(key)
            info = catalog.info(key, digest, m)
        except CheckpointNotFoundError:
            continue  # removed while we listed
        except (IntegrityError, UnsupportedFormatError) as e:
            damaged.append({"step": step, "id": digest, "short_id": digest[:12], "key": key, "error": str(e)})
            continue
        good.append((info, m))
    good.sort(key=lambda im: (im[0].step, im[0].created_at, im[0].id))
    return good, damaged


def _metrics_summary(infos: list[CheckpointInfo], policy: Retention | None) -> dict[str, Any]:
    names: list[str] = []
    for i in infos:
        for k in i.metrics:
            if k not in names:
                names.append(k)
    out: dict[str, Any] = {}
    for name in names:
        mode = metric_mode(name, policy)
        vals = [(i, _finite(float(i.metrics[name]))) for i in infos if name in i.metrics]
        finite = [(i, v) for i, v in vals if v is not None]
        best = None
        if finite and mode is not None:
            # the best value; among equals the newest, as retention ranks them
            best = max(enumerate(finite), key=lambda p: ((p[1][1] if mode == "max" else -p[1][1]), p[0]))[1][0]
        positive = [v for _i, v in finite if v > 0]
        log = len(positive) == len(finite) and len(finite) > 1 and max(positive) / min(positive) >= LOG_SPAN
        out[name] = {
            "mode": mode,
            "log": log,
            "points": len(finite),
            "missing": len(infos) - len(vals),
            "not_finite": len(vals) - len(finite),
            "best_id": None if best is None else best.id,
            "best_step": None if best is None else best.step,
            "best_value": None if best is None else _finite(float(best.metrics[name])),
        }
    return out


def _progress(infos: list[CheckpointInfo]) -> dict[str, Any] | None:
    if not infos:
        return None
    last = max(infos, key=lambda i: (i.created_at, i.step))
    total = last.meta.get("total_steps")
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        total = None
    # the save rate over the newest checkpoints of the current stretch (steps rising with time)
    by_time = sorted(infos, key=lambda i: (i.created_at, i.step))[-RATE_WINDOW:]
    run = [by_time[-1]]
    for i in reversed(by_time[:-1]):
        if i.step >= run[-1].step:
            break
        run.append(i)
    rate = None
    if len(run) >= 2:
        seconds = (run[0].created_at - run[-1].created_at).total_seconds()
        steps = run[0].step - run[-1].step
        if seconds > 0 and steps > 0:
            rate = steps / seconds
    eta = None
    if total is not None and rate is not None:
        eta = max(0.0, (total - last.step) / rate)
    return {
        "step": last.step,
        "epoch": last.epoch,
        "total_steps": total,
        "fraction": None if total is None else min(1.0, last.step / total),
        "steps_per_second": rate,
        "eta_seconds": eta,
        "last_save_at": last.created_at.isoformat(),
        "last_save_t": last.created_at.timestamp(),
        "train_seconds": _finite(float(last.meta["train_seconds"]))
        if isinstance(last.meta.get("train_seconds"), (int, float))
        else None,
    }


def _backup_ids(uri: str | None, storage_options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ids a backup store holds (from its manifest names: nothing is read), or its error."""
    if uri is None:
        return None
    try:
        with Store(uri, storage_options=storage_options) as b:
            if not b.exists():
                return {"uri": uri, "ids": [], "error": "the backup store does not exist yet"}
            ids = [d for _s, d, _k in b.catalog.manifest_keys()]
        return {"uri": uri, "ids": ids, "error": None}
    except (CkptstoreError, OSError) as e:
        return {"uri": uri, "ids": None, "error": f"{type(e).__name__}: {e}"}


def _trigger(meta: Mapping[str, Any]) -> str | None:
    t = meta.get("trigger")
    return t if isinstance(t, str) else None


def _progress_text(meta: Mapping[str, Any], step: int) -> str | None:
    total = meta.get("total_steps")
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        return None
    return f"{step}/{total} ({100.0 * step / total:.1f}%)"


def _empty(uri: str, signature: str) -> dict[str, Any]:
    return {
        "uri": uri,
        "generated_at": datetime.now(timezone.utc).isoformat(),
        "generated_t": time.time(),
        "ckptstore": __version__,
        "signature": signature,
        "exists": False,
        "error": None,
        "checkpoints": [],
        "damaged": [],
        "metrics": {},
        "storage": None,
        "progress": None,
        "backup": None,
        "policy": None,
        "build_seconds": 0.0,
    }


def error_snapshot(uri: str, error: BaseException) -> dict[str, Any]:
    """What the page shows when the store cannot be read at all (it keeps retrying)."""
    return {**_empty(uri, ""), "error": f"cannot read the store: {type(error).__name__}: {error}"}


def snapshot(
    store: Store,
    *,
    backup: str | None = None,
    backup_options: Mapping[str, Any] | None = None,
    policy: Retention | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict (see docs/dashboard.md)."""
    started = time.perf_counter()
    if not store.exists():
        return _empty(store.uri, "")
    keys = store.catalog.manifest_keys()
    base = _empty(store.uri, signature(store, keys))
    # manifests first, then objects: a writer stores a checkpoint's objects before its manifest,
    # so every object a listed manifest names is already there when objects/ is listed
    pairs, damaged = read_checkpoints(store, keys)
    infos = [i for i, _m in pairs]
    config_problem = None
    if policy is None:
        try:
            policy = store.get_retention()
        except IntegrityError as e:  # a damaged ckptstore.json: the page still shows the run
            config_problem = str(e)
    the_plan = plan(infos, policy or Retention())
    present = {d for d in map(parse_object_key, store.backend.list(OBJECTS_DIR)) if d is not None}
    backup_state = _backup_ids(backup, backup_options)
    backup_ids = set(backup_state["ids"]) if backup_state and backup_state["ids"] is not None else None
    decisions = {d.checkpoint.id: d for d in the_plan.decisions}
    rows = []
    for i, m in pairs:
        dec = decisions[i.id]
        missing = sum(1 for k in m.objects if k not in present)
        rows.append(
            {
                "id": i.id,
                "short_id": i.short_id,
                "step": i.step,
                "epoch": i.epoch,
                "created_at": i.created_at.isoformat(),
                "t": i.created_at.timestamp(),
                "size": i.size,
                "stored_bytes": i.stored_bytes,
                "new_bytes": i.new_bytes,
                "tensors": i.num_tensors,
                "objects": len(m.objects),
                "metrics": {k: json_number(v) for k, v in i.metrics.items()},
                "tags": list(i.tags),
                "trigger": _trigger(i.meta),
                "progress": _progress_text(i.meta, i.step),
                "keep": dec.keep,
                "reasons": list(dec.reasons),
                "missing_objects": missing,
                "health": "ok" if missing == 0 else f"{missing} object(s) missing",
                "backup": None if backup_ids is None else i.id in backup_ids,
            }
        )
    return {
        **base,
        "exists": True,
        "policy": None if policy is None else policy.describe(),
        "config_problem": config_problem,
        "checkpoints": rows,
        "damaged": damaged,
        "metrics": _metrics_summary(infos, policy),
        "storage": _storage(store, pairs, present, {c.id for c in the_plan.remove}, bool(damaged)),
        "progress": _progress(infos),
        "backup": None
        if backup_state is None
        else {
            "uri": backup_state["uri"],
            "error": backup_state["error"],
            "holds": None if backup_ids is None else sum(1 for i in infos if i.id in backup_ids),
        },
        "build_seconds": time.perf_counter() - started,
    }


def _storage(
    store: Store, pairs: list[tuple[CheckpointInfo, Manifest]], present: set[str], removed: set[str], damaged: bool
) -> dict[str, Any]:
    """Logical vs stored bytes (now and cumulative over time), what the next gc frees, free space."""
    sizes: dict[str, int] = {}
    remaining: set[str] = set()  # objects of the checkpoints the plan keeps
    for i, m in pairs:
        for k, oi in m.objects.items():
            sizes[k] = oi.size
        if i.id not in removed:
            remaining.update(m.objects)
    # a gc forgets what the plan removes, then deletes the objects no remaining checkpoint names;
    # a damaged manifest stops the deleting (gc cannot know what it references)
    frees = 0 if damaged else sum(s for k, s in sizes.items() if k not in remaining and k in present)
    infos = sorted((i for i, _m in pairs), key=lambda i: (i.created_at, i.step))
    logical_cum, written_cum = [], []
    lsum = wsum = 0
    for i in infos:
        lsum += i.size
        wsum += i.new_bytes
        logical_cum.append(lsum)
        written_cum.append(wsum)
    try:
        free = store.backend.free_bytes()
    except OSError:
        free = None
    return {
        "logical_bytes": lsum,
        "stored_bytes": sum(s for k, s in sizes.items() if k in present),
        "referenced_objects": sum(1 for k in sizes if k in present),
        "unreferenced_objects": sum(1 for k in present if k not in sizes),
        "gc_removes": len(removed),
        "gc_frees_bytes": frees,
        "gc_blocked": "a damaged manifest stops gc from deleting objects (run `ckptstore verify`)" if damaged else None,
        "free_bytes": free,
        "series": {
            "t": [i.created_at.timestamp() for i in infos],
            "logical_cum": logical_cum,
            "written_cum": written_cum,
        },
    }
