"""A manifest's header: the fields a listing shows, read without the tensor table.

A canonical manifest (format.md §6) is compact JSON with its fields in a fixed order, so its
header (``format`` .. ``parent``) is a prefix of its bytes, ending where ``,"tree":`` starts.
``header_end`` finds that offset for a manifest that has been validated in full; a listing that
knows the offset (from the validation cache) parses only those bytes with ``ManifestHeader``,
the model ``Manifest`` extends (the same fields and rules).
"""

from __future__ import annotations

from ._manifest import Manifest, ManifestHeader

#: the manifest's fields before ``tree``, in their order
HEADER_FIELDS = tuple(ManifestHeader.model_fields)
_TREE = b',"tree":'


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
