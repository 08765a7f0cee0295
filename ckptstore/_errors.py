"""Exceptions raised by ckptstore.

Every exception ckptstore raises on purpose derives from :class:`CkptstoreError`, and each leaf
also derives from the standard-library exception that code already catches for that situation::

    CkptstoreError(Exception)
    ├── StoreNotFoundError(FileNotFoundError)        no store at the URI (names the path)
    ├── CheckpointNotFoundError(LookupError)          no checkpoint with that step / id
    ├── CheckpointExistsError(FileExistsError)        a checkpoint id already taken
    ├── IntegrityError(ValueError)                    bytes or structure do not match their hash
    │   └── ObjectMissingError(FileNotFoundError)     a referenced object is gone
    ├── UnsupportedFormatError(ValueError)            written by a newer / unknown format version
    ├── InvalidArgumentError(ValueError)              an argument that cannot be right (an id not in hex)
    ├── UnsupportedValueError(TypeError)              a value in the state cannot be stored safely
    ├── PickleNotAllowedError(ValueError)             pickled data found without allow_pickle=True
    ├── DeviceUnavailableError(RuntimeError)          map_location names a device this machine lacks
    ├── InsufficientSpaceError(OSError)               not enough free space for a save
    ├── BackendUnavailableError(ImportError)          the fsspec protocol's package is missing
    └── StorageError(OSError)                         the storage failed (I/O error, dead mount, ...)

Every warning ckptstore issues is a :class:`CkptstoreWarning` (a ``UserWarning``), so one filter
silences or escalates them all (``warnings.simplefilter("error", ckptstore.CkptstoreWarning)``)::

    CkptstoreWarning(UserWarning)                    a checkpoint skipped, RNG not restored, ...
    └── BackupWarning(RuntimeWarning)                a backup mirror failed or restored a store

pydantic's ``ValidationError`` never escapes: a manifest that does not validate is an
:class:`IntegrityError` (or :class:`UnsupportedFormatError` for a newer version).
"""

from __future__ import annotations

import errno as _errno
import os as _os
import sys as _sys
import warnings as _warnings

__all__ = [
    "BackendUnavailableError",
    "BackupWarning",
    "CheckpointExistsError",
    "CheckpointNotFoundError",
    "CkptstoreError",
    "CkptstoreWarning",
    "DeviceUnavailableError",
    "InsufficientSpaceError",
    "IntegrityError",
    "ObjectMissingError",
    "PickleNotAllowedError",
    "StorageError",
    "StoreNotFoundError",
    "UnsupportedFormatError",
    "UnsupportedValueError",
]


class CkptstoreError(Exception):
    """Root of every error ckptstore raises on purpose."""


class StoreNotFoundError(CkptstoreError, FileNotFoundError):
    """There is no ckptstore store at the given URI."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


class CheckpointNotFoundError(CkptstoreError, LookupError):
    """The store exists but has no checkpoint matching the request."""


class CheckpointExistsError(CkptstoreError, FileExistsError):
    """A checkpoint that should be new already exists."""

    def __str__(self) -> str:
        return str(self.args[0])


class IntegrityError(CkptstoreError, ValueError):
    """Stored bytes or a manifest do not match their recorded hash or structure. ``key`` names
    the damaged object when one object is at fault."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class ObjectMissingError(IntegrityError, FileNotFoundError):
    """An object referenced by a manifest does not exist in the store."""

    def __init__(self, message: str, key: str | None = None) -> None:
        IntegrityError.__init__(self, message)
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class UnsupportedFormatError(CkptstoreError, ValueError):
    """The store or manifest was written in a format version this ckptstore cannot read."""


class InvalidArgumentError(CkptstoreError, ValueError):
    """An argument that cannot be right whatever the store holds (a checkpoint id that is not hex,
    a URI whose form no backend reads). Not exported by name: catch ``ValueError`` or
    ``CkptstoreError``."""


class UnsupportedValueError(CkptstoreError, TypeError):
    """A value in the state cannot be stored without pickle."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class PickleNotAllowedError(CkptstoreError, ValueError):
    """The checkpoint holds pickled values; loading them needs an explicit ``allow_pickle=True``."""


class DeviceUnavailableError(CkptstoreError, RuntimeError):
    """``map_location`` names a device this machine does not have."""


class InsufficientSpaceError(CkptstoreError, OSError):
    """The destination has less free space than the save needs."""

    def __init__(self, message: str, needed: int | None = None, free: int | None = None) -> None:
        super().__init__(_errno.ENOSPC, message)
        self.needed = needed
        self.free = free

    def __str__(self) -> str:
        return str(self.strerror)


class BackendUnavailableError(CkptstoreError, ImportError):
    """The URI's protocol needs a package that is not installed."""


class StorageError(CkptstoreError, OSError):
    """The storage failed underneath ckptstore (I/O error, dead mount, network)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class CkptstoreWarning(UserWarning):
    """Base class of every warning ckptstore issues."""


class BackupWarning(CkptstoreWarning, RuntimeWarning):
    """A backup mirror could not copy (training goes on), or restored an empty store from the backup."""


_PACKAGE = _os.path.dirname(_os.path.abspath(__file__)) + _os.sep


def warn_user(message: str, category: type[Warning] = CkptstoreWarning) -> None:
    """``warnings.warn`` pointing at the first frame outside the ckptstore package (the user's line)."""
    level = 2
    frame = _sys._getframe(1)
    while frame.f_back is not None and _os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    _warnings.warn(message, category, stacklevel=level)
