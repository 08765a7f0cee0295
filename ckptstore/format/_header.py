"""A manifest's header: the fields a listing shows, read without the tensor table.

A canonical manifest (format.md §6) is compact JSON with its fields in a fixed order, so its
header (``format`` .. ``parent``) is a prefix of its bytes, ending where ``,"tree":`` starts.
``header_end`` finds that offset for a manifest that has been validated in full; a listing that
knows the offset (from the validation cache) parses only those bytes with ``ManifestHeader``,
whose fields and rules are the manifest's own.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from ._manifest import FORMAT_VERSION, Hash, Manifest, Metric, NonNeg, RngState

#: the manifest's fields before ``tree``, in their order
HEADER_FIELDS = ("format", "version", "step", "epoch", "created_at", "config", "metrics", "tags", "meta", "rng",
                 "producer", "parent")  # fmt: skip
_TREE = b',"tree":'


class ManifestHeader(BaseModel):
    """The header fields of ``Manifest`` with the same types and rules (``version`` is checked
    against the rest of the manifest by the full validation that found the header's end)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    format: Literal["ckptstore.manifest"] = "ckptstore.manifest"
    version: int = FORMAT_VERSION
    step: NonNeg
    epoch: Optional[int] = None
    created_at: datetime
    config: JsonValue = None
    metrics: dict[str, Metric] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    meta: dict[str, JsonValue] = Field(default_factory=dict)
    rng: Optional[RngState] = None
    producer: dict[str, str] = Field(default_factory=dict)
    parent: Optional[Hash] = None

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created_at needs a time zone")
        return v.astimezone(timezone.utc)


def header_end(data: bytes, m: Manifest) -> int:
    """Where the header of the manifest bytes ``data`` (validated as ``m``) ends: the offset of
    ``,"tree":``; 0 when ``data`` is not the canonical serialisation (then there is no prefix to
    read alone)."""
    prefix = m.model_dump_json(include=set(HEADER_FIELDS)).encode("utf-8")[:-1]
    if data.startswith(prefix) and data.startswith(_TREE, len(prefix)):
        return len(prefix)
    return 0


def parse_header(data: bytes, end: int) -> ManifestHeader:
    """The header of manifest bytes whose header ends at ``end`` (from ``header_end``).
    Raises pydantic's ``ValidationError`` when the bytes are not such a header."""
    return ManifestHeader.model_validate_json(data[:end] + b"}", strict=True)
