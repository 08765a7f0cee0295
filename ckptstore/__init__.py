"""ckptstore: safe, small and fast PyTorch training checkpoints on any storage.

>>> import ckptstore
>>> info = ckptstore.save({"model": model.state_dict()}, "runs/exp1", step=500)   # doctest: +SKIP
>>> state = ckptstore.load("runs/exp1", map_location="auto")                        # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import typing

from ._errors import (
    BackendUnavailableError,
    BackupWarning,
    CheckpointExistsError,
    CheckpointNotFoundError,
    CkptstoreError,
    CkptstoreWarning,
    DeviceUnavailableError,
    InsufficientSpaceError,
    IntegrityError,
    InvalidArgumentError,
    ObjectMissingError,
    PickleNotAllowedError,
    StorageError,
    StoreNotFoundError,
    UnsupportedFormatError,
    UnsupportedValueError,
)
from ._version import __version__

# Everything else is imported on first use (PEP 562): ``import ckptstore`` and the read-only
# commands stay fast, and torch is imported only by what needs it.
_LAZY: dict[str, tuple[str, str]] = {
    "copy_checkpoints": ("._api", "copy_checkpoints"),
    "info": ("._api", "info"),
    "list_checkpoints": ("._api", "list_checkpoints"),
    "load": ("._api", "load"),
    "save": ("._api", "save"),
    "CheckpointInfo": (".format._info", "CheckpointInfo"),
    "Distributed": (".format._manifest", "Distributed"),
    "Manifest": (".format._manifest", "Manifest"),
    "RngState": (".format._manifest", "RngState"),
    "ShardChunk": (".format._manifest", "ShardChunk"),
    "ShardedTensor": (".format._manifest", "ShardedTensor"),
    "TensorRef": (".format._tree", "TensorRef"),
    "decode_tree": (".format._tree", "decode_tree"),
    "decode_value": (".format._tree", "decode_value"),
    "encode_value": (".format._tree", "encode_value"),
    "export_checkpoint": (".interop", "export_checkpoint"),
    "import_checkpoint": (".interop", "import_checkpoint"),
    "import_torch_file": (".interop", "import_torch_file"),
    "Accelerators": (".pipeline._devices", "Accelerators"),
    "auto_device": (".pipeline._devices", "auto_device"),
    "capture_rng_state": (".pipeline._rng", "capture_rng_state"),
    "restore_rng_state": (".pipeline._rng", "restore_rng_state"),
    "Backup": (".store._backup", "Backup"),
    "CopyResult": (".store._copy", "CopyResult"),
    "GcReport": (".store._gc", "GcReport"),
    "Retention": (".store._retention", "Retention"),
    "RetentionPlan": (".store._retention", "RetentionPlan"),
    "SaveSession": (".store._session", "SaveSession"),
    "Staged": (".store._session", "Staged"),
    "Store": (".store._store", "Store"),
    "dashboard": (".web", "dashboard"),
    "diff_checkpoints": (".web", "diff_checkpoints"),
    "restore_rng": (".pipeline._rng", "restore_rng_state"),
}

if typing.TYPE_CHECKING:
    from ._api import copy_checkpoints, info, list_checkpoints, load, save
    from .format._info import CheckpointInfo
    from .format._manifest import Distributed, Manifest, RngState, ShardChunk, ShardedTensor
    from .format._tree import TensorRef, decode_tree, decode_value, encode_value
    from .interop import export_checkpoint, import_checkpoint, import_torch_file
    from .pipeline._devices import Accelerators, auto_device
    from .pipeline._rng import capture_rng_state, restore_rng_state
    from .store._backup import Backup
    from .store._copy import CopyResult
    from .store._gc import GcReport
    from .store._retention import Retention, RetentionPlan
    from .store._session import SaveSession, Staged
    from .store._store import Store
    from .web import dashboard, diff_checkpoints

    restore_rng = restore_rng_state


def __getattr__(name: str) -> typing.Any:
    where = _LAZY.get(name)
    if where is not None:
        value = getattr(importlib.import_module(where[0], __name__), where[1])
        globals()[name] = value
        return value
    if name.isidentifier() and not name.startswith("__"):  # a subpackage: ckptstore.interop.read_hf_folder
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'ckptstore' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "Accelerators",
    "BackendUnavailableError",
    "Backup",
    "BackupWarning",
    "CheckpointExistsError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CkptstoreError",
    "CkptstoreWarning",
    "CopyResult",
    "DeviceUnavailableError",
    "Distributed",
    "GcReport",
    "InsufficientSpaceError",
    "IntegrityError",
    "InvalidArgumentError",
    "Manifest",
    "ObjectMissingError",
    "PickleNotAllowedError",
    "Retention",
    "RetentionPlan",
    "RngState",
    "SaveSession",
    "ShardChunk",
    "ShardedTensor",
    "Staged",
    "StorageError",
    "Store",
    "StoreNotFoundError",
    "TensorRef",
    "UnsupportedFormatError",
    "UnsupportedValueError",
    "__version__",
    "auto_device",
    "capture_rng_state",
    "copy_checkpoints",
    "dashboard",
    "decode_tree",
    "decode_value",
    "diff_checkpoints",
    "encode_value",
    "export_checkpoint",
    "import_checkpoint",
    "import_torch_file",
    "info",
    "list_checkpoints",
    "load",
    "restore_rng",
    "restore_rng_state",
    "save",
]
