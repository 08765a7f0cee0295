"""``open_backend``: the backend for a store URI."""

from __future__ import annotations

import os
from typing import Any

from .._errors import BackendUnavailableError, InvalidArgumentError
from ._backend import Backend
from ._local import LocalBackend

_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


#: the options fsspec's local filesystem reads (any other it drops without a word)
_LOCAL_OPTIONS = {"auto_mkdir", "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_paths"}


def _plain_local_path(uri: str, options: dict[str, Any]) -> str | None:
    """The absolute path of a plain POSIX path (no protocol, no options) exactly as fsspec's local
    filesystem spells it, without importing fsspec (slow to import); None for anything else."""
    if options or os.sep != "/" or ":" in uri:
        return None
    if uri.startswith("/"):
        path = uri
    elif uri.startswith("~"):
        path = os.path.expanduser(uri)
    else:
        rest = uri[2:] if uri.startswith("./") else "" if uri == "." else uri
        path = f"{os.getcwd()}/{rest}"
    return path.rstrip("/") or "/"


def open_backend(
    uri: str | os.PathLike[str], storage_options: dict[str, Any] | None = None, *, retries: int | None = None
) -> Backend:
    """The backend for a URI: a local path or ``file://`` gives ``LocalBackend``, anything else
    an ``FsspecBackend`` (``memory://``, ``s3://``, ``gs://``, ...). ``retries`` bounds how often
    one storage request is retried on a transient error (S3 and GCS; default 3)."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError(f"a store URI must be a non-empty string or path, not {uri!r}")
    if not uri:
        raise InvalidArgumentError("a store URI must be a non-empty string or path, not ''")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise InvalidArgumentError(f"retries must be a non-negative int, not {retries!r}")
    options = dict(storage_options or {})
    local = _plain_local_path(uri, options)
    if local is not None:
        return LocalBackend(local, uri=uri)
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    proto = uri.split("://", 1)[0] if "://" in uri and "::" not in uri else None
    if proto in _EXTRAS and not uri.split("://", 1)[1].split("/", 1)[0]:
        raise InvalidArgumentError(f"{uri!r} names no bucket: write {proto}://BUCKET/PATH")
    try:
        if proto in _EXTRAS:
            from ._fsspec import open_object_store

            return open_object_store(uri, proto, options, retries=retries)
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except ImportError as e:
        proto = proto or uri.split("://", 1)[0]
        extra = _EXTRAS.get(proto)
        hint = f'pip install "ckptstore[{extra}]"' if extra else "install the fsspec package for it"
        raise BackendUnavailableError(f"cannot open {uri!r}: {e}. To use {proto}://, {hint}.") from None
    except ValueError as e:
        if str(e).startswith("Protocol not known"):
            proto = proto or uri.split("://", 1)[0]
            raise BackendUnavailableError(
                f"cannot open {uri!r}: no storage backend knows the protocol {proto}://. Use a local path, "
                "file://, memory://, s3://, gs:// or another fsspec protocol (its package must be installed)."
            ) from None
        raise InvalidArgumentError(f"cannot open store URI {uri!r}: {e}") from None
    if isinstance(fs, LocalFileSystem):
        unknown = sorted(set(options) - _LOCAL_OPTIONS)
        if unknown:  # fsspec's local filesystem takes any keyword and drops it
            raise InvalidArgumentError(
                f"storage options do nothing for a local path ({uri}): got {', '.join(unknown)}. They are "
                "for object stores (s3://, gs://...); a Store setting such as compression= or retention= may be "
                "misspelled"
            )
        return LocalBackend(path, uri=uri)
    from ._fsspec import FsspecBackend

    return FsspecBackend(fs, path, uri, retries=retries)
