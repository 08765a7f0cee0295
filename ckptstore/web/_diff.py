"""Compare two checkpoints: config, metrics, the state's plain values, and every tensor by name.

Tensors are matched by their path in the state (``model.fc1.weight``). The manifests alone say
which tensors were added, removed, re-shaped, or are byte-identical (same blob content at the same
place; *deduplicated* when both checkpoints name the same stored objects). Only when some tensor
differs are the two checkpoints loaded, to measure each change as the relative norm
``||b - a|| / ||a||``, per tensor and per layer (the path without its last part).
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._lazy import lazy
from ..format._info import CheckpointInfo
from ..format._manifest import Manifest
from ..format._tree import Decoder
from ..store._store import Store

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy("numpy", globals(), "np")
    torch = lazy("torch", globals())


@dataclass(frozen=True)
class TensorChange:
    """One tensor path and how it differs between checkpoint ``a`` and ``b``.

    ``status``: ``"identical"`` (same bytes), ``"changed"`` (same shape and dtype, other values),
    ``"reshaped"`` (shape or dtype differ), ``"added"`` (only in b) or ``"removed"`` (only in a)."""

    name: str
    status: str
    dtype: str
    shape: tuple[int, ...]
    old_dtype: str | None = None
    old_shape: tuple[int, ...] | None = None
    deduplicated: bool = False
    """Both checkpoints name the same stored objects for it (written once)."""
    relative_change: float | None = None
    """``||b - a|| / ||a||`` for changed tensors (inf when ``a`` is all zeros)."""
    norm: float | None = None
    diff_norm: float | None = None


@dataclass(frozen=True)
class LayerChange:
    """The tensors under one layer path, with the relative norm of their joint change."""

    name: str
    tensors: int
    changed: int
    relative_change: float | None


@dataclass(frozen=True)
class CheckpointDiff:
    """What differs between two checkpoints of a store (``ckptstore.diff_checkpoints``)."""

    a: CheckpointInfo
    b: CheckpointInfo
    config: list[tuple[str, Any, Any]] = field(default_factory=list)
    """(path, value in a, value in b) for every config value that differs (missing: ``"<absent>"``)."""
    metrics: list[tuple[str, Any, Any]] = field(default_factory=list)
    values: list[tuple[str, Any, Any]] = field(default_factory=list)
    """(path, value in a, value in b) for every plain value of the state (not a tensor: a step
    count, a scheduler's learning rate...) that differs (missing: ``"<absent>"``)."""
    tensors: list[TensorChange] = field(default_factory=list)
    layers: list[LayerChange] = field(default_factory=list)
    loaded: bool = False
    """True when the tensors were loaded to measure changes (False: the manifests were enough)."""

    def by_status(self, status: str) -> list[TensorChange]:
        return [t for t in self.tensors if t.status == status]

    def to_json(self) -> dict[str, Any]:
        def num(v: float | None) -> float | str | None:
            if v is None or math.isfinite(v):
                return v
            return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")

        def side(i: CheckpointInfo) -> dict[str, Any]:
            return {"id": i.id, "short_id": i.short_id, "step": i.step, "created_at": i.created_at.isoformat()}

        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.status] = counts.get(t.status, 0) + 1
        return {
            "a": side(self.a),
            "b": side(self.b),
            "loaded": self.loaded,
            "counts": counts,
            "deduplicated": sum(1 for t in self.tensors if t.deduplicated),
            "config": [{"path": p, "a": x, "b": y} for p, x, y in self.config],
            "metrics": [{"name": p, "a": num(x), "b": num(y)} for p, x, y in self.metrics],
            "values": [{"path": p, "a": _plain(x), "b": _plain(y)} for p, x, y in self.values],
            "tensors": [
                {
                    "name": t.name,
                    "status": t.status,
                    "dtype": t.dtype,
                    "shape": list(t.shape),
                    "old_dtype": t.old_dtype,
                    "old_shape": None if t.old_shape is None else list(t.old_shape),
                    "deduplicated": t.deduplicated,
                    "relative_change": num(t.relative_change),
                }
                for t in self.tensors
            ],
            "layers": [
                {
                    "name": la.name,
                    "tensors": la.tensors,
                    "changed": la.changed,
                    "relative_change": num(la.relative_change),
                }
                for la in self.layers
            ],
        }


ABSENT = "<absent>"


#: a list or tuple longer than this is one value in a diff (a loss history is not 5,000 rows)
SEQUENCE_MAX = 16


def long_sequence(v: Any) -> str | None:
    """What a list or tuple of more than ``SEQUENCE_MAX`` items is shown as, else None."""
    if isinstance(v, (list, tuple)) and len(v) > SEQUENCE_MAX:
        return f"{type(v).__name__} of {len(v)} items"
    return None


def _plain(v: Any) -> Any:
    """``v`` as JSON: itself when it is a JSON scalar (non-finite floats as strings), a long list
    as what it is and how long, else its repr."""
    long = long_sequence(v)
    if long is not None:
        return long
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


class _Ref:
    """Stands for tensor ``i`` (or, with ``sharded``, the chunks of a sharded tensor: docs/format.md
    §21) while naming a manifest's tensors without loading them."""

    __slots__ = ("i", "sharded")

    def __init__(self, i: int, sharded: Any = None) -> None:
        self.i = i
        self.sharded = sharded


def _layout(m: Manifest, r: _Ref) -> tuple[str, tuple[int, ...], str, list[tuple[Any, ...]], list[list[str]]]:
    """(dtype, shape, kind, what identifies its bytes, the objects holding them) of a tensor."""
    if r.sharded is None:
        e = m.tensors[r.i]
        b = m.blobs[e.blob]
        return e.dtype, tuple(e.shape), e.kind, [(b.hash, e.offset, e.stride)], [[s.object for s in b.segments]]
    st, keys, objs = r.sharded, [], []
    for c in st.chunks:
        e = m.tensors[c.tensor]
        b = m.blobs[e.blob]
        keys.append((tuple(c.offsets), tuple(c.sizes), b.hash, e.offset, e.stride))
        objs.append([s.object for s in b.segments])
    return st.dtype, tuple(st.shape), "torch", keys, objs


def tensor_paths(state: Any) -> dict[str, Any]:
    """Path -> tensor (or ``_Ref``) for every tensor in a decoded state, in tree order."""
    out: dict[str, Any] = {}

    def put(name: str, v: Any) -> None:
        key, n = name or "state", 2
        while key in out:  # two keys that print alike (1 and "1")
            key, n = f"{name}#{n}", n + 1
        out[key] = v

    def walk(v: Any, prefix: str) -> None:
        if isinstance(v, (_Ref, torch.Tensor, np.ndarray)):
            put(prefix, v)
        elif isinstance(v, Mapping):
            for k, x in v.items():
                walk(x, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(v, (list, tuple)):
            for j, x in enumerate(v):
                walk(x, f"{prefix}.{j}" if prefix else str(j))

    walk(state, "")
    return out


def plain_values(state: Any) -> dict[str, Any]:
    """Path -> value for every leaf of a decoded state that is not a tensor (empty containers
    included), in tree order; paths as ``tensor_paths`` names them."""
    out: dict[str, Any] = {}

    def walk(v: Any, prefix: str) -> None:
        if isinstance(v, (_Ref, torch.Tensor, np.ndarray)):
            return
        if isinstance(v, Mapping) and v:
            for k, x in v.items():
                walk(x, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(v, (list, tuple)) and v and len(v) <= SEQUENCE_MAX:
            for j, x in enumerate(v):
                walk(x, f"{prefix}.{j}" if prefix else str(j))
        else:
            key, n = prefix or "state", 2
            while key in out:
                key, n = f"{prefix}#{n}", n + 1
            out[key] = v

    walk(state, "")
    return out


def _equal(x: Any, y: Any) -> bool:
    if type(x) is not type(y):
        return False
    if isinstance(x, float) and math.isnan(x) and math.isnan(y):
        return True
    if type(x).__eq__ is object.__eq__:  # an unpickled object without ==: equal when it pickles the same
        try:
            return pickle.dumps(x) == pickle.dumps(y)
        except Exception:  # noqa: BLE001 - an object that cannot be pickled again: compare what it shows
            return repr(x) == repr(y)
    try:
        return bool(x == y)
    except (TypeError, ValueError, RuntimeError):  # a pickled object whose == fails or is ambiguous
        return repr(x) == repr(y)


def _value_changes(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out = []
    for k in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(k, ABSENT), b.get(k, ABSENT)
        if not _equal(x, y):
            out.append((k, x, y))
    return out


def _flatten(v: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(v, Mapping) and v:
        for k, x in v.items():
            _flatten(x, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix or "config"] = v


def _config_changes(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    fa: dict[str, Any] = {}
    fb: dict[str, Any] = {}
    if a is not None:
        _flatten(a, "", fa)
    if b is not None:
        _flatten(b, "", fb)
    out = []
    for k in [*fa, *(k for k in fb if k not in fa)]:
        x, y = fa.get(k, ABSENT), fb.get(k, ABSENT)
        if x != y or type(x) is not type(y):
            out.append((k, x, y))
    return out


def _same(x: float, y: float) -> bool:
    return x == y or (math.isnan(x) and math.isnan(y))


def _metric_changes(a: Mapping[str, float], b: Mapping[str, float]) -> list[tuple[str, Any, Any]]:
    out = []
    for k in [*a, *(k for k in b if k not in a)]:
        x, y = a.get(k), b.get(k)
        if x is None or y is None or not _same(float(x), float(y)):
            out.append((k, x, y))
    return out


class _Pickled:
    """A value saved with pickle, compared by its bytes and never unpickled (``load=False``)."""

    __slots__ = ("data",)

    def __init__(self, data: str) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Pickled) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __repr__(self) -> str:
        return f"<pickled value, {len(self.data) * 3 // 4} bytes>"


def _opaque(v: Any) -> Any:
    """``v`` with every ``{"$pickle": ...}`` node left by ``keep_pickle`` as a ``_Pickled``."""
    if isinstance(v, dict):
        if len(v) == 1 and isinstance(v.get("$pickle"), str):
            return _Pickled(v["$pickle"])
        return {k: _opaque(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_opaque(x) for x in v]
    return v


def _decode(m: Manifest, allow_pickle: bool, load: bool = True) -> Any:
    """The manifest's state with a ``_Ref`` in place of every tensor (no tensor data read). With
    neither ``allow_pickle`` nor ``load``, pickled values stay unpickled, compared by their bytes."""
    refs = [_Ref(i) for i in range(len(m.tensors))]
    sharded = [_Ref(-1, st) for st in m.distributed.sharded] if m.distributed is not None else []
    keep = not allow_pickle and not load
    state = Decoder(refs, allow_pickle=allow_pickle, sharded=sharded, keep_pickle=keep).decode(m.tree)
    return _opaque(state) if keep else state


def _norms(a: Any, b: Any) -> tuple[float, float]:
    """(||a||, ||b - a||) in float64 (complex: of the magnitudes of the difference)."""
    ta = torch.as_tensor(a).detach().cpu()
    tb = torch.as_tensor(b).detach().cpu()
    if ta.is_complex() or tb.is_complex():
        ta, tb = ta.to(torch.complex128), tb.to(torch.complex128)
    else:
        ta, tb = ta.to(torch.float64), tb.to(torch.float64)
    return float(torch.linalg.vector_norm(ta)), float(torch.linalg.vector_norm(tb - ta))


def _rel(norm: float, diff: float) -> float:
    if diff == 0:
        return 0.0
    return diff / norm if norm > 0 else math.inf


def layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def diff(
    store: Store, a: CheckpointInfo, b: CheckpointInfo, *, allow_pickle: bool = False, load: bool = True
) -> CheckpointDiff:
    """Compare checkpoint ``a`` (older) with ``b``. ``load=False`` never reads tensor data: changed
    tensors are listed without their relative change."""
    ma, mb = store.manifest(id=a.id), store.manifest(id=b.id)
    da, db = _decode(ma, allow_pickle, load), _decode(mb, allow_pickle, load)
    ra, rb = tensor_paths(da), tensor_paths(db)
    values = _value_changes(plain_values(da), plain_values(db))
    del da, db
    changes: dict[str, TensorChange] = {}
    changed: list[str] = []
    for name in [*rb, *(n for n in ra if n not in rb)]:
        if name not in ra:
            dt, shape, _kind, _key, _objs = _layout(mb, rb[name])
            changes[name] = TensorChange(name, "added", dt, shape)
            continue
        dta, shapea, kinda, keya, objsa = _layout(ma, ra[name])
        if name not in rb:
            changes[name] = TensorChange(name, "removed", dta, shapea)
            continue
        dtb, shapeb, kindb, keyb, objsb = _layout(mb, rb[name])
        if (dta, shapea, kinda) != (dtb, shapeb, kindb):
            changes[name] = TensorChange(name, "reshaped", dtb, shapeb, dta, shapea)
            continue
        if keya == keyb:
            changes[name] = TensorChange(name, "identical", dtb, shapeb, deduplicated=objsa == objsb)
            continue
        changes[name] = TensorChange(name, "changed", dtb, shapeb)
        changed.append(name)
    loaded = False
    if changed and load:
        loaded = True
        sa = tensor_paths(store.load(id=a.id, map_location="cpu", allow_pickle=allow_pickle))
        sb = tensor_paths(store.load(id=b.id, map_location="cpu", allow_pickle=allow_pickle))
        for name, c in list(changes.items()):
            if c.status not in ("changed", "identical"):
                continue
            norm, d = _norms(sa[name], sb[name])
            status = "changed" if d != 0 else "identical"  # equal values stored again elsewhere
            changes[name] = TensorChange(
                name,
                status,
                c.dtype,
                c.shape,
                deduplicated=c.deduplicated,
                relative_change=_rel(norm, d),
                norm=norm,
                diff_norm=d,
            )
        del sa, sb
    tensors = list(changes.values())
    return CheckpointDiff(
        a=a,
        b=b,
        config=_config_changes(a.config, b.config),
        metrics=_metric_changes(a.metrics, b.metrics),
        values=values,
        tensors=tensors,
        layers=_layers(tensors),
        loaded=loaded,
    )


def _layers(tensors: list[TensorChange]) -> list[LayerChange]:
    groups: dict[str, list[TensorChange]] = {}
    for t in tensors:
        groups.setdefault(layer_of(t.name), []).append(t)
    out = []
    for name, ts in groups.items():
        comparable = [t for t in ts if t.status in ("identical", "changed")]
        rel: float | None = None
        if comparable and all(t.status == "identical" for t in comparable):
            rel = 0.0
        elif comparable and all(t.norm is not None for t in comparable):
            num = math.sqrt(sum((t.diff_norm or 0.0) ** 2 for t in comparable))
            den = math.sqrt(sum((t.norm or 0.0) ** 2 for t in comparable))
            rel = _rel(den, num)
        out.append(LayerChange(name, len(ts), sum(1 for t in ts if t.status != "identical"), rel))
    return out
