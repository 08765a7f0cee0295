"""Object stores (S3, GCS) and every other fsspec protocol: ``FsspecBackend``.

The unit of atomicity is one ``pipe_file``: a single PUT, a completed multipart upload, or one
GCS upload. There is no rename; the commit protocol of docs/format.md needs none.

Create-only writes (``write(..., if_absent=True)``) ask the server to refuse an existing key
(S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``) but correctness never depends on it:
objects are named by the hash of their bytes and manifests by the hash of theirs, so a server
that ignores the precondition overwrites a key with identical bytes. When the server does refuse
(``FileExistsError``), the existing bytes are read back and compared. That resolves the
*ambiguous write*: our PUT landed, the response was lost, the client retried and was told the key
exists. Same bytes: success. A damaged copy under a hash name is replaced.

Retries are bounded and configurable (``retries``, default 3): for S3 through botocore's
standard retry mode (plus one s3fs-level retry for broken response bodies), for GCS by a small
subclass of ``gcsfs.GCSFileSystem`` whose request retry count and backoff follow ``retries``
(gcsfs itself retries 6 times with up to 32 s between attempts). Every failure surfaces as a
:class:`~ckptstore.StorageError` naming the URI; a missing key stays ``FileNotFoundError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import fsspec.asyn

from .._errors import CkptstoreError, StorageError
from ..format import _hashing
from ..format._layout import parse_manifest_key, parse_object_key
from . import _s3io
from ._backend import Backend, Buffer

log = logging.getLogger("ckptstore")

DEFAULT_RETRIES = 3
#: seconds an S3 request waits for the server's next bytes (botocore's ``read_timeout``, 60 by
#: default); ``storage_options={"config_kwargs": {"read_timeout": ...}}`` sets another
READ_TIMEOUT = 20
OBJECT_STORE_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2"})


def _protocols(fs: Any) -> set[str]:
    p = getattr(fs, "protocol", ())
    return {p} if isinstance(p, str) else set(p)


#: exception class names (botocore, google-auth) that mean "no credentials were found": no retry helps
_NO_CREDENTIALS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError", "DefaultCredentialsError"}
)


def _credentials_missing(e: BaseException) -> str | None:
    """What the client said when ``e`` (or its cause) means no credentials were found, else None."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 5:
        if any(c.__name__ in _NO_CREDENTIALS for c in type(cur).__mro__):
            return str(cur) or type(cur).__name__
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def _credential_hint(fs: Any) -> str:
    """How to give credentials to this filesystem, for the library and the command line."""
    if _protocols(fs) & {"gs", "gcs"}:
        return (
            "Log in with `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS, "
            'or pass storage_options={"token": ...} (`-o token=...` on the command line; token=anon '
            "for a public bucket)."
        )
    return (
        "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass "
        'storage_options={"key": ..., "secret": ...} (`-o key=... -o secret=...` on the command line; '
        "anon=true for a public bucket)."
    )


def _self_hash(key: str) -> str | None:
    """The hash a key's content must have, for keys named by their content."""
    h = parse_object_key(key)
    if h is not None:
        return h
    parsed = parse_manifest_key(key)
    return parsed[1] if parsed is not None else None


class FsspecBackend(Backend):
    """Any fsspec filesystem (``memory://``, ``s3://``, ``gs://``, ...)."""

    def __init__(
        self, fs: Any, root: str, uri: str, *, retries: int | None = None, part_size: int | None = None
    ) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri
        self.retries = DEFAULT_RETRIES if retries is None else retries
        self.object_store = bool(_protocols(fs) & OBJECT_STORE_PROTOCOLS)
        # the capability flags (see Backend), from what the filesystem's own API offers
        self.supports_create_only = _accepts(fs.pipe_file, "mode")
        self.trusts_existing_objects = not self.supports_create_only  # else: refused, read back, compared
        self.supports_multipart = _accepts(fs.pipe_file, "chunksize")
        self.supports_mtime = type(fs).modified is not fsspec.AbstractFileSystem.modified
        # s3fs's cat_file first asks for the size (a HEAD) to split big reads into ranges; the
        # store reads many objects in parallel already, so one GET per object is enough
        self._cat_kw = {"max_concurrency": 1} if _accepts(getattr(fs, "_cat_file", None), "max_concurrency") else {}
        #: multipart part size (S3) / resumable chunk size (GCS); objects of at least twice this
        #: size (S3) or this size (GCS) go up in parts. None keeps the library default (50 MiB).
        self.part_size: int | None = part_size
        # s3fs: PUTs send the caller's buffers and GETs fill them, without intermediate copies
        self._zero_copy = _s3io.usable(fs)
        #: tries of a GET whose body breaks off after the answer began (botocore retries the rest)
        self._body_attempts = 1 if self.retries == 0 else 2
        self.supports_zero_copy = self._zero_copy
        self.parallel_transfers = _s3io.PARALLEL_TRANSFERS if self._zero_copy else 1

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Let ``FileNotFoundError``/``FileExistsError`` through; everything else becomes a
        StorageError that names the URI and what to check."""
        try:
            yield
        except (FileNotFoundError, FileExistsError, CkptstoreError):
            raise
        except Exception as e:  # network stacks raise many unrelated types
            raise self._storage_error(what, e) from e

    def _storage_error(self, what: str, e: Exception) -> StorageError:
        missing = _credentials_missing(e)
        if missing is not None:  # no retry helps: say how to give them, at once
            return StorageError(f"{what}: no credentials ({missing}). {_credential_hint(self.fs)}")
        if isinstance(e, PermissionError):
            return StorageError(
                f"{what}: permission denied ({e}). Check the credentials and the "
                "bucket's access rights (storage_options / environment)."
            )
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return StorageError(
            f"{what}: {detail} (after {self.retries} retries). Check the endpoint, the "
            "credentials and the network, then try again; raise retries= for a flaky "
            "link."
        )

    # -- reads ------------------------------------------------------------------------------
    def root_state(self) -> str:
        # fs.info, not isdir/exists: those answer False on any error, even a dead endpoint
        with self._errors(f"cannot reach {self.uri}"):
            try:
                kind = self.fs.info(self.root).get("type")
            except FileNotFoundError:
                return "missing"
        return "file" if kind == "file" else "dir"

    def read(self, key: str) -> bytes:
        with self._errors(f"cannot read {self.describe(key)}"):
            if not self._zero_copy:
                return bytes(self.fs.cat_file(self._path(key), **self._cat_kw))
            broken = _s3io.broken_body_errors()
            for attempt in range(self._body_attempts):
                try:
                    return bytes(self.fs.cat_file(self._path(key), **self._cat_kw))
                except broken:
                    if attempt == self._body_attempts - 1:
                        raise
                    time.sleep(0.1)
            raise AssertionError("unreachable")

    def read_into(self, key: str, out: Buffer) -> int:
        if not self._zero_copy:
            return super().read_into(key, out)
        view = memoryview(out).cast("B")
        _s3io.prefault(view)
        with self._errors(f"cannot read {self.describe(key)}"):
            return int(
                fsspec.asyn.sync(
                    self.fs.loop, _s3io.get_into, self.fs, self._path(key), view, attempts=self._body_attempts
                )
            )

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset={offset}, length={length}")
        if length == 0:
            return b""
        with self._errors(f"cannot read {self.describe(key)}"):
            return bytes(self.fs.cat_file(self._path(key), start=offset, end=offset + length))

    def exists(self, key: str) -> bool:
        with self._errors(f"cannot check {self.describe(key)}"):
            try:
                self.fs.info(self._path(key))
                return True
            except FileNotFoundError:
                return False

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        with self._errors(f"cannot list {self.describe(prefix)}"):
            try:
                found = self.fs.find(base)
            except FileNotFoundError:
                return []
        root = self.fs._strip_protocol(self.root).rstrip("/")
        out = []
        for p in found:
            p = self.fs._strip_protocol(p)
            if p.startswith(root + "/"):
                out.append(p[len(root) + 1 :])
        return out

    def size(self, key: str) -> int:
        with self._errors(f"cannot stat {self.describe(key)}"):
            return int(self.fs.size(self._path(key)))

    def mtime(self, key: str) -> float | None:
        with self._errors(f"cannot stat {self.describe(key)}"):
            try:
                return float(self.fs.modified(self._path(key)).timestamp())
            except (NotImplementedError, AttributeError, ValueError, KeyError):
                return None

    # -- writes -----------------------------------------------------------------------------
    def _pipe(self, key: str, views: Sequence[memoryview], create: bool) -> None:
        path = self._path(key)
        kw: dict[str, Any] = {}
        if create and self.supports_create_only:
            kw["mode"] = "create"
        if self.part_size and self.supports_multipart:
            kw["chunksize"] = self.part_size
        with self._errors(f"cannot write {self.describe(key)}"):
            try:
                self.fs.pipe_file(path, self._payload(views), **kw)
            except FileNotFoundError:
                if self.object_store:
                    bucket = self.fs._strip_protocol(self.root).split("/", 1)[0]
                    raise StorageError(
                        f"cannot write {self.describe(key)}: the bucket {bucket!r} does not "
                        "exist (or is not visible with these credentials). Create it first."
                    ) from None
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                self.fs.pipe_file(path, self._payload(views), **kw)

    def _payload(self, views: Sequence[memoryview]) -> Any:
        """What ``pipe_file`` sends: a body over the buffers themselves (s3fs), else bytes. A
        fresh one per call: botocore reads it and moves its position."""
        if not views:
            return b""
        if self._zero_copy:
            return _s3io.view_body(views)
        if len(views) == 1 and isinstance(views[0].obj, bytes) and len(views[0]) == len(views[0].obj):
            return views[0].obj
        return b"".join(views)

    def write(self, key: str, data: Buffer, *, if_absent: bool = False) -> bool:
        return self.write_parts(key, [data], if_absent=if_absent)

    def write_parts(self, key: str, parts: Sequence[Buffer], *, if_absent: bool = False) -> bool:
        views = [v for v in (memoryview(p).cast("B") for p in parts) if len(v)]
        if if_absent and not self.supports_create_only and self.exists(key):
            return False
        try:
            self._pipe(key, views, create=if_absent)
            return True
        except FileExistsError:
            if not if_absent:
                raise StorageError(f"cannot write {self.describe(key)}: the storage refused to overwrite it") from None
            return self._resolve_existing(key, views)

    def _resolve_existing(self, key: str, views: Sequence[memoryview]) -> bool:
        """A create-only write found the key taken: by identical bytes (an earlier save, or our
        own PUT whose response was lost: the ambiguous write), by a damaged copy of a
        content-named key (replaced), or by other content (left alone: ``if_absent``)."""
        try:
            existing = self.read(key)
        except FileNotFoundError:  # deleted in between: write it plainly
            self._pipe(key, views, create=False)
            return True
        payload = b"".join(views)
        if existing == payload:
            log.debug("%s already holds these bytes", self.describe(key))
            return False
        expected = _self_hash(key)
        if expected is not None and _hashing.digest(existing) != expected and _hashing.digest(payload) == expected:
            log.warning("replacing %s: its bytes do not match the hash in its name (damaged)", self.describe(key))
            self._pipe(key, views, create=False)
            return True
        return False

    def delete(self, key: str) -> None:
        with self._errors(f"cannot delete {self.describe(key)}"):
            try:
                self.fs.rm_file(self._path(key))
            except FileNotFoundError:
                return


def _accepts(fn: Any, name: str) -> bool:
    import inspect

    if fn is None:
        return False
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


# -- S3 and GCS ---------------------------------------------------------------------------------


def s3_options(options: dict[str, Any], retries: int) -> dict[str, Any]:
    """s3fs options with bounded retries and listings cache off, unless the caller set them."""
    opts = dict(options)
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", {"max_attempts": retries, "mode": "standard"})  # retries after the first try
    config.setdefault("connect_timeout", 10)
    # botocore waits 60 s for each answer; with its retries and s3fs's that made a server that
    # accepts connections but never answers fail only after 6 minutes
    config.setdefault("read_timeout", READ_TIMEOUT)
    opts["config_kwargs"] = config
    opts.setdefault("use_listings_cache", False)
    return opts


def open_object_store(uri: str, proto: str, options: dict[str, Any], *, retries: int | None = None) -> Backend:
    n = DEFAULT_RETRIES if retries is None else retries
    if proto in ("s3", "s3a"):
        fs, path = fsspec.core.url_to_fs(uri, **s3_options(options, n))
        # s3fs's own retry loops (one around every request, another around a GET and its body)
        # multiplied botocore's: retries are botocore's alone, and a body that breaks off after
        # the answer began is fetched once more by FsspecBackend
        fs.retries = 1
        return FsspecBackend(fs, path, uri, retries=n)
    cls = _bounded_gcs_class()
    opts = dict(options)
    opts.setdefault("use_listings_cache", False)
    fsspec.config.apply_config(cls, opts)
    fs = cls(ckptstore_retries=n, **opts)
    return FsspecBackend(fs, cls._strip_protocol(uri), uri, retries=n)


_GCS_CLASS: Any = None


def _bounded_gcs_class() -> Any:
    """``gcsfs.GCSFileSystem`` with ``retries``-bounded request retries and a short backoff."""
    global _GCS_CLASS
    if _GCS_CLASS is not None:
        return _GCS_CLASS
    import gcsfs
    from gcsfs.retry import RETRIABLE_EXCEPTIONS, HttpError, is_retriable

    inner = getattr(gcsfs.GCSFileSystem._request, "__wrapped__", None)

    class BoundedGCSFileSystem(gcsfs.GCSFileSystem):
        def __init__(self, *args: Any, ckptstore_retries: int = DEFAULT_RETRIES, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.ckptstore_retries = ckptstore_retries

        if inner is not None:

            async def _request(self, *args: Any, **kwargs: Any) -> Any:
                attempts = self.ckptstore_retries + 1
                for attempt in range(attempts):
                    try:
                        return await inner(self, *args, **kwargs)
                    except (FileNotFoundError, FileExistsError, ValueError, PermissionError):
                        raise
                    except Exception as e:
                        transient = (isinstance(e, HttpError) and is_retriable(e)) or isinstance(
                            e, (*RETRIABLE_EXCEPTIONS, asyncio.TimeoutError)
                        )
                        if not transient or attempt == attempts - 1:
                            raise
                        log.debug("GCS request failed (%s), retry %d of %d", e, attempt + 1, attempts - 1)
                        await asyncio.sleep(min(0.5 * 2**attempt, 10.0) * (0.5 + random.random()))  # noqa: S311 - jitter

    _GCS_CLASS = BoundedGCSFileSystem
    return _GCS_CLASS
