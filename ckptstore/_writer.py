"""The save pipeline: blobs -> chunks and packs -> hashed, encoded, written objects.

Large blobs are cut into chunks, each its own object; small blobs are packed together into pack
objects (one open pack per byte-group width, so a pack of float32 tensors still compresses as
float32). Each object is one task on a thread pool: hash, look up, encode, write (BLAKE3,
zstd, numpy copies and file writes release the GIL, so tasks overlap and the disk is kept busy
by several writers at once; each local object is fsync'd by the thread that wrote it).

Memory stays bounded: CPU tensors are hashed and written straight from their own memory (no
copy); work that needs buffers (compression, packs, copies off an accelerator through reusable
pinned buffers) reserves their size from a byte budget of about 5% of the state before it is
queued. Unchanged data is recognised by its raw hash through the dedup index (built from
earlier manifests) and is neither re-encoded nor rewritten.
"""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import _hashing
from ._backend import Backend
from ._codec import MIN_SAVING, get_codec, object_codec
from ._layout import object_key
from ._manifest import Blob, Manifest, ObjectInfo, Segment
from ._staging import ByteBudget, Staging, copy_to_host, is_accelerator
from ._tensors import PlannedBlob

BLOB_LABEL = b"ckptstore.blob.v1"
PACK_ALIGN = 64
#: compressed objects are at most this large (bounds the buffers one compression task needs)
COMPRESSED_CHUNK = 8 << 20
#: the pipeline's buffers stay below this fraction of the state's size (or one task's need)
BUDGET_FRACTION = 0.05


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


def _host_bytes(source: Any, start: int, end: int, staging: Staging | None) -> tuple[np.ndarray, Any]:
    """Bytes ``[start, end)`` of a blob source as a uint8 numpy array on the host, and the
    staging buffer to give back afterwards (None when the array is a view of the source)."""
    if isinstance(source, np.ndarray):
        return source[start:end], None
    piece = source[start:end]
    if not is_accelerator(piece):
        return piece.numpy(), None
    if staging is None or end - start > staging.size:
        return piece.cpu().numpy(), None
    buf = staging.acquire()
    return copy_to_host(piece, buf).numpy(), buf


class _Session:
    """One save's shared state between the producer and the worker threads."""

    def __init__(self, backend: Backend, index: DedupIndex) -> None:
        self.backend = backend
        self.index = index
        self.objects: dict[str, ObjectInfo] = {}
        self.seen_raw: dict[str, tuple[str, ObjectInfo]] = {}
        self.new_bytes = 0
        self.new_objects = 0
        self.lock = threading.Lock()

    def lookup(self, raw_hash: str) -> tuple[str, ObjectInfo] | None:
        with self.lock:
            hit = self.seen_raw.get(raw_hash)
        if hit is None:
            with self.index.lock:
                hit = self.index.raw_objects.get(raw_hash)
        return hit

    def put(self, raw: np.ndarray, codec_name: str) -> tuple[str, str, ObjectInfo]:
        """Store ``raw`` as one object unless an identical one exists; (raw hash, key, info)."""
        rh = _hashing.digest(raw)
        hit = self.lookup(rh)
        if hit is not None:
            key, info = hit
            self._record(rh, key, info, 0)
            return rh, key, info
        stored: Any = raw
        if codec_name != "none":
            enc = get_codec(codec_name).encode(raw)
            if len(memoryview(enc).cast("B")) <= raw.nbytes * (1 - MIN_SAVING):
                stored = enc
            else:
                codec_name = "none"
        size = len(memoryview(stored).cast("B"))
        key = rh if codec_name == "none" else _hashing.digest(stored)
        info = ObjectInfo(codec=codec_name, size=size, raw_size=raw.nbytes,
                          raw_hash=None if key == rh else rh)
        written = self.backend.write(object_key(key), stored, if_absent=True)
        self._record(rh, key, info, size if written else 0)
        return rh, key, info

    def _record(self, rh: str, key: str, info: ObjectInfo, written: int) -> None:
        with self.lock:
            self.seen_raw.setdefault(rh, (key, info))
            self.objects[key] = info
            if written:
                self.new_bytes += written
                self.new_objects += 1


class _Pipeline:
    """Runs object tasks on a pool, each holding its byte reservation until it finishes."""

    def __init__(self, workers: int, budget: ByteBudget) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptstore-write")
        self.budget = budget
        self.slots = threading.BoundedSemaphore(2 * workers)
        self.futures: list[Future[Any]] = []
        self.error: BaseException | None = None

    def submit(self, reserve: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.error is not None:
            raise self.error
        self.slots.acquire()
        got = self.budget.acquire(reserve)

        def run() -> Any:
            try:
                return fn(*args)
            except BaseException as e:
                self.error = self.error or e
                raise
            finally:
                self.budget.release(got)
                self.slots.release()

        f = self.pool.submit(run)
        self.futures.append(f)
        return f

    def finish(self) -> None:
        self.pool.shutdown(wait=True)
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        for f in self.futures:
            f.cancel()
        self.pool.shutdown(wait=True)


@dataclass
class _OpenPack:
    """A pack being filled: where each small blob goes. Its bytes are copied together only when
    the pack is written, so an open pack holds views, not a buffer."""

    id: int
    fill: int = 0
    pieces: list[tuple[int, np.ndarray]] = field(default_factory=list)


def _align_down(n: int, a: int) -> int:
    return max(a, n - n % a)


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
    groups: list[int] | None = None,
    staging: Staging | None = None,
    budget: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """Write every planned blob's bytes as objects; the blob table and the objects it uses.

    ``codec`` is the user's compression (``none`` or ``zstd``); ``groups`` gives each blob's
    byte-group width (from its dtype) so ``zstd`` becomes ``zstd-bg2/4/8`` where that helps.
    """
    s = _Session(backend, index)
    groups = groups or [1] * len(planned)
    compressing = codec != "none"
    if compressing:
        chunk_size = min(chunk_size, COMPRESSED_CHUNK)
    chunk_size = _align_down(chunk_size, 4096)
    total = sum(p.nbytes for p in planned)
    # what one compression task needs: the encoded copy (about the raw size) and one plane
    per_chunk = chunk_size + chunk_size // 4 if compressing else 0
    limit = budget if budget is not None else max(per_chunk, int(total * BUDGET_FRACTION))
    if staging is None and any(is_accelerator(p.source) for p in planned):
        staging = Staging(chunk_size, count=max(1, min(workers, 4, limit // chunk_size)))
    pipe = _Pipeline(workers, ByteBudget(limit))

    blobs: list[Blob | None] = [None] * len(planned)
    large: dict[int, list[Future[tuple[str, str, ObjectInfo]]]] = {}
    small: list[tuple[int, str, int, int, int]] = []  # blob, hash, pack id, offset, length
    pack_futures: dict[int, Future[tuple[str, str, ObjectInfo]]] = {}  # pack id -> its task
    packs: dict[int, _OpenPack] = {}  # group width -> the pack being filled
    small_seen: dict[str, int] = {}
    pack_ids = itertools.count()

    def chunk_task(source: Any, start: int, end: int, name: str) -> tuple[str, str, ObjectInfo]:
        raw, buf = _host_bytes(source, start, end, staging)
        try:
            r = s.put(raw, name)
        finally:
            if buf is not None:
                staging.release(buf)  # type: ignore[union-attr]
        if progress:
            progress(end - start)
        return r

    def pack_task(p: _OpenPack, name: str) -> tuple[str, str, ObjectInfo]:
        buf = np.zeros(p.fill, dtype=np.uint8)  # zeros: the alignment gaps are part of the hash
        for off, piece in p.pieces:
            buf[off : off + piece.nbytes] = piece
        p.pieces.clear()
        return s.put(buf, name)

    def flush(group: int) -> None:
        p = packs.pop(group)
        # the pack is assembled in its task, from views of the tensors, into a reserved buffer
        reserve = p.fill + (p.fill + p.fill // 4 if compressing else 0)
        pack_futures[p.id] = pipe.submit(reserve, pack_task, p, object_codec(codec, group))

    def add_small(bi: int, raw: np.ndarray, group: int) -> None:
        n = raw.nbytes
        h = _hashing.digest(raw)
        with index.lock:
            hit = index.blobs.get(h)
        if hit is not None:
            segs, infos = hit
            with s.lock:
                s.objects.update(infos)
            blobs[bi] = Blob(hash=h, nbytes=n, segments=list(segs))
            return
        if h in small_seen:  # identical bytes already placed in a pack
            first = small[small_seen[h]]
            small.append((bi, h, first[2], first[3], n))
            return
        p = packs.get(group)
        if p is not None and p.fill + (-p.fill) % PACK_ALIGN + n > pack_size:
            flush(group)
            p = None
        if p is None:
            p = packs[group] = _OpenPack(id=next(pack_ids))
        off = p.fill + (-p.fill) % PACK_ALIGN
        p.pieces.append((off, raw))
        p.fill = off + n
        small_seen[h] = len(small)
        small.append((bi, h, p.id, off, n))

    try:
        for bi, pb in enumerate(planned):
            n = pb.nbytes
            g = groups[bi]
            if n == 0:
                blobs[bi] = Blob(hash=_hashing.digest(b""), nbytes=0, segments=[])
            elif n < pack_threshold:
                raw, _ = _host_bytes(pb.source, 0, n, None)
                add_small(bi, raw, g)
                if progress:
                    progress(n)
            else:
                name = object_codec(codec, g)
                chunks = []
                for a in range(0, n, chunk_size):
                    b = min(a + chunk_size, n)
                    chunks.append(pipe.submit(b - a + (b - a) // 4 if compressing else 0,
                                              chunk_task, pb.source, a, b, name))
                large[bi] = chunks
        for g in list(packs):
            flush(g)
        pipe.finish()
    except BaseException:
        pipe.abort()
        raise

    for bi, fs in large.items():
        parts = [f.result() for f in fs]
        segs = [Segment(object=key, offset=0, length=info.raw_size) for _, key, info in parts]
        h = parts[0][0] if len(parts) == 1 else _hashing.digest_parts(BLOB_LABEL, [p[0] for p in parts])
        blobs[bi] = Blob(hash=h, nbytes=planned[bi].nbytes, segments=segs)
    for bi, h, pid, off, length in small:
        _, key, _info = pack_futures[pid].result()
        blobs[bi] = Blob(hash=h, nbytes=length, segments=[Segment(object=key, offset=off, length=length)])
    assert all(b is not None for b in blobs)
    return WriteResult(blobs=blobs, objects=s.objects, new_bytes=s.new_bytes,  # type: ignore[arg-type]
                       new_objects=s.new_objects)


def blob_groups(entries: list[Any], nblobs: int) -> list[int]:
    """Each blob's byte-group width: that of its tensors' dtype when they agree, else 1."""
    from ._codec import group_for_dtype

    out: list[int | None] = [None] * nblobs
    for e in entries:
        g = group_for_dtype(e.kind, e.dtype)
        cur = out[e.blob]
        out[e.blob] = g if cur is None or cur == g else 1
    return [g or 1 for g in out]


def planned_device_sync(planned: list[PlannedBlob]) -> None:
    """Wait for queued device work before reading device tensors from worker threads."""
    if any(p.device.startswith("cuda") for p in planned) and torch.cuda.is_available():
        torch.cuda.synchronize()
