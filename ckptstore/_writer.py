"""The save pipeline: blobs -> chunks and packs -> hashed, encoded, written objects.

Large blobs are cut into ``chunk_size`` chunks, each its own object; small blobs are packed
together into pack objects. Hashing, encoding and writing run on a thread pool (BLAKE3, zstd and
file writes release the GIL); at most ``2 * workers`` chunks are in flight, so memory stays
bounded. Unchanged data is recognised by its raw hash through the dedup index (built from earlier
manifests) and is neither re-encoded nor rewritten.
"""

from __future__ import annotations

import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import _hashing
from ._backend import Backend
from ._codec import get_codec
from ._layout import object_key
from ._manifest import Blob, Manifest, ObjectInfo, Segment
from ._tensors import PlannedBlob

BLOB_LABEL = b"ckptstore.blob.v1"
PACK_ALIGN = 64
# zstd output that saves less than this fraction is stored raw instead ("skip what does not compress")
MIN_SAVING = 0.02


@dataclass
class DedupIndex:
    """What the store already holds, from manifests: raw content -> where it is stored."""

    blobs: dict[str, tuple[list[Segment], dict[str, ObjectInfo]]] = field(default_factory=dict)
    raw_objects: dict[str, tuple[str, ObjectInfo]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_manifest(self, m: Manifest) -> None:
        with self.lock:
            for key, info in m.objects.items():
                self.raw_objects.setdefault(info.raw_hash or key, (key, info))
            for b in m.blobs:
                if b.segments and b.hash not in self.blobs:
                    self.blobs[b.hash] = (b.segments, {s.object: m.objects[s.object] for s in b.segments})

    def forget_objects(self, keys: set[str]) -> None:
        """Drop entries that point at objects that were deleted (after gc)."""
        with self.lock:
            self.raw_objects = {r: v for r, v in self.raw_objects.items() if v[0] not in keys}
            self.blobs = {h: v for h, v in self.blobs.items() if not any(s.object in keys for s in v[0])}


@dataclass
class WriteResult:
    blobs: list[Blob]
    objects: dict[str, ObjectInfo]
    new_bytes: int
    new_objects: int


def _chunk_bytes(source: Any, start: int, end: int) -> memoryview:
    if isinstance(source, np.ndarray):
        return memoryview(source[start:end])
    piece = source[start:end]
    if piece.device.type != "cpu":
        piece = piece.to("cpu")
    return memoryview(piece.numpy())


class _Session:
    """One save's shared state between the producer and the worker threads."""

    def __init__(self, backend: Backend, codec_name: str, index: DedupIndex,
                 progress: Callable[[int], None] | None) -> None:
        self.backend = backend
        self.codec = get_codec(codec_name)
        self.index = index
        self.objects: dict[str, ObjectInfo] = {}
        self.seen_raw: dict[str, tuple[str, ObjectInfo]] = {}
        self.new_bytes = 0
        self.new_objects = 0
        self.lock = threading.Lock()
        self.progress = progress

    def lookup(self, raw_hash: str) -> tuple[str, ObjectInfo] | None:
        with self.lock:
            hit = self.seen_raw.get(raw_hash)
        if hit is None:
            with self.index.lock:
                hit = self.index.raw_objects.get(raw_hash)
        return hit

    def put(self, raw: memoryview | bytes, raw_hash: str | None = None) -> tuple[str, str, ObjectInfo]:
        """Store ``raw`` as one object unless an identical one exists; (raw hash, key, info)."""
        rh = raw_hash or _hashing.digest(raw)
        hit = self.lookup(rh)
        if hit is not None:
            key, info = hit
            self._record(rh, key, info, 0)
            return rh, key, info
        codec = self.codec
        stored: Any = raw
        if codec.name != "none":
            enc = codec.encode(raw)
            if len(enc) <= len(raw) * (1 - MIN_SAVING):
                stored = enc
            else:
                codec = get_codec("none")
        key = rh if codec.name == "none" else _hashing.digest(stored)
        info = ObjectInfo(codec=codec.name, size=len(stored), raw_size=len(raw),
                          raw_hash=None if key == rh else rh)
        written = self.backend.write(object_key(key), stored, if_absent=True)
        self._record(rh, key, info, len(stored) if written else 0)
        return rh, key, info

    def _record(self, rh: str, key: str, info: ObjectInfo, written: int) -> None:
        with self.lock:
            self.seen_raw.setdefault(rh, (key, info))
            self.objects[key] = info
            if written:
                self.new_bytes += written
                self.new_objects += 1


def write_blobs(
    backend: Backend,
    planned: list[PlannedBlob],
    *,
    codec: str,
    index: DedupIndex,
    chunk_size: int,
    pack_threshold: int,
    pack_size: int,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    s = _Session(backend, codec, index, progress)
    blobs: list[Blob | None] = [None] * len(planned)
    large_chunks: dict[int, list[Future[tuple[str, str, ObjectInfo]]]] = {}
    small_pending: list[tuple[int, str, int, int, int]] = []  # blob, hash, pack no, offset, length
    pack_futures: list[Future[tuple[str, str, ObjectInfo]]] = []
    pack = bytearray()
    small_seen: dict[str, int] = {}
    limiter = threading.BoundedSemaphore(max(2, 2 * workers))

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptstore-write")
    futures: list[Future[Any]] = []

    def submit(fn: Callable[..., Any], *args: Any) -> Future[Any]:
        limiter.acquire()

        def run() -> Any:
            try:
                return fn(*args)
            finally:
                limiter.release()

        f = pool.submit(run)
        futures.append(f)
        if any(x.done() and x.exception() for x in futures[-8:]):
            raise _first_error(futures)
        return f

    def chunk_task(source: Any, start: int, end: int) -> tuple[str, str, ObjectInfo]:
        r = s.put(_chunk_bytes(source, start, end))
        if progress:
            progress(end - start)
        return r

    def flush_pack() -> None:
        nonlocal pack
        if pack:
            data = bytes(pack)
            pack = bytearray()
            pack_futures.append(submit(s.put, data))
        else:
            pack_futures.append(None)  # type: ignore[arg-type]

    try:
        for bi, pb in enumerate(planned):
            n = pb.nbytes
            if n == 0:
                blobs[bi] = Blob(hash=_hashing.digest(b""), nbytes=0, segments=[])
            elif n < pack_threshold:
                raw = _chunk_bytes(pb.source, 0, n)
                h = _hashing.digest(raw)
                with index.lock:
                    hit = index.blobs.get(h)
                if hit is not None:
                    segs, infos = hit
                    with s.lock:
                        s.objects.update(infos)
                    blobs[bi] = Blob(hash=h, nbytes=n, segments=list(segs))
                elif h in small_seen:
                    small_pending.append((bi, h, *small_pending[small_seen[h]][2:]))
                else:
                    pad = (-len(pack)) % PACK_ALIGN
                    pack.extend(b"\0" * pad)
                    small_seen[h] = len(small_pending)
                    small_pending.append((bi, h, len(pack_futures), len(pack), n))
                    pack.extend(raw)
                    if len(pack) >= pack_size:
                        flush_pack()
                if progress:
                    progress(n)
            else:
                large_chunks[bi] = [submit(chunk_task, pb.source, a, min(a + chunk_size, n))
                                    for a in range(0, n, chunk_size)]
        flush_pack()
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        if any(f.exception() for f in done):
            raise _first_error(futures)
    except BaseException:
        for f in futures:
            f.cancel()
        pool.shutdown(wait=True)
        raise
    pool.shutdown(wait=True)

    for bi, fs in large_chunks.items():
        parts = [f.result() for f in fs]
        segs = [Segment(object=key, offset=0, length=info.raw_size) for _, key, info in parts]
        h = parts[0][0] if len(parts) == 1 else _hashing.digest_parts(BLOB_LABEL, [p[0] for p in parts])
        blobs[bi] = Blob(hash=h, nbytes=planned[bi].nbytes, segments=segs)
    for bi, h, pno, off, length in small_pending:
        _, key, _info = pack_futures[pno].result()
        blobs[bi] = Blob(hash=h, nbytes=length, segments=[Segment(object=key, offset=off, length=length)])
    assert all(b is not None for b in blobs)
    return WriteResult(blobs=blobs, objects=s.objects, new_bytes=s.new_bytes,  # type: ignore[arg-type]
                       new_objects=s.new_objects)


def _first_error(futures: list[Future[Any]]) -> BaseException:
    for f in futures:
        if f.done() and not f.cancelled() and f.exception() is not None:
            return f.exception()  # type: ignore[return-value]
    return RuntimeError("a write task failed")  # pragma: no cover


def planned_device_sync(planned: list[PlannedBlob]) -> None:
    """Wait for queued device work before reading device tensors from worker threads."""
    if any(p.device.startswith("cuda") for p in planned) and torch.cuda.is_available():
        torch.cuda.synchronize()
