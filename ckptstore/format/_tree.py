"""The state tree <-> a JSON value plus a list of tensors. No pickle unless asked for.

Plain JSON stays plain: str, int, finite float, bool, None, lists, and dicts whose keys are str
not starting with "$". Everything else is a one-key object whose key starts with "$":

    {"$tensor": i}      torch tensor i of the manifest's tensor table (also numpy arrays)
    {"$tuple": [...]}   {"$set": [...]}   {"$frozenset": [...]}
    {"$dict": [[k, v], ...]}   a dict with non-str keys (int keys of optimizer state) or "$" keys
    {"$odict": <dict>}  collections.OrderedDict
    {"$statedict": [<dict>, <metadata>]}  an OrderedDict with a ``_metadata`` attribute, what
                        Module.state_dict() returns (version 3)
    {"$float": "nan" | "inf" | "-inf" | "-0.0"}   {"$complex": [re, im]}
    {"$bytes": base64}  {"$bytearray": base64}
    {"$dtype": "float32"}  {"$device": "cuda:0"}  {"$size": [2, 3]}   torch.dtype/device/Size
    {"$np": [dtype, base64]}   a numpy scalar (np.float32(1.5), ...)
    {"$pickle": base64}  only with allow_pickle=True on save, and on load
    {"$sparse": {...}}  a sparse COO or CSR tensor: layout, size, component tensors, flags (version 3)
    {"$sharded": j}     sharded tensor j of the manifest's ``distributed`` section (version 2, §21)
"""

from __future__ import annotations

import base64
import collections
import math
import pickle
from typing import TYPE_CHECKING, Any, Callable

from .._errors import IntegrityError, PickleNotAllowedError, UnsupportedValueError
from .._lazy import lazy
from ._manifest import ShardedTensor
from ._sparse import decode_sparse, encode_sparse, is_sparse
from ._tensors import check_tensor, numpy_dtype_from_name

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy("numpy", globals(), "np")
    torch = lazy("torch", globals())


class TensorRef:
    """A reference to tensor ``index`` of a manifest's tensor table (``entry``, when known): what
    ``decode_tree`` puts where the state has a tensor, and what ``SaveSession.commit(state=...)``
    accepts in place of one (the index into the concatenated table of the staged parts)."""

    __slots__ = ("entry", "index")

    def __init__(self, index: int, entry: Any = None) -> None:
        if type(index) is not int or index < 0:
            raise ValueError(f"a TensorRef index must be a non-negative int, not {index!r}")
        self.index = index
        self.entry = entry

    def __repr__(self) -> str:
        return f"TensorRef({self.index})"

    def __eq__(self, other: object) -> bool:
        return type(other) is TensorRef and other.index == self.index

    def __hash__(self) -> int:
        return hash(("TensorRef", self.index))


_TAGS = frozenset(
    {
        "$tensor",
        "$tuple",
        "$set",
        "$frozenset",
        "$dict",
        "$odict",
        "$statedict",
        "$float",
        "$complex",
        "$bytes",
        "$bytearray",
        "$dtype",
        "$device",
        "$size",
        "$np",
        "$pickle",
        "$sharded",
        "$sparse",
    }
)
_MAX_DEPTH = 200
#: tags that need a version-3 reader (format.md §12)
V3_TAGS = frozenset({"$statedict", "$sparse"})


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: Any, where: str) -> bytes:
    if not isinstance(s, str):
        raise IntegrityError(f"{where}: expected base64 text")
    try:
        return base64.b64decode(s, validate=True)
    except ValueError:
        raise IntegrityError(f"{where}: invalid base64") from None


def _key_repr(k: Any) -> str:
    return repr(k)


def _describe(v: Any) -> str:
    t = type(v)
    if callable(v) and hasattr(v, "__name__"):
        return f"a {'function' if t.__name__ == 'function' else t.__name__} ({getattr(v, '__qualname__', v.__name__)})"
    return f"a {t.__module__}.{t.__qualname__}" if t.__module__ != "builtins" else f"a {t.__name__}"


def _float(v: float) -> Any:
    if math.isnan(v):
        return {"$float": "nan"}
    if math.isinf(v):
        return {"$float": "inf" if v > 0 else "-inf"}
    if v == 0.0 and math.copysign(1.0, v) < 0:
        return {"$float": "-0.0"}
    return v


class Encoder:
    """Encodes one state; collects tensors (in first-seen order) for the tensor table.

    With ``refs=True`` the state holds no tensors but references to tensors already staged:
    ``TensorRef`` leaves (``{"$tensor": index}``) and ``ShardedTensor`` leaves, collected in
    ``self.sharded`` (``{"$sharded": j}``)."""

    def __init__(self, *, allow_pickle: bool = False, allow_tensors: bool = True, refs: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self.allow_tensors = allow_tensors and not refs
        self.refs = refs
        self.tensors: list[Any] = []
        self.sharded: list[Any] = []
        self._tensor_ids: dict[int, int] = {}
        self._stack: set[int] = set()

    def encode(self, value: Any, path: str = "state") -> Any:
        return self._enc(value, path, 0)

    def _add_tensor(self, t: Any, path: str) -> dict[str, int]:
        if not self.allow_tensors:
            raise UnsupportedValueError(f"{path} is a tensor; tensors belong in the state, not here", path)
        idx = self._tensor_ids.get(id(t))
        if idx is None:
            idx = self._tensor_ids[id(t)] = len(self.tensors)
            self.tensors.append(t)
        return {"$tensor": idx}

    def _add_component(self, t: Any, path: str) -> dict[str, int]:
        check_tensor(t, path)
        return self._add_tensor(t, path)

    def _enc(self, v: Any, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise UnsupportedValueError(f"{path} is nested more than {_MAX_DEPTH} levels deep", path)
        t = type(v)
        if v is None or t is bool or t is str:
            return v
        if t is int:
            return v
        if t is float:
            return _float(v)
        if isinstance(v, torch.Tensor):
            if is_sparse(v) and self.allow_tensors:
                return encode_sparse(v, path, self._add_component)
            check_tensor(v, path)
            return self._add_tensor(v, path)
        if self.refs and t is TensorRef:
            return {"$tensor": v.index}
        if self.refs and t is ShardedTensor:
            self.sharded.append(v)
            return {"$sharded": len(self.sharded) - 1}
        if t is np.ndarray:
            if v.dtype.hasobject or v.dtype.fields is not None or v.dtype.kind not in "biufcSUmMV":
                raise UnsupportedValueError(f"{path} is a numpy array of dtype {v.dtype}, which needs pickle", path)
            return self._add_tensor(v, path)
        if t in (list, tuple, dict, collections.OrderedDict, set, frozenset):
            if id(v) in self._stack:
                raise UnsupportedValueError(f"{path} contains itself (a reference cycle)", path)
            self._stack.add(id(v))
            try:
                return self._container(v, t, path, depth)
            finally:
                self._stack.discard(id(v))
        if t is complex:
            return {"$complex": [_float(v.real), _float(v.imag)]}
        if t is bytes:
            return {"$bytes": _b64(v)}
        if t is bytearray:
            return {"$bytearray": _b64(bytes(v))}
        if t is torch.dtype:
            return {"$dtype": str(v).removeprefix("torch.")}
        if t is torch.device:
            return {"$device": str(v)}
        if t is torch.Size:
            return {"$size": list(v)}
        if isinstance(v, np.generic) and not isinstance(v, np.object_) and v.dtype.kind in "biufcmM":
            return {"$np": [v.dtype.str, _b64(v.tobytes())]}
        if self.allow_pickle:
            try:
                return {"$pickle": _b64(pickle.dumps(v, protocol=4))}
            except Exception as e:  # noqa: BLE001 - any pickling failure is the user's value
                raise UnsupportedValueError(f"{path} ({_describe(v)}) cannot be pickled: {e}", path) from None
        raise UnsupportedValueError(
            f"{path} is {_describe(v)}, which ckptstore cannot store without pickle. Store plain data "
            "instead (e.g. its name or its state_dict()), or pass allow_pickle=True to both save and load "
            "if you trust every reader of this store.",
            path,
        )

    def _container(self, v: Any, t: type, path: str, depth: int) -> Any:
        d = depth + 1
        if t is list:
            return [self._enc(x, f"{path}[{i}]", d) for i, x in enumerate(v)]
        if t is tuple:
            return {"$tuple": [self._enc(x, f"{path}[{i}]", d) for i, x in enumerate(v)]}
        if t in (set, frozenset):
            items = [self._enc(x, f"{path}{{{x!r}}}", d) for x in v]
            return {"$set" if t is set else "$frozenset": items}
        enc = self._dict(v, path, d)
        if t is not collections.OrderedDict:
            return enc
        metadata = getattr(v, "_metadata", None)
        if isinstance(metadata, dict):  # a module's state_dict(): keep the per-module versions
            return {"$statedict": [enc, self._enc(metadata, f"{path}._metadata", d)]}
        return {"$odict": enc}

    def _dict(self, v: dict[Any, Any], path: str, depth: int) -> Any:
        if all(type(k) is str and not k.startswith("$") for k in v):
            return {k: self._enc(x, f"{path}[{k!r}]", depth) for k, x in v.items()}
        pairs = []
        for k, x in v.items():
            kp = f"{path}[{_key_repr(k)}]"
            if isinstance(k, (torch.Tensor, np.ndarray)):
                raise UnsupportedValueError(f"{kp}: a tensor cannot be a dict key", kp)
            pairs.append([self._enc(k, f"{kp} (key)", depth), self._enc(x, kp, depth)])
        return {"$dict": pairs}


class Decoder:
    """``tensors``: what ``{"$tensor": i}`` decodes to; ``sharded``: what ``{"$sharded": j}`` does."""

    def __init__(
        self,
        tensors: list[Any],
        *,
        allow_pickle: bool = False,
        sharded: list[Any] | None = None,
        keep_pickle: bool = False,
    ) -> None:
        self.tensors = tensors
        self.sharded = sharded or []
        self.allow_pickle = allow_pickle
        #: leave ``{"$pickle": ...}`` nodes as they are (a listing shows them, never runs them)
        self.keep_pickle = keep_pickle

    def decode(self, node: Any) -> Any:
        try:
            return self._dec(node, "state")
        except RecursionError:
            raise IntegrityError("the manifest's state tree is nested too deeply") from None

    def _dec(self, n: Any, where: str) -> Any:
        if n is None or isinstance(n, (bool, int, float, str)):
            return n
        if isinstance(n, list):
            return [self._dec(x, where) for x in n]
        if not isinstance(n, dict):
            raise IntegrityError(f"{where}: unexpected node {type(n).__name__}")
        if len(n) == 1:
            ((k, a),) = n.items()
            if k in _TAGS:
                return self._tagged(k, a, where)
        if any(k.startswith("$") for k in n):
            raise IntegrityError(f"{where}: unknown tag in {sorted(n)[:3]}")
        return {k: self._dec(x, f"{where}[{k!r}]") for k, x in n.items()}

    def _tagged(self, tag: str, a: Any, where: str) -> Any:
        dec: Callable[[Any], Any] = lambda x: self._dec(x, where)  # noqa: E731
        if tag == "$tensor":
            if type(a) is not int or not 0 <= a < len(self.tensors):
                raise IntegrityError(f"{where}: tensor index {a!r} out of range")
            return self.tensors[a]
        if tag == "$sharded":
            if type(a) is not int or not 0 <= a < len(self.sharded):
                raise IntegrityError(f"{where}: sharded tensor index {a!r} out of range")
            return self.sharded[a]
        if tag == "$tuple":
            return tuple(dec(x) for x in _as_list(a, where))
        if tag == "$set":
            return {dec(x) for x in _as_list(a, where)}
        if tag == "$frozenset":
            return frozenset(dec(x) for x in _as_list(a, where))
        if tag == "$dict":
            out = {}
            for p in _as_list(a, where):
                if not isinstance(p, list) or len(p) != 2:
                    raise IntegrityError(f"{where}: $dict items must be [key, value] pairs")
                try:
                    out[dec(p[0])] = dec(p[1])
                except TypeError:
                    raise IntegrityError(f"{where}: unhashable dict key") from None
            return out
        if tag == "$odict":
            inner = dec(a)
            if not isinstance(inner, dict):
                raise IntegrityError(f"{where}: $odict must hold a dict")
            return collections.OrderedDict(inner)
        if tag == "$sparse":
            return decode_sparse(a, dec, where)
        if tag == "$statedict":
            items, metadata = (dec(x) for x in _as_list(a, where, 2))
            if not isinstance(items, dict) or not isinstance(metadata, dict):
                raise IntegrityError(f"{where}: $statedict must hold a dict and its metadata dict")
            sd = collections.OrderedDict(items)
            sd._metadata = metadata  # type: ignore[attr-defined]
            return sd
        if tag == "$float":
            vals = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "-0.0": -0.0}
            if a not in vals:
                raise IntegrityError(f"{where}: bad $float {a!r}")
            return vals[a]
        if tag == "$complex":
            parts = [dec(x) for x in _as_list(a, where, 2)]  # each a JSON number or a $float
            if not all(type(x) in (int, float) for x in parts):
                raise IntegrityError(f"{where}: $complex parts must be numbers or $float values")
            return complex(float(parts[0]), float(parts[1]))
        if tag == "$bytes":
            return _unb64(a, where)
        if tag == "$bytearray":
            return bytearray(_unb64(a, where))
        if tag == "$dtype":
            from ._tensors import dtype_from_name

            if not isinstance(a, str):
                raise IntegrityError(f"{where}: $dtype must be a dtype name")
            return dtype_from_name(a)
        if tag == "$device":
            try:
                return torch.device(str(a))
            except RuntimeError:
                raise IntegrityError(f"{where}: bad device {a!r}") from None
        if tag == "$size":
            dims = _as_list(a, where)
            if not all(type(x) is int for x in dims):
                raise IntegrityError(f"{where}: $size needs ints")
            return torch.Size(dims)
        if tag == "$np":
            dt, data = _as_list(a, where, 2)
            ndt = numpy_dtype_from_name(str(dt))
            raw = _unb64(data, where)
            if len(raw) != ndt.itemsize:
                raise IntegrityError(f"{where}: numpy scalar has {len(raw)} bytes for {ndt}")
            return np.frombuffer(raw, dtype=ndt)[0]
        if tag == "$pickle":
            if self.keep_pickle and not self.allow_pickle:
                _unb64(a, where)
                return {"$pickle": a}
            if not self.allow_pickle:
                raise PickleNotAllowedError(
                    f"{where} was saved with allow_pickle=True; loading it runs pickle, which can execute "
                    "code. Pass allow_pickle=True to load only if you trust this store."
                )
            return pickle.loads(_unb64(a, where))  # noqa: S301 - explicit opt-in
        raise IntegrityError(f"{where}: unknown tag {tag}")  # pragma: no cover


def _as_list(a: Any, where: str, n: int | None = None) -> list[Any]:
    if not isinstance(a, list) or (n is not None and len(a) != n):
        raise IntegrityError(f"{where}: malformed tagged value")
    return a


def contains_tag(node: Any, tags: frozenset[str]) -> bool:
    """Whether an encoded tree holds a value tagged with one of ``tags``."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list):
            stack.extend(n)
        elif isinstance(n, dict):
            if len(n) == 1 and next(iter(n)) in tags:
                return True
            stack.extend(n.values())
    return False


def contains_pickle(node: Any) -> bool:
    return contains_tag(node, frozenset({"$pickle"}))


def rebase_tensors(node: Any, offset: int) -> Any:
    """A copy of an encoded tree whose ``{"$tensor": i}`` references point ``offset`` further
    (its tensors moved to the end of a longer tensor table)."""
    if offset == 0:
        return node
    if isinstance(node, list):
        return [rebase_tensors(v, offset) for v in node]
    if isinstance(node, dict):
        if len(node) == 1 and type(node.get("$tensor")) is int:
            return {"$tensor": node["$tensor"] + offset}
        return {k: rebase_tensors(v, offset) for k, v in node.items()}
    return node


def encode_value(value: Any, path: str = "value") -> Any:
    """``value`` (no tensors) in the tree encoding of docs/format.md §5: JSON, no pickle.
    Raises ``UnsupportedValueError`` naming ``path`` for what the encoding cannot hold."""
    return Encoder(allow_tensors=False).encode(value, path)


def decode_value(node: Any) -> Any:
    """The inverse of ``encode_value``: the value of the JSON ``node`` (``IntegrityError`` on a
    malformed node; never unpickles)."""
    return Decoder([]).decode(node)


def decode_tree(m: Any, *, allow_pickle: bool = False) -> Any:
    """A manifest's state without reading any tensor data: each tensor is a ``TensorRef`` (its
    index and entry in ``m.tensors``), each sharded tensor its ``ShardedTensor`` record.
    ``m``: the manifest (``Store.manifest``); ``allow_pickle``: decode values stored with pickle."""
    refs = [TensorRef(i, e) for i, e in enumerate(m.tensors)]
    sharded = list(m.distributed.sharded) if m.distributed is not None else []
    return Decoder(refs, allow_pickle=allow_pickle, sharded=sharded).decode(m.tree)
