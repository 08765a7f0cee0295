"""The manifest: one immutable JSON document per checkpoint, and the store config.

Both are pydantic models; their JSON Schema is exported to docs/ (``schema()``). The manifest's
bytes are hashed and the hash is part of its key, so a manifest verifies itself.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from .._errors import IntegrityError, UnsupportedFormatError
from . import _hashing

FORMAT_NAME = "ckptstore"
FORMAT_VERSION = 1
#: the version of a manifest with a ``distributed`` section (docs/format.md §21); manifests without
#: one stay version 1, byte for byte, so version-1 readers keep reading them
DISTRIBUTED_VERSION = 2
#: the version of a manifest whose tree uses an encoding added in version 3 (``$statedict``:
#: a module's state dict with its ``_metadata``), with or without a ``distributed`` section
STATE_VERSION = 3
MANIFEST_VERSIONS = (FORMAT_VERSION, DISTRIBUTED_VERSION, STATE_VERSION)


def manifest_version(*, distributed: bool, v3: bool) -> int:
    """The version a writer writes: the lowest that holds the manifest (format.md §12)."""
    if v3:
        return STATE_VERSION
    return DISTRIBUTED_VERSION if distributed else FORMAT_VERSION


#: ``ckptstore.json`` with ``chunk_size`` and ``checksum`` (docs/format.md §3); new stores get it,
#: version-1 configs stay version 1
CONFIG_VERSION = 2
STORE_VERSIONS = (FORMAT_VERSION, CONFIG_VERSION)
#: the smallest chunk size a store may record (and ``Store`` accepts)
MIN_CHUNK_SIZE = 64 << 10

Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="BLAKE3, 64 lowercase hex digits")]
NonNeg = Annotated[int, Field(ge=0)]
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _metric(v: Any) -> Any:
    return _NON_FINITE.get(v, v) if isinstance(v, str) else v


#: a metric value: a JSON number, or one of the strings "NaN", "Infinity", "-Infinity" (how the
#: writer spells non-finite values; JSON has no token for them)
Metric = Annotated[
    float,
    BeforeValidator(_metric),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"enum": sorted(_NON_FINITE)}]}),
]


def _require(*names: str) -> Any:
    """A model's JSON Schema also requires ``names`` (fields with a default that the reader
    nevertheless requires in a file: ``format`` and ``version``)."""

    def extra(schema: dict[str, Any]) -> None:
        schema["required"] = [*names, *(n for n in schema.get("required", []) if n not in names)]

    return extra


class _Model(BaseModel):
    # built on first use: a listing never needs the full manifest model
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings", defer_build=True)


def _store_config_schema(schema: dict[str, Any]) -> None:
    """``format`` and ``version`` required; version 2 requires ``chunk_size`` and ``checksum``,
    version 1 has neither (format.md §3)."""
    _require("format", "version")(schema)
    schema["allOf"] = [
        {
            "if": {"properties": {"version": {"const": CONFIG_VERSION}}},
            "then": {"required": ["chunk_size", "checksum"]},
            "else": {"properties": {"chunk_size": {"type": "null"}, "checksum": {"type": "null"}}},
        }
    ]


class StoreConfig(_Model):
    """``ckptstore.json`` at the store root. Version 2 adds ``chunk_size`` and ``checksum`` (both
    required there, absent in version 1); ``with_checksum`` fills the checksum in."""

    model_config = ConfigDict(json_schema_extra=_store_config_schema)

    format: Literal["ckptstore"] = "ckptstore"
    version: int = Field(default=FORMAT_VERSION, json_schema_extra={"enum": list(STORE_VERSIONS)})
    hash: Literal["blake3"] = "blake3"
    created_at: datetime
    #: a retention policy every writer and ``ckptstore gc`` apply (see retention docs); opaque here
    retention: Optional[dict[str, JsonValue]] = None
    chunk_size: Optional[StrictInt] = Field(
        None,
        ge=MIN_CHUNK_SIZE,
        exclude_if=lambda v: v is None,
        description="version 2: the chunk size every writer of the store uses",
    )
    checksum: Optional[Hash] = Field(
        None, exclude_if=lambda v: v is None, description="version 2: BLAKE3 of the config without this member"
    )

    @model_validator(mode="after")
    def _version_matches(self) -> StoreConfig:
        v2 = self.chunk_size is not None and self.checksum is not None
        if self.version == CONFIG_VERSION and not v2:
            raise ValueError("a version 2 store config needs chunk_size and checksum")
        if self.version == FORMAT_VERSION and (self.chunk_size is not None or self.checksum is not None):
            raise ValueError("a version 1 store config has no chunk_size or checksum")
        return self

    def with_checksum(self) -> StoreConfig:
        """This config with its checksum filled in (version 2; a version-1 config is unchanged)."""
        if self.version == FORMAT_VERSION:
            return self
        body = self.model_copy(update={"checksum": None})
        return self.model_copy(update={"checksum": config_checksum(json.loads(dump(body)))})


def new_store_config(chunk_size: int) -> StoreConfig:
    """The config of a store created now: version 2, recording ``chunk_size``."""
    cfg = StoreConfig(
        version=CONFIG_VERSION,
        created_at=datetime.now(timezone.utc),
        chunk_size=chunk_size,
        checksum="0" * 64,
    )
    return cfg.with_checksum()


def config_checksum(doc: dict[str, Any]) -> str:
    """BLAKE3 of a config's checksum bytes (§3): compact JSON of ``doc`` without ``checksum``."""
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return _hashing.digest(json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def config_damage(data: bytes, cfg: StoreConfig, what: str = "ckptstore.json") -> str | None:
    """What is wrong with the config bytes ``data`` (already parsed as ``cfg``), or None: a
    version-2 config whose checksum does not match its content was changed or damaged."""
    if cfg.checksum is None:
        return None
    if config_checksum(json.loads(data)) != cfg.checksum:
        return f"{what} does not match its checksum: it was changed by hand or damaged"
    return None


def salvage_store_config(data: bytes, what: str) -> tuple[StoreConfig, int | None]:
    """A stand-in for config bytes that do not parse or validate: the members still legible in
    the text (``version``, ``created_at``, ``chunk_size``) and no retention policy. Returns it and
    the chunk size read (None when none was legible). ``UnsupportedFormatError`` when the text
    names a newer version than this ckptstore reads."""
    text = data.decode("utf-8", "replace")

    def grab(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1) if m else None

    version = grab(r'"version"\s*:\s*(\d{1,9})\b')
    if version is not None and int(version) > max(STORE_VERSIONS):
        raise UnsupportedFormatError(
            f"{what} is format version {version}; this ckptstore reads up to {max(STORE_VERSIONS)}. "
            "Upgrade ckptstore (pip install -U ckptstore)."
        )
    chunk = grab(r'"chunk_size"\s*:\s*(\d{1,15})\b')
    chunk_size = int(chunk) if chunk is not None and int(chunk) >= MIN_CHUNK_SIZE else None
    created = datetime.now(timezone.utc)
    stamp = grab(r'"created_at"\s*:\s*"([^"]{10,40})"')
    if stamp is not None:
        try:
            parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            created = parsed if parsed.tzinfo is not None else created
        except ValueError:
            pass
    if chunk_size is None and version == str(FORMAT_VERSION):  # a version-1 store records none
        return StoreConfig(version=FORMAT_VERSION, created_at=created, chunk_size=None, checksum=None), None
    cfg = StoreConfig(
        version=CONFIG_VERSION, created_at=created, chunk_size=chunk_size or MIN_CHUNK_SIZE, checksum="0" * 64
    )
    return cfg.with_checksum(), chunk_size


def foreign_config(data: bytes) -> bool:
    """True when ``data`` is a JSON object that names another format than ckptstore's: a file of
    another tool under our name, not a damaged config of ours."""
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return False
    fmt = raw.get("format") if isinstance(raw, dict) else None
    return isinstance(fmt, str) and fmt != FORMAT_NAME


class ObjectInfo(_Model):
    """How one object is stored. ``raw_hash``: the hash of the decoded bytes when the codec is not
    ``none`` (readers check it, format.md §4); null when the codec is ``none``."""

    codec: str = Field(pattern=r"^[a-z0-9][a-z0-9_.+-]{0,31}$")
    size: NonNeg = Field(description="stored bytes (the object's length on storage)")
    raw_size: NonNeg = Field(description="bytes after decoding with the codec")
    raw_hash: Optional[Hash] = None


class Segment(_Model):
    """A byte range of a decoded object."""

    object: Hash
    offset: NonNeg
    length: NonNeg


class Blob(_Model):
    """A run of raw bytes (one tensor's data, or a storage shared by several tensors)."""

    hash: Hash = Field(description="content id: see docs/format.md")
    nbytes: NonNeg
    segments: list[Segment]


class TensorEntry(_Model):
    kind: Literal["torch", "numpy"] = "torch"
    dtype: str = Field(max_length=64)
    shape: list[NonNeg]
    stride: Optional[list[NonNeg]] = Field(None, description="element strides; null = contiguous")
    blob: NonNeg
    offset: NonNeg = Field(0, description="byte offset of element 0 in the blob")
    device: str = Field("cpu", max_length=64)
    requires_grad: bool = False
    parameter: bool = False


class PythonRng(_Model):
    version: int
    state: list[int]
    gauss: Optional[float] = None


class NumpyRng(_Model):
    bit_generator: str
    state: list[int]
    pos: int
    has_gauss: int
    cached_gaussian: float


class RngState(_Model):
    """Global random-number-generator states at save time (base64 for torch byte states)."""

    python: Optional[PythonRng] = None
    numpy: Optional[NumpyRng] = None
    torch: Optional[str] = None
    cuda: Optional[list[str]] = None
    mps: Optional[str] = None


class Stats(_Model):
    logical_bytes: NonNeg = Field(description="bytes of tensor data the state holds")
    stored_bytes: NonNeg = Field(description="bytes of all objects this checkpoint references")
    new_bytes: NonNeg = Field(description="bytes of objects this save wrote")
    new_objects: NonNeg


class ShardChunk(_Model):
    """One stored piece of a sharded tensor: the box ``offsets`` .. ``offsets + sizes``."""

    offsets: list[NonNeg]
    sizes: list[NonNeg]
    tensor: NonNeg = Field(description="index into `tensors`: the chunk's data, of shape `sizes`")


class ShardedTensor(_Model):
    """A tensor stored as chunks written by several processes (``{"$sharded": j}`` in the tree)."""

    dtype: str = Field(max_length=64)
    shape: list[NonNeg]
    requires_grad: bool = False
    chunks: list[ShardChunk]


PathItem = Union[StrictStr, StrictInt]


class Distributed(_Model):
    """How a checkpoint written by several processes at once (torch.distributed.checkpoint) maps
    onto the tree: see docs/format.md §21."""

    world_size: int = Field(ge=1, description="processes that wrote the checkpoint")
    dcp_version: Optional[str] = Field(None, max_length=64, description="torch.distributed.checkpoint metadata version")
    names: dict[str, list[PathItem]] = Field(
        description="flat name (DCP fully qualified name) -> path of its value in `tree`"
    )
    sharded: list[ShardedTensor] = Field(default_factory=list)


def _manifest_schema(schema: dict[str, Any]) -> None:
    _require("format", "version")(schema)
    # version 2 only with `distributed`, version 1 only without it, version 3 either (format.md §12, §21)
    schema["if"] = {"required": ["distributed"], "properties": {"distributed": {"type": "object"}}}
    schema["then"] = {"properties": {"version": {"enum": [DISTRIBUTED_VERSION, STATE_VERSION]}}}
    schema["else"] = {"properties": {"version": {"enum": [FORMAT_VERSION, STATE_VERSION]}}}


class ManifestHeader(_Model):
    """A manifest's header: its fields before ``tree``, in order (what a listing shows). A
    canonical manifest's header is a prefix of its bytes (``format/_header``)."""

    format: Literal["ckptstore.manifest"] = "ckptstore.manifest"
    version: int = FORMAT_VERSION
    step: NonNeg
    epoch: Optional[int] = None
    created_at: datetime
    config: JsonValue = None
    metrics: dict[str, Metric] = Field(default_factory=dict)
    tags: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(default_factory=list)
    meta: dict[str, JsonValue] = Field(default_factory=dict)
    rng: Optional[RngState] = None
    producer: dict[str, str] = Field(default_factory=dict)
    parent: Optional[Hash] = Field(None, description="id of the newest checkpoint when this was saved")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("created_at needs a time zone")
        return v.astimezone(timezone.utc)


class Manifest(ManifestHeader):
    model_config = ConfigDict(json_schema_extra=_manifest_schema)

    tree: JsonValue
    tensors: list[TensorEntry]
    blobs: list[Blob]
    objects: dict[Hash, ObjectInfo] = Field(json_schema_extra={"propertyNames": {"pattern": r"^[0-9a-f]{64}$"}})
    stats: Stats
    distributed: Optional[Distributed] = Field(
        None, exclude_if=lambda v: v is None, description="only in version 2 manifests (§21)"
    )

    @model_validator(mode="after")
    def _version_matches(self) -> Manifest:
        allowed = (FORMAT_VERSION, STATE_VERSION) if self.distributed is None else (DISTRIBUTED_VERSION, STATE_VERSION)
        if self.version not in allowed:
            raise ValueError(
                f"a manifest {'with' if self.distributed else 'without'} a distributed section "
                f"must be version {' or '.join(map(str, allowed))}, not {self.version}"
            )
        return self


def dump(model: BaseModel) -> bytes:
    """Canonical bytes: compact JSON, fields in declaration order, UTF-8."""
    return model.model_dump_json().encode("utf-8")


def _check_version(raw: Any, what: str, name: str, versions: tuple[int, ...]) -> None:
    if not isinstance(raw, dict):
        raise IntegrityError(f"{what} is not a JSON object")
    if raw.get("format") != name:
        raise IntegrityError(f"{what} is not a {name} document (format={raw.get('format')!r})")
    version = raw.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > max(versions):
        raise UnsupportedFormatError(
            f"{what} is format version {version}; this ckptstore reads up to {max(versions)}. "
            "Upgrade ckptstore (pip install -U ckptstore)."
        )
    if version not in versions or isinstance(version, bool):
        raise IntegrityError(f"{what} has an invalid format version {version!r}")


class _NotCanonical(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _NotCanonical(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(token: str) -> Any:
    raise _NotCanonical(f"bare {token} token (non-finite numbers are written as strings)")


def loads_strict(data: bytes | str, what: str) -> Any:
    """Parse JSON as a canonical writer writes it: a duplicate key or a bare ``NaN``/``Infinity``
    token is damage (``IntegrityError``), not something to guess about."""
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _NotCanonical as e:
        raise IntegrityError(f"{what} is not canonical JSON: {e}; the file is damaged") from None
    except (ValueError, RecursionError) as e:
        raise IntegrityError(f"{what} is not valid JSON: {e}") from None


def _parse(data: bytes, model: type[_Model], what: str, name: str, versions: tuple[int, ...]) -> Any:
    """Parse once: the model from the bytes; only bytes that are not the canonical serialisation
    of what they validate to (or do not validate) are parsed a second time, to report JSON
    damage, duplicate keys, bare non-finite tokens and the version first, as format.md asks."""
    try:
        # strict: a file holds exactly the JSON types the writer writes (no "5" for 5, no true for 1)
        m = model.model_validate_json(data, strict=True)
    except (ValidationError, RecursionError) as e:
        raw = loads_strict(data, what)
        _check_version(raw, what, name, versions)
        if isinstance(e, RecursionError):
            raise IntegrityError(f"{what} is nested too deeply") from None
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise IntegrityError(f"{what} does not validate ({e.error_count()} errors; {loc}: {first['msg']})") from None
    if dump(m) != data:  # canonical bytes hold no duplicate key and no bare NaN: no second parse
        raw = loads_strict(data, what)
        _check_version(raw, what, name, versions)
    _check_version({"format": getattr(m, "format", None), "version": getattr(m, "version", None)}, what, name, versions)
    return m


_PARSED: OrderedDict[str, Manifest] = OrderedDict()
_PARSED_MAX = 32
_parsed_lock = threading.Lock()


def parse_manifest(data: bytes, what: str = "manifest", digest: str | None = None) -> Manifest:
    """Validate manifest bytes. ``digest`` (the BLAKE3 of ``data``, already checked by the
    caller) lets a process reuse an earlier validation of the very same bytes: manifests are
    immutable and named by their hash, so equal digests mean equal documents."""
    if digest is not None:
        with _parsed_lock:
            m = _PARSED.get(digest)
            if m is not None:
                _PARSED.move_to_end(digest)
                return m
    m = _parse(data, Manifest, what, "ckptstore.manifest", MANIFEST_VERSIONS)
    if digest is not None:
        with _parsed_lock:
            _PARSED[digest] = m
            while len(_PARSED) > _PARSED_MAX:
                _PARSED.popitem(last=False)
    return m


def parse_store_config(data: bytes, what: str = "ckptstore.json") -> StoreConfig:
    return _parse(data, StoreConfig, what, FORMAT_NAME, STORE_VERSIONS)


def schema() -> dict[str, Any]:
    """JSON Schemas of the on-disk documents (exported to docs/schema/)."""
    return {
        "manifest": Manifest.model_json_schema(mode="serialization"),
        "store": StoreConfig.model_json_schema(mode="serialization"),
    }


def write_schema(folder: str) -> list[str]:
    """Write ``manifest.schema.json`` and ``store.schema.json`` into ``folder``."""
    import os

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, doc in schema().items():
        path = os.path.join(folder, f"{name}.schema.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
            f.write("\n")
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m ckptstore._manifest docs/schema
    import sys

    print("\n".join(write_schema(sys.argv[1] if len(sys.argv) > 1 else "docs/schema")))
