"""ckptstore: safe, small and fast PyTorch training checkpoints on any storage.

>>> import ckptstore
>>> info = ckptstore.save({"model": model.state_dict()}, "runs/exp1", step=500)   # doctest: +SKIP
>>> state = ckptstore.load("runs/exp1", map_location="auto")                        # doctest: +SKIP
"""

from __future__ import annotations

from ._api import copy_checkpoints, info, list_checkpoints, load, save
from .store._backup import Backup
from .store._copy import CopyResult
from .pipeline._devices import Accelerators, auto_device
from ._errors import (BackendUnavailableError, CheckpointExistsError, CheckpointNotFoundError,
                      CkptstoreError, DeviceUnavailableError, InsufficientSpaceError, IntegrityError,
                      ObjectMissingError, PickleNotAllowedError, StorageError, StoreNotFoundError,
                      UnsupportedFormatError, UnsupportedValueError)
from .store._gc import GcReport
from .format._info import CheckpointInfo
from .format._manifest import Manifest, RngState
from .store._retention import Retention, RetentionPlan
from .store._session import SaveSession, Staged
from .pipeline._rng import capture_rng_state, restore_rng_state
from .store._store import Store
from .interop._convert import from_plain, to_plain
from .interop._exporter import export_checkpoint
from .interop._hf_folder import read_hf_folder, write_hf_folder
from .interop._importer import import_checkpoint
from .interop._torchfile import import_torch_file

__version__ = "0.1.0"

restore_rng = restore_rng_state

__all__ = [
    "Accelerators",
    "Backup",
    "BackendUnavailableError",
    "CheckpointExistsError",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CkptstoreError",
    "CopyResult",
    "DeviceUnavailableError",
    "GcReport",
    "InsufficientSpaceError",
    "IntegrityError",
    "Manifest",
    "ObjectMissingError",
    "PickleNotAllowedError",
    "Retention",
    "RetentionPlan",
    "RngState",
    "SaveSession",
    "Staged",
    "StorageError",
    "Store",
    "StoreNotFoundError",
    "UnsupportedFormatError",
    "UnsupportedValueError",
    "__version__",
    "auto_device",
    "capture_rng_state",
    "copy_checkpoints",
    "export_checkpoint",
    "from_plain",
    "import_checkpoint",
    "import_torch_file",
    "info",
    "list_checkpoints",
    "load",
    "read_hf_folder",
    "restore_rng",
    "restore_rng_state",
    "save",
    "to_plain",
    "write_hf_folder",
]
