"""Sharded tensors (manifest version 2, docs/format.md §21): checks and assembly.

A sharded tensor is a global tensor stored as chunks, each chunk an ordinary entry of the tensor
table written by one of the processes that saved the checkpoint. Readers check, before anything
is allocated, that the chunks tile the tensor exactly (in bounds, no overlap, full cover), so an
assembled tensor never holds uninitialised memory.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .._errors import IntegrityError
from .._lazy import lazy
from ._manifest import Manifest, ShardedTensor
from ._tensors import dtype_from_name

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())


def _overlap(a: Any, b: Any) -> bool:
    return all(ao < bo + bs and bo < ao + as_ for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes))


def check_sharded(m: Manifest, where: str) -> None:
    """Structural checks of the ``distributed`` section (IntegrityError on the first problem)."""
    d = m.distributed
    if d is None:
        return
    for j, st in enumerate(d.sharded):
        w = f"{where}: sharded tensor {j}"
        dtype_from_name(st.dtype)
        ndim = len(st.shape)
        if ndim > 64:
            raise IntegrityError(f"{w}: {ndim} dimensions")
        total = 0
        for c in st.chunks:
            if len(c.offsets) != ndim or len(c.sizes) != ndim:
                raise IntegrityError(
                    f"{w}: a chunk has {len(c.offsets)} offsets and {len(c.sizes)} sizes for {ndim} dimensions"
                )
            if any(o + s > n for o, s, n in zip(c.offsets, c.sizes, st.shape)):
                raise IntegrityError(f"{w}: chunk at {c.offsets} of size {c.sizes} lies outside {st.shape}")
            if c.tensor >= len(m.tensors):
                raise IntegrityError(f"{w}: chunk points at tensor {c.tensor}, which does not exist")
            e = m.tensors[c.tensor]
            if e.kind != "torch" or e.dtype != st.dtype or list(e.shape) != list(c.sizes):
                raise IntegrityError(
                    f"{w}: chunk tensor {c.tensor} is {e.kind} {e.dtype}{e.shape}, expected torch {st.dtype}{c.sizes}"
                )
            total += math.prod(c.sizes)
        if total != math.prod(st.shape):
            raise IntegrityError(f"{w}: its chunks hold {total} elements, the tensor {math.prod(st.shape)}")
        _check_disjoint(st, w)


def _check_disjoint(st: ShardedTensor, where: str) -> None:
    """No two chunks overlap: a sweep along the longest dimension compares only chunks whose
    extents along it intersect."""
    chunks = [c for c in st.chunks if math.prod(c.sizes) > 0]
    if len(chunks) < 2:
        return
    dim = max(range(len(st.shape)), key=lambda i: st.shape[i]) if st.shape else 0
    chunks.sort(key=lambda c: c.offsets[dim] if st.shape else 0)
    active: list[Any] = []
    for c in chunks:
        start = c.offsets[dim] if st.shape else 0
        active = [a for a in active if (a.offsets[dim] + a.sizes[dim] if st.shape else 1) > start]
        for a in active:
            if _overlap(a, c):
                raise IntegrityError(f"{where}: chunks at {a.offsets} and {c.offsets} overlap")
        active.append(c)


def assemble(st: ShardedTensor, tensors: list[Any]) -> torch.Tensor:
    """The full tensor of ``st`` from its chunk tensors (``tensors[c.tensor]``), on the device of
    its first chunk. Checked by ``check_sharded`` first: the chunks tile the tensor."""
    dtype = dtype_from_name(st.dtype)
    device = tensors[st.chunks[0].tensor].device if st.chunks else torch.device("cpu")
    if len(st.chunks) == 1 and list(st.chunks[0].sizes) == list(st.shape):
        out = tensors[st.chunks[0].tensor].detach().reshape(st.shape)
    else:
        out = torch.empty(st.shape, dtype=dtype, device=device)
        for c in st.chunks:
            if math.prod(c.sizes) == 0:
                continue
            dst = out
            for d, (o, s) in enumerate(zip(c.offsets, c.sizes)):
                dst = dst.narrow(d, o, s)
            dst.copy_(tensors[c.tensor])
    if st.requires_grad and (dtype.is_floating_point or dtype.is_complex):
        out.requires_grad_(True)
    return out
