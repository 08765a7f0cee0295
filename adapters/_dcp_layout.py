"""DCP's global metadata <-> a ckptstore manifest (docs/format.md §21), both directions.

Saving: the coordinator turns DCP's ``Metadata`` and every rank's write results into the state a
``SaveSession.commit(state=...)`` encodes: the nested state (DCP's flattening undone with its own
``planner_data`` paths) whose tensors are ``TensorRef`` (a tensor written whole by one rank) or
``ShardedTensor`` (chunks from several ranks) leaves and whose other values are plain.

Loading: a manifest (distributed or written by one process) becomes DCP ``Metadata`` whose
``storage_data`` maps each stored chunk (fqn, offsets) to its entry in the tensor table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.distributed.checkpoint._traverse import set_element, traverse_state_dict
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.storage import WriteResult

import ckptstore
from ckptstore import CkptstoreError, Distributed, Manifest, ShardChunk, ShardedTensor, Staged, TensorRef

DCP_VERSION = "1.0.0"  # the metadata version DCP's own FileSystemWriter records in torch 2.13


class DistributedCheckpointError(CkptstoreError, RuntimeError):
    """The ranks of a distributed save or load disagree, or their results do not fit together."""


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ckptstore.UnsupportedFormatError(f"dtype {name!r} does not exist in this torch ({torch.__version__})")
    return dt


# -- saving: metadata + results -> state for commit ---------------------------------------------
@dataclass
class CommitPlan:
    parts: list[Staged]
    state: dict[str, Any]
    distributed: Distributed
    ranks_with_data: list[int] = field(default_factory=list)


def build_commit(metadata: Metadata, results: list[list[WriteResult]]) -> CommitPlan:
    parts: list[Staged] = []
    chunk_index: dict[tuple[str, tuple[int, ...]], int] = {}
    values: dict[str, Any] = {}
    with_data = []
    for rank, rs in enumerate(results):
        base = sum(len(p.tensors) for p in parts)
        part = next((r.storage_data["part"] for r in rs if r.storage_data.get("part") is not None), None)
        if part is not None:
            parts.append(Staged.model_validate(part))
            with_data.append(rank)
        for r in rs:
            sd = r.storage_data
            if "value" in sd:
                values[r.index.fqn] = sd["value"]
            else:
                if part is None:
                    raise DistributedCheckpointError(f"rank {rank} reported tensor {r.index.fqn} without its data")
                chunk_index[(r.index.fqn, tuple(r.index.offset or ()))] = base + sd["tensor"]
    state: dict[str, Any] = {}
    names: dict[str, list[Any]] = {}
    mappings = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    for fqn, md in metadata.state_dict_metadata.items():
        path = tuple(mappings.get(fqn, (fqn,)))
        names[fqn] = list(path)
        if isinstance(md, BytesStorageMetadata):
            if fqn not in values:
                raise DistributedCheckpointError(f"no rank wrote the value {fqn}")
            leaf: Any = ckptstore.decode_value(values[fqn])
        else:
            chunks = []
            for c in md.chunks:
                key = (fqn, tuple(c.offsets))
                if key not in chunk_index:
                    raise DistributedCheckpointError(f"no rank wrote the chunk of {fqn} at {list(c.offsets)}")
                chunks.append(ShardChunk(offsets=list(c.offsets), sizes=list(c.sizes), tensor=chunk_index[key]))
            whole = len(chunks) == 1 and chunks[0].sizes == list(md.size) and not any(chunks[0].offsets)
            leaf = (
                TensorRef(chunks[0].tensor)
                if whole
                else ShardedTensor(
                    dtype=_dtype_name(md.properties.dtype),
                    shape=list(md.size),
                    requires_grad=bool(md.properties.requires_grad),
                    chunks=chunks,
                )
            )
        set_element(state, path, leaf)
    dist = Distributed(world_size=len(results), dcp_version=metadata.version or DCP_VERSION, names=names)
    return CommitPlan(
        parts or [Staged(tree=[], tensors=[], blobs=[], objects={}, logical_bytes=0)], state, dist, with_data
    )


# -- loading: manifest -> metadata --------------------------------------------------------------
def _is_tensor_leaf(v: Any) -> bool:
    return isinstance(v, (TensorRef, ShardedTensor, torch.Tensor))


def _leaves(m: Manifest) -> dict[str, tuple[tuple[Any, ...], Any]]:
    """fqn -> (path, leaf) of a manifest's state, as DCP flattens it."""
    state = ckptstore.decode_tree(m)
    out: dict[str, tuple[tuple[Any, ...], Any]] = {}
    if m.distributed is not None:
        for fqn, path in m.distributed.names.items():
            node = state
            for p in path:
                try:
                    node = node[p]
                except (KeyError, IndexError, TypeError):
                    raise ckptstore.IntegrityError(
                        f"the manifest names {fqn} at {path}, which its tree lacks"
                    ) from None
            out[fqn] = (tuple(path), node)
        return out
    if not isinstance(state, dict):
        raise DistributedCheckpointError(
            f"this checkpoint's state is a {type(state).__name__}, not a dict: DCP loads only dict states"
        )

    def visit(path: tuple[Any, ...], value: Any) -> None:
        out[".".join(map(str, path))] = (path, value)

    traverse_state_dict(state, visit, keep_traversing=_is_tensor_leaf)
    return out


@dataclass
class ReadLayout:
    metadata: Metadata
    chunks: dict[MetadataIndex, int]  # (fqn, offsets) -> tensor entry index
    values: dict[str, Any]  # fqn -> decoded value


def read_layout(m: Manifest) -> ReadLayout:
    md: dict[str, Any] = {}
    chunks: dict[MetadataIndex, int] = {}
    values: dict[str, Any] = {}
    mappings: dict[str, tuple[Any, ...]] = {}
    for fqn, (path, leaf) in _leaves(m).items():
        mappings[fqn] = path
        if isinstance(leaf, TensorRef):
            e = leaf.entry
            if e.kind != "torch":
                raise DistributedCheckpointError(f"{fqn} is a numpy array; DCP loads only torch tensors")
            zeros = [0] * len(e.shape)
            md[fqn] = TensorStorageMetadata(
                TensorProperties(dtype=_dtype(e.dtype), requires_grad=e.requires_grad),
                torch.Size(e.shape),
                [ChunkStorageMetadata(torch.Size(zeros), torch.Size(e.shape))],
            )
            chunks[MetadataIndex(fqn, zeros)] = leaf.index
        elif isinstance(leaf, ShardedTensor):
            md[fqn] = TensorStorageMetadata(
                TensorProperties(dtype=_dtype(leaf.dtype), requires_grad=leaf.requires_grad),
                torch.Size(leaf.shape),
                [ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in leaf.chunks],
            )
            for c in leaf.chunks:
                chunks[MetadataIndex(fqn, c.offsets)] = c.tensor
        else:
            md[fqn] = BytesStorageMetadata()
            values[fqn] = leaf
    version = m.distributed.dcp_version if m.distributed is not None else DCP_VERSION
    return ReadLayout(Metadata(md, planner_data=mappings, storage_data=dict(chunks), version=version), chunks, values)
