"""The load pipeline: objects -> verified, decoded bytes -> blob buffers.

Every object is read once (packs serve many blobs), its stored bytes are checked against the
hash that names it, decoded with its codec, and its segments copied into the blob buffers.
Reads run on a thread pool.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

from . import _hashing
from ._backend import Backend
from ._codec import get_codec
from ._errors import IntegrityError, ObjectMissingError
from ._layout import object_key
from ._manifest import Manifest


def check_manifest(m: Manifest, where: str) -> None:
    """Structural checks that must pass before any buffer is allocated."""
    for key, info in m.objects.items():
        if info.codec == "none" and info.raw_size != info.size:
            raise IntegrityError(f"{where}: object {key[:12]} is uncompressed but sizes differ")
        try:
            get_codec(info.codec)
        except ValueError:
            raise IntegrityError(f"{where}: object {key[:12]} has unknown codec {info.codec!r}") from None
    for i, b in enumerate(m.blobs):
        total = 0
        for seg in b.segments:
            info = m.objects.get(seg.object)
            if info is None:
                raise IntegrityError(f"{where}: blob {i} references object {seg.object[:12]} missing from the object table")
            if seg.offset + seg.length > info.raw_size:
                raise IntegrityError(f"{where}: blob {i} reads past the end of object {seg.object[:12]}")
            total += seg.length
        if total != b.nbytes:
            raise IntegrityError(f"{where}: blob {i} has {b.nbytes} bytes but its segments hold {total}")
    from ._tensors import check_entry

    for j, e in enumerate(m.tensors):
        if e.blob >= len(m.blobs):
            raise IntegrityError(f"{where}: tensor {j} points at blob {e.blob}, which does not exist")
        check_entry(e, m.blobs[e.blob].nbytes, f"{where}: tensor {j}")


def read_blobs(
    backend: Backend,
    m: Manifest,
    *,
    where: str,
    workers: int,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """A 1-D uint8 CPU tensor per blob of the manifest, filled with verified bytes."""
    bufs: list[torch.Tensor] = []
    for b in m.blobs:
        try:
            bufs.append(torch.empty(b.nbytes, dtype=torch.uint8))
        except RuntimeError as e:
            raise MemoryError(f"{where}: cannot allocate {b.nbytes} bytes for a tensor: {e}") from None
    views = [t.numpy() for t in bufs]
    by_object: dict[str, list[tuple[int, int, int, int]]] = {}
    for bi, b in enumerate(m.blobs):
        dest = 0
        for seg in b.segments:
            by_object.setdefault(seg.object, []).append((bi, seg.offset, seg.length, dest))
            dest += seg.length

    def fetch(key: str) -> None:
        info = m.objects[key]
        try:
            data = backend.read(object_key(key))
        except FileNotFoundError:
            raise ObjectMissingError(
                f"{where}: object {key} is missing from the store ({backend.describe(object_key(key))}); "
                "the checkpoint is damaged. Load an earlier one, or restore the object from a backup.",
                key) from None
        if len(data) != info.size:
            raise IntegrityError(f"{where}: object {key} has {len(data)} bytes, expected {info.size} (truncated?)")
        if verify and _hashing.digest(data) != key:
            raise IntegrityError(f"{where}: object {key} does not match its hash; the checkpoint is damaged")
        raw = get_codec(info.codec).decode(data, info.raw_size)
        src = np.frombuffer(raw, dtype=np.uint8)
        for bi, off, length, dest in by_object[key]:
            views[bi][dest : dest + length] = src[off : off + length]
        if progress:
            progress(info.raw_size)

    keys = list(by_object)
    if workers <= 1 or len(keys) <= 1:
        for k in keys:
            fetch(k)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptstore-read") as pool:
            for _ in pool.map(fetch, keys):
                pass
    return bufs
