"""The store's one hash function: BLAKE3, 256-bit, written as 64 lowercase hex digits.

BLAKE3 runs at several GB/s per core with AVX2/AVX-512 and releases the GIL; above
``_THREADED_MIN`` bytes one hash is also spread over all cores (a tree hash: the digest is the
same either way).
"""

from __future__ import annotations

from collections.abc import Sequence

import blake3 as _blake3
from typing_extensions import Buffer

_THREADED_MIN = 8 << 20


def _nbytes(b: Buffer) -> int:
    return memoryview(b).nbytes


def digest(data: Buffer, *, parallel: bool = True) -> str:
    """Hex BLAKE3 of ``data``. ``parallel=False`` keeps it on the calling thread (the save and
    load pipelines hash many objects at once on their own threads; nesting is slower)."""
    if parallel and _nbytes(data) >= _THREADED_MIN:
        return _blake3.blake3(data, max_threads=_blake3.blake3.AUTO).hexdigest()
    return _blake3.blake3(data).hexdigest()


def digest_many(parts: Sequence[Buffer], *, parallel: bool = True) -> str:
    """Hex BLAKE3 of the concatenation of ``parts``, without concatenating them."""
    if len(parts) == 1:
        return digest(parts[0], parallel=parallel)
    big = parallel and sum(_nbytes(p) for p in parts) >= _THREADED_MIN
    threads = _blake3.blake3.AUTO if big else 1
    h = _blake3.blake3(max_threads=threads)
    for p in parts:
        h.update(p)
    return h.hexdigest()


def digest_parts(label: bytes, digests: list[str]) -> str:
    """Hash of a sequence of hex digests under a label: the id of a multi-chunk blob."""
    h = _blake3.blake3(label)
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()
