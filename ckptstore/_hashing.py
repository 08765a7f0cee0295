"""The store's one hash function: BLAKE3, 256-bit, written as 64 lowercase hex digits."""

from __future__ import annotations

from typing import Union

import blake3 as _blake3

ALGORITHM = "blake3"
Buffer = Union[bytes, bytearray, memoryview]

# Above this size the hash uses several threads (BLAKE3 is a tree hash: the digest is the same).
_THREADED_MIN = 8 << 20


def digest(data: Buffer) -> str:
    """Hex BLAKE3 of ``data``; releases the GIL, and uses all cores for large inputs."""
    if len(data) >= _THREADED_MIN:
        return _blake3.blake3(data, max_threads=_blake3.blake3.AUTO).hexdigest()
    return _blake3.blake3(data).hexdigest()


def digest_parts(label: bytes, digests: list[str]) -> str:
    """Hash of a sequence of hex digests under a label: the id of a multi-chunk blob."""
    h = _blake3.blake3(label)
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()
