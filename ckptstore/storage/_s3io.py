"""Object transfers to and from S3 without the copies s3fs makes (s3fs on aiobotocore's aiohttp).

A PUT through ``s3fs.pipe_file`` takes ``bytes``: a caller holding tensor memory first copies it
into new ``bytes``; botocore then wraps them in a ``BytesIO``, whose buffer aiohttp asks for,
which copies the whole object a second time (``BytesIO`` shares a ``bytes`` only until someone
asks for its buffer); aiohttp then reads it out again in 64 KiB pieces. :class:`ViewBody` is one
object that is both a seekable file for botocore (which reads it for the content length, the
CRC32 checksum and, on plain http, the SHA-256 of the signature) and an ``aiohttp`` payload
that writes slices of the caller's buffers (the parts of a pack need no join either) to the
socket: none of those copies happen.

A GET through ``cat_file`` joins the response body into new ``bytes`` that the caller then
copies into its buffer. :func:`get_into` reads the body straight into the caller's buffer with
aiobotocore's ``readinto`` (which keeps botocore's length and checksum checks).

:func:`usable` says whether a filesystem is one these paths fit; the backend falls back to
``pipe_file``/``cat_file`` with ``bytes`` everywhere else.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
from collections.abc import Sequence
from typing import Any

#: bytes handed to the socket per write (aiohttp waits for the transport to drain between)
SEND_SLICE = 256 << 10
#: requests a save or load keeps in flight (each waits on the network; none needs a buffer)
PARALLEL_TRANSFERS = 16


def usable(fs: Any) -> bool:
    """Whether ``fs`` is an s3fs filesystem on aiobotocore's aiohttp session (the default)."""
    try:
        import s3fs
        from aiohttp.payload import Payload  # noqa: F401 - the base ViewBody needs
    except ImportError:
        return False
    if not isinstance(fs, s3fs.S3FileSystem) or not hasattr(fs, "_call_s3"):
        return False
    session_cls = (getattr(fs, "config_kwargs", None) or {}).get("http_session_cls")
    if session_cls is not None:
        try:
            from aiobotocore.httpsession import AIOHTTPSession
        except ImportError:
            return False
        return isinstance(session_cls, type) and issubclass(session_cls, AIOHTTPSession)
    return True


_BODY_CLASS: Any = None


def view_body(parts: Sequence[memoryview]) -> Any:
    """A :class:`ViewBody` over ``parts`` (flat byte views; their memory must outlive the PUT)."""
    global _BODY_CLASS
    if _BODY_CLASS is None:
        _BODY_CLASS = _make_body_class()
    return _BODY_CLASS(list(parts))


def _make_body_class() -> Any:
    from aiohttp.payload import Payload

    class ViewBody(Payload):
        """The bytes of several buffers, in order: a seekable file for botocore, a payload for
        aiohttp. Reusable: botocore seeks back to the start before each try."""

        _autoclose = True  # nothing to release: the caller owns the buffers

        def __init__(self, parts: list[memoryview]) -> None:
            super().__init__(parts, content_type="application/octet-stream")
            self._parts = [p for p in parts if len(p)]
            self._nbytes = sum(len(p) for p in self._parts)
            self._size = self._nbytes  # what aiohttp reads as the payload's size
            self._pos = 0

        def __repr__(self) -> str:
            return f"<ViewBody {self._nbytes} bytes in {len(self._parts)} parts>"

        def __len__(self) -> int:
            return self._nbytes

        def __getitem__(self, item: slice) -> ViewBody:
            """A body over ``[start:stop]`` (s3fs slices the data for a multipart upload)."""
            if not isinstance(item, slice) or item.step not in (None, 1):
                raise TypeError("ViewBody supports only contiguous slices")
            start, stop, _ = item.indices(self._nbytes)
            return ViewBody(self._span(start, max(start, stop)))

        def _span(self, start: int, stop: int) -> list[memoryview]:
            out, base = [], 0
            for p in self._parts:
                end = base + len(p)
                if end > start and base < stop:
                    out.append(p[max(0, start - base) : min(len(p), stop - base)])
                base = end
                if base >= stop:
                    break
            return out

        # -- the file botocore reads (length, checksums, payload hash) and rewinds ----------
        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return True

        def tell(self) -> int:
            return self._pos

        def seek(self, offset: int, whence: int = 0) -> int:
            base = {0: 0, 1: self._pos, 2: self._nbytes}[whence]
            self._pos = min(max(0, base + offset), self._nbytes)
            return self._pos

        def read(self, n: int | None = -1) -> bytes:
            stop = self._nbytes if n is None or n < 0 else min(self._nbytes, self._pos + n)
            pieces = self._span(self._pos, stop)
            self._pos = stop
            return pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)

        # -- the payload aiohttp sends ---------------------------------------------------------
        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            return b"".join(self._parts).decode(encoding, errors)

        async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
            return b"".join(self._parts)

        async def write(self, writer: Any) -> None:
            await self.write_with_length(writer, None)

        async def write_with_length(self, writer: Any, content_length: int | None) -> None:
            left = self._nbytes if content_length is None else min(self._nbytes, content_length)
            for p in self._parts:
                for a in range(0, len(p), SEND_SLICE):
                    if left <= 0:
                        return
                    piece = p[a : a + min(SEND_SLICE, left)]
                    await writer.write(piece)
                    left -= len(piece)

    return ViewBody


_MADV_POPULATE_WRITE = 23  # Linux 5.14+
_madvise: Any = None


def prefault(view: memoryview) -> None:
    """Map fresh memory's pages in one call (``MADV_POPULATE_WRITE``) on the calling thread,
    before a GET fills them: cheaper than a fault per page, and not on the event loop's thread,
    which copies the body in. Does nothing where the call is unknown."""
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _madvise = fn
            except (OSError, AttributeError):
                pass
    if not _madvise or len(view) < (1 << 20):
        return
    try:
        start = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except TypeError:  # read-only: not a destination
        return
    page = start & ~4095
    _madvise(page, start + len(view) - page, _MADV_POPULATE_WRITE)  # a failure only costs the speed-up


class _Truncated(Exception):
    """The body ended before the length the response announced (retried like a broken body)."""


def broken_body_errors() -> tuple[type[BaseException], ...]:
    """What a response body that breaks off after the answer began raises (botocore does not
    retry those: the request itself succeeded)."""
    import aiohttp
    from botocore.exceptions import IncompleteReadError, ResponseStreamingError

    return (_Truncated, IncompleteReadError, ResponseStreamingError, aiohttp.ClientPayloadError, asyncio.TimeoutError)


async def get_into(fs: Any, path: str, out: memoryview, *, attempts: int = 2) -> int:
    """GET the object at ``path`` into ``out`` (a flat writable byte view); returns the object's
    size. When that size is not ``len(out)``, nothing more is read and ``out`` is unspecified.
    A missing key raises ``FileNotFoundError``; a body that breaks off is fetched again, up to
    ``attempts`` tries in all."""
    bucket, key, version = fs.split_path(path)
    kw = {"VersionId": version} if version else {}
    attempts = max(1, attempts)
    broken = broken_body_errors()
    for attempt in range(attempts):
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **kw)
        body = resp["Body"]
        try:
            size = resp.get("ContentLength")
            if size is not None and size != len(out):
                return int(size)
            got = 0
            while got < len(out):
                n = await body.readinto(out[got:])
                if not n:
                    raise _Truncated(f"{path}: the response ended after {got} of {len(out)} bytes")
                got += n
            # one more read at the end: the body checks its length (and checksum, when one came)
            extra = await body.readinto(bytearray(1))
            return got + extra
        except broken as e:
            if attempt == attempts - 1:
                raise OSError(f"reading {path} broke off: {e}") from e
            await asyncio.sleep(min(0.1 * 1.7**attempt, 2.0))
        finally:
            body.close()
    raise AssertionError("unreachable")
