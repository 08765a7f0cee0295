"""Sparse tensors (COO and CSR) in the state tree: ``{"$sparse": {...}}`` (format.md §5, version 3).

A sparse tensor is stored as its component tensors (ordinary dense entries of the tensor table)
plus its layout, size and flags; loading rebuilds it with torch's invariant checks on, so a
hostile manifest gives an ``IntegrityError``, never an out-of-bounds sparse tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .._errors import IntegrityError, UnsupportedValueError
from .._lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())

#: layout name -> (torch layout, component names in the order they are written)
#: layout name -> the component tensors it is stored as
LAYOUT_PARTS: dict[str, tuple[str, ...]] = {
    "coo": ("indices", "values"),
    "csr": ("crow_indices", "col_indices", "values"),
}


def _torch_layout(name: str) -> torch.layout:
    return torch.sparse_coo if name == "coo" else torch.sparse_csr


_FLAGS = {"coo": ("coalesced", "requires_grad", "parameter"), "csr": ("requires_grad", "parameter")}


def is_sparse(t: torch.Tensor) -> bool:
    return t.layout in (torch.sparse_coo, torch.sparse_csr)


def encode_sparse(t: torch.Tensor, path: str, add: Callable[[torch.Tensor, str], Any]) -> dict[str, Any]:
    """The ``$sparse`` node of ``t``; ``add`` stores a component tensor and returns its node."""
    if type(t) not in (torch.Tensor, torch.nn.Parameter):
        raise UnsupportedValueError(f"{path} is a sparse tensor subclass ({type(t).__qualname__})", path)
    d = t.detach()
    if d.layout == torch.sparse_coo:
        node: dict[str, Any] = {"layout": "coo", "size": list(d.shape)}
        node["indices"] = add(d._indices(), f"{path} (indices)")
        node["values"] = add(d._values(), f"{path} (values)")
        node["coalesced"] = bool(d.is_coalesced())
    else:
        node = {"layout": "csr", "size": list(d.shape)}
        node["crow_indices"] = add(d.crow_indices(), f"{path} (crow_indices)")
        node["col_indices"] = add(d.col_indices(), f"{path} (col_indices)")
        node["values"] = add(d.values(), f"{path} (values)")
    node["requires_grad"] = bool(t.requires_grad)
    node["parameter"] = isinstance(t, torch.nn.Parameter)
    return {"$sparse": node}


def decode_sparse(a: Any, dec: Callable[[Any], Any], where: str) -> Any:
    """Rebuild a sparse tensor from its ``$sparse`` node (components decoded with ``dec``).
    When the components are not tensors (a tree decoded without data), the decoded node."""
    layout = a.get("layout") if isinstance(a, dict) else None
    if layout not in LAYOUT_PARTS:
        raise IntegrityError(f"{where}: $sparse needs a layout of {sorted(LAYOUT_PARTS)}, not {layout!r}")
    torch_layout, names = _torch_layout(layout), LAYOUT_PARTS[layout]
    if set(a) != {"layout", "size", *names, *_FLAGS[layout]}:
        raise IntegrityError(f"{where}: $sparse ({layout}) has members {sorted(a)}")
    size = a["size"]
    if not isinstance(size, list) or not all(type(s) is int and s >= 0 for s in size):
        raise IntegrityError(f"{where}: $sparse size must be a list of non-negative ints")
    if not all(type(a[f]) is bool for f in _FLAGS[layout]):
        raise IntegrityError(f"{where}: $sparse flags must be booleans")
    parts = [dec(a[n]) for n in names]
    if not all(isinstance(p, torch.Tensor) for p in parts):
        if any(isinstance(p, torch.Tensor) or not hasattr(p, "index") for p in parts):
            raise IntegrityError(f"{where}: $sparse components must be tensors")
        return {**a, **dict(zip(names, parts))}  # references only (no data read)
    try:
        if torch_layout == torch.sparse_coo:
            indices, values = parts
            t = torch.sparse_coo_tensor(indices, values, size, is_coalesced=a["coalesced"], check_invariants=True)
        else:
            crow, col, values = parts
            t = torch.sparse_csr_tensor(crow, col, values, size, check_invariants=True)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        raise IntegrityError(f"{where}: invalid sparse tensor: {str(e).splitlines()[0]}") from None
    if a["parameter"]:
        return torch.nn.Parameter(t, requires_grad=a["requires_grad"])
    if a["requires_grad"]:
        t.requires_grad_(True)
    return t
