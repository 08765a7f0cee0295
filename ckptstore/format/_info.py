"""``CheckpointInfo``: the small frozen record the store hands out for each checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._manifest import Manifest, ManifestHeader, RngState


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed checkpoint, as listed by ``list_checkpoints`` and returned by ``save``."""

    id: str
    """The manifest's BLAKE3 hash (64 hex digits); ``short_id`` is its first 12."""
    step: int
    epoch: int | None
    created_at: datetime
    metrics: Mapping[str, float]
    tags: tuple[str, ...]
    size: int
    """Logical bytes of tensor data in the checkpoint."""
    stored_bytes: int
    """Bytes of all objects the checkpoint references (shared ones counted in full)."""
    new_bytes: int
    """Bytes this checkpoint's save actually wrote (what was not deduplicated)."""
    num_tensors: int
    key: str = field(repr=False)
    uri: str = field(repr=False)
    config: Any = field(default=None, repr=False)
    meta: Mapping[str, Any] = field(default_factory=dict, repr=False)
    rng: RngState | None = field(default=None, repr=False)
    producer: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @classmethod
    def from_manifest(cls, m: Manifest, *, id: str, key: str, uri: str, config: Any) -> CheckpointInfo:
        return cls.from_header(
            m,
            id=id,
            key=key,
            uri=uri,
            config=config,
            num_tensors=len(m.tensors),
            logical_bytes=m.stats.logical_bytes,
            stored_bytes=m.stats.stored_bytes,
            new_bytes=m.stats.new_bytes,
        )

    @classmethod
    def from_header(
        cls,
        h: ManifestHeader,
        *,
        id: str,
        key: str,
        uri: str,
        config: Any,
        num_tensors: int,
        logical_bytes: int,
        stored_bytes: int,
        new_bytes: int,
    ) -> CheckpointInfo:
        """The record of a manifest validated earlier, from its header and recorded figures."""
        return cls(
            id=id,
            step=h.step,
            epoch=h.epoch,
            created_at=h.created_at,
            metrics=dict(h.metrics),
            tags=tuple(h.tags),
            size=logical_bytes,
            stored_bytes=stored_bytes,
            new_bytes=new_bytes,
            num_tensors=num_tensors,
            key=key,
            uri=uri,
            config=config,
            meta=dict(h.meta),
            rng=h.rng,
            producer=dict(h.producer),
        )
