"""The public surface: __all__ is honest, internals are private, the schema in docs/ is current."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import ckptstore
from ckptstore.format._manifest import schema

ROOT = os.path.dirname(os.path.dirname(__file__))


EXPECTED_ALL = [
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


def test_all_is_exact():
    """The public names, exactly: adding or removing one is a decision, made here too."""
    assert len(ckptstore.__all__) == len(set(ckptstore.__all__)), "duplicates in __all__"
    assert sorted(ckptstore.__all__) == EXPECTED_ALL
    for name in ckptstore.__all__:
        assert hasattr(ckptstore, name), name
    public = {
        n
        for n, v in vars(ckptstore).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "annotations"
    }
    assert public == set(ckptstore.__all__) - {"__version__"}, public ^ (set(ckptstore.__all__) - {"__version__"})


INTEROP_ALL = [
    "export_checkpoint",
    "from_plain",
    "import_checkpoint",
    "import_torch_file",
    "read_hf_folder",
    "to_plain",
    "write_hf_folder",
]


def test_interop_all_is_exact():
    """``ckptstore.interop``: the import/export verbs and the helpers framework adapters use."""
    import ckptstore.interop

    assert sorted(ckptstore.interop.__all__) == INTEROP_ALL
    for name in ("export_checkpoint", "import_checkpoint", "import_torch_file"):
        assert getattr(ckptstore, name) is getattr(ckptstore.interop, name)


def test_modules_are_private():
    """Modules are private (``_name.py``); folders name the layers and hold no public modules."""
    pkg = os.path.join(ROOT, "ckptstore")
    for dirpath, dirnames, files in os.walk(pkg):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for f in files:
            if f.endswith(".py") and f not in ("__init__.py", "__main__.py"):
                assert f.startswith("_"), f"public module {os.path.join(dirpath, f)}: make it private"
        if dirpath != pkg:
            assert os.path.isfile(os.path.join(dirpath, "__init__.py")), dirpath


def test_import_is_light():
    """`import ckptstore` pulls in neither a framework nor a cloud client."""
    code = (
        "import sys, ckptstore; bad=[m for m in ('transformers','lightning','s3fs','gcsfs','boto3')"
        " if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_schema_in_docs_is_current():
    for name, doc in schema().items():
        with open(os.path.join(ROOT, "docs", "schema", f"{name}.schema.json"), encoding="utf-8") as f:
            assert json.load(f) == doc, (
                f"docs/schema/{name}.schema.json is stale: run python -m ckptstore.format._manifest docs/schema"
            )
