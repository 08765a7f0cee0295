"""ckptstore: safe, small and fast PyTorch training checkpoints on any storage.

>>> import ckptstore
>>> info = ckptstore.save({"model": model.state_dict()}, "runs/exp1", step=500)   # doctest: +SKIP
>>> state = ckptstore.load("runs/exp1", map_location="auto")                        # doctest: +SKIP
"""

from __future__ import annotations

from ._api import copy_checkpoints, info, list_checkpoints, load, save
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
