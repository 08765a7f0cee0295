"""Tensors <-> byte runs ("blobs"): dtype names, storage sharing, views.

Saving: every tensor in the state becomes an entry that points into a blob. A tensor whose
storage no other tensor in the state shares gets a blob of its own contiguous bytes. Tensors that
share a storage (tied weights, views) share one blob covering the bytes they use, and each keeps
its offset and strides, so loading gives them back sharing one storage, as ``torch.load`` does.

Loading: a blob is a 1-D uint8 tensor; entries become typed views of it.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._errors import IntegrityError, UnsupportedFormatError, UnsupportedValueError
from .._lazy import lazy

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy("numpy", globals(), "np")
    torch = lazy("torch", globals())


@functools.cache
def _dtypes() -> dict[str, torch.dtype]:
    """torch's dtypes by name (built on first use: importing torch is slow)."""
    mod = importlib.import_module("torch")  # the module itself: dir() of the stand-in lists nothing
    return {
        name: v
        for name in dir(mod)
        if isinstance(v := getattr(mod, name), mod.dtype)
        and not name.startswith(("q", "_"))
        and str(v) == f"torch.{name}"
    }


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    dt = _dtypes().get(name)
    if dt is None:
        raise UnsupportedFormatError(
            f"the checkpoint has tensors of dtype {name!r}, which this torch ({torch.__version__}) "
            "does not have; load it with a newer torch"
        )
    return dt


def supported_dtypes() -> list[torch.dtype]:
    table = _dtypes()
    return [table[n] for n in sorted(table)]


_NUMPY_DTYPE_RE = re.compile(r"^[<>|=]([biufc]\d{1,2}|[SUV]\d{1,9}|[mM]8(\[[0-9]*[a-zA-Z]{1,2}\])?)$")


def numpy_dtype_from_name(name: str) -> np.dtype:
    if not _NUMPY_DTYPE_RE.match(name):
        raise IntegrityError(f"unsupported numpy dtype {name!r} in manifest")
    return np.dtype(name)


@dataclass
class PlannedBlob:
    """Bytes to store: ``source`` is a 1-D uint8 tensor (any device) or a numpy uint8 array."""

    source: Any
    nbytes: int
    device: str


@dataclass
class PlannedEntry:
    kind: str
    dtype: str
    shape: list[int]
    stride: list[int] | None
    blob: int
    offset: int
    device: str
    requires_grad: bool
    parameter: bool


@dataclass
class Plan:
    entries: list[PlannedEntry] = field(default_factory=list)
    blobs: list[PlannedBlob] = field(default_factory=list)


def _extent_elems(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    return 1 + sum((s - 1) * st for s, st in zip(shape, stride))


def _dense(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether the elements of a view fill a span of its storage exactly once (a permutation of
    contiguous strides: channels_last, a transpose), whatever the order of its dimensions."""
    expect = 1
    for st, size in sorted((st, size) for size, st in zip(shape, stride) if size != 1):
        if st != expect:
            return False
        expect *= size
    return True


def check_tensor(t: Any, path: str) -> None:
    """Raise UnsupportedValueError for tensors that cannot be stored as plain bytes."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise UnsupportedValueError(
            f"{path} is a tensor subclass ({type(t).__module__}.{type(t).__qualname__}); convert it to a "
            "plain tensor (e.g. .to_local() for a DTensor) before saving",
            path,
        )
    if t.layout != torch.strided:
        raise UnsupportedValueError(
            f"{path} has layout {t.layout}; store it dense (.to_dense()) or as its index/value tensors", path
        )
    if t.is_quantized:
        raise UnsupportedValueError(f"{path} is a quantized tensor; store its int_repr() and scales", path)
    if t.is_meta:
        raise UnsupportedValueError(f"{path} is on the meta device and has no data to store", path)
    if t.is_nested:
        raise UnsupportedValueError(f"{path} is a nested tensor; store its components", path)


def plan_tensors(tensors: list[Any]) -> Plan:
    """Group tensors (torch or numpy, already checked) into blobs and entries, in input order."""
    plan = Plan()
    groups: dict[tuple[str, int], list[int]] = {}
    prepared: list[Any] = []
    for i, t in enumerate(tensors):
        if isinstance(t, np.ndarray):
            prepared.append(t)
            continue
        if t.is_conj() or t.is_neg():
            t = t.resolve_conj().resolve_neg()
        prepared.append(t)
        st = t.untyped_storage()
        if t.numel() > 0 and st.nbytes() > 0:
            groups.setdefault((str(t.device), st.data_ptr()), []).append(i)

    shared_of: dict[int, tuple[int, int]] = {}  # tensor index -> (blob index, byte offset)
    for members in groups.values():
        if len(members) < 2:
            continue
        spans = []
        for i in members:
            t = prepared[i]
            size = t.element_size()
            start = t.storage_offset() * size
            spans.append((i, start, start + _extent_elems(tuple(t.shape), t.stride()) * size))
        lo = min(s for _, s, _ in spans)
        hi = max(e for _, _, e in spans)
        ok = [(i, s) for i, s, _ in spans if (s - lo) % prepared[i].element_size() == 0]
        if len(ok) < 2:
            continue
        base = torch.empty(0, dtype=torch.uint8, device=prepared[ok[0][0]].device)
        base.set_(prepared[ok[0][0]].untyped_storage(), lo, (hi - lo,), (1,))
        plan.blobs.append(PlannedBlob(base, hi - lo, str(base.device)))
        for i, s in ok:
            shared_of[i] = (len(plan.blobs) - 1, s - lo)

    for i, t in enumerate(prepared):
        if isinstance(t, np.ndarray):
            a = np.ascontiguousarray(t)
            raw = a.reshape(-1).view(np.uint8)
            plan.blobs.append(PlannedBlob(raw, raw.nbytes, "cpu"))
            plan.entries.append(
                PlannedEntry("numpy", a.dtype.str, list(a.shape), None, len(plan.blobs) - 1, 0, "cpu", False, False)
            )
            continue
        rg = bool(t.requires_grad)
        param = isinstance(tensors[i], torch.nn.Parameter)
        dev = str(t.device)
        if i in shared_of:
            b, off = shared_of[i]
            plan.entries.append(
                PlannedEntry("torch", dtype_name(t.dtype), list(t.shape), list(t.stride()), b, off, dev, rg, param)
            )
            continue
        c = t.detach()
        strided = c.numel() > 0 and list(c.stride()) != contiguous_strides(list(c.shape))
        if strided and _dense(tuple(c.shape), c.stride()):
            # channels_last, a transpose, a permute: its elements fill one span of its storage, so
            # store that span as it lies and keep the strides (the memory format torch.load gives)
            size = c.element_size()
            span = torch.empty(0, dtype=torch.uint8, device=c.device)
            span.set_(c.untyped_storage(), c.storage_offset() * size, (c.numel() * size,), (1,))
            plan.blobs.append(PlannedBlob(span, span.numel(), dev))
            plan.entries.append(
                PlannedEntry(
                    "torch",
                    dtype_name(t.dtype),
                    list(t.shape),
                    list(c.stride()),
                    len(plan.blobs) - 1,
                    0,
                    dev,
                    rg,
                    param,
                )
            )
            continue
        if not c.is_contiguous():
            c = c.contiguous()
        raw = c.reshape(-1).view(torch.uint8)
        plan.blobs.append(PlannedBlob(raw, raw.numel(), dev))
        plan.entries.append(
            PlannedEntry("torch", dtype_name(t.dtype), list(t.shape), None, len(plan.blobs) - 1, 0, dev, rg, param)
        )
    return plan


def contiguous_strides(shape: list[int]) -> list[int]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return list(reversed(strides))


#: element sizes of the torch dtypes every supported torch has, so that checking a manifest's
#: structure (a listing does) needs no torch import; other names are looked up in torch
_ITEMSIZES = {
    "bool": 1, "uint8": 1, "int8": 1, "int16": 2, "int32": 4, "int64": 8, "float16": 2, "bfloat16": 2,
    "float32": 4, "float64": 8, "complex32": 4, "complex64": 8, "complex128": 16,
}  # fmt: skip


def element_size(kind: str, dtype: str) -> int:
    """Bytes per element of a tensor entry's dtype (``kind``: "torch" or "numpy")."""
    if kind == "numpy":
        return int(numpy_dtype_from_name(dtype).itemsize)
    size = _ITEMSIZES.get(dtype)
    return size if size is not None else dtype_from_name(dtype).itemsize


def check_entry(e: Any, blob_nbytes: int, where: str) -> None:
    """Refuse entries whose view does not fit in its blob (before anything is allocated)."""
    itemsize = element_size(e.kind, e.dtype)
    if len(e.shape) > 64:
        raise IntegrityError(f"{where}: {len(e.shape)} dimensions")
    stride = e.stride if e.stride is not None else contiguous_strides(e.shape)
    if len(stride) != len(e.shape):
        raise IntegrityError(f"{where}: shape and stride lengths differ")
    if itemsize and e.offset % itemsize:
        raise IntegrityError(f"{where}: offset {e.offset} is not a multiple of the element size")
    numel = 1
    for s in e.shape:
        numel *= s
    if numel == 0:
        return
    end = e.offset + _extent_elems(tuple(e.shape), tuple(stride)) * itemsize
    if end > blob_nbytes:
        raise IntegrityError(f"{where}: view needs {end} bytes, blob has {blob_nbytes}")


def entry_to_tensor(e: Any, base: torch.Tensor) -> Any:
    """The tensor (or numpy array) for entry ``e``, a view of ``base`` (1-D uint8)."""
    if e.kind == "numpy":
        ndt = numpy_dtype_from_name(e.dtype)
        n = int(np.prod(e.shape, dtype=np.int64)) * ndt.itemsize
        arr = base[e.offset : e.offset + n].cpu().numpy()
        return arr.view(ndt).reshape(e.shape) if n else np.empty(e.shape, dtype=ndt)
    dt = dtype_from_name(e.dtype)
    if e.stride is None:
        n = 1
        for s in e.shape:
            n *= s
        n *= dt.itemsize
        t = base[e.offset : e.offset + n].view(dt).reshape(e.shape)
    else:
        t = torch.empty(0, dtype=dt, device=base.device)
        t.set_(base.untyped_storage(), (base.storage_offset() + e.offset) // dt.itemsize, e.shape, e.stride)
    if e.parameter:
        return torch.nn.Parameter(t, requires_grad=e.requires_grad)
    if e.requires_grad and (dt.is_floating_point or dt.is_complex):
        t.requires_grad_(True)
    return t
