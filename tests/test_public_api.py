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


def test_all_is_honest():
    for name in ckptstore.__all__:
        assert hasattr(ckptstore, name), name
    public = {n for n, v in vars(ckptstore).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "annotations"}
    assert public <= set(ckptstore.__all__), public - set(ckptstore.__all__)


PUBLIC = [
    "Accelerators", "Backup", "BackendUnavailableError", "CheckpointExistsError", "CheckpointInfo",
    "CheckpointNotFoundError", "CkptstoreError", "CopyResult", "DeviceUnavailableError", "GcReport",
    "InsufficientSpaceError", "IntegrityError", "Manifest", "ObjectMissingError", "PickleNotAllowedError", "Retention",
    "RetentionPlan", "RngState", "SaveSession", "Staged", "StorageError", "Store", "StoreNotFoundError",
    "UnsupportedFormatError", "UnsupportedValueError", "__version__", "auto_device", "capture_rng_state",
    "copy_checkpoints", "export_checkpoint", "from_plain", "import_checkpoint", "import_torch_file", "info",
    "list_checkpoints", "load", "read_hf_folder", "restore_rng", "restore_rng_state", "save", "to_plain",
    "write_hf_folder",
]


def test_all_is_exactly_the_public_api():
    """A name added to or removed from the public API is a decision: update this list with it."""
    assert sorted(ckptstore.__all__) == sorted(PUBLIC)
    assert len(set(ckptstore.__all__)) == len(ckptstore.__all__)


def test_adapters_use_only_the_public_api():
    """adapters/ import ckptstore's public names only; the core never imports the adapters."""
    import re

    private = re.compile(r"^\s*(?:from|import)\s+ckptstore\.(?!adapters\b)|^\s*from\s+\.\.", re.M)
    for f in os.listdir(os.path.join(ROOT, "adapters")):
        if f.endswith(".py"):
            with open(os.path.join(ROOT, "adapters", f), encoding="utf-8") as fh:
                found = private.findall(fh.read())
            assert not found, f"adapters/{f} imports ckptstore internals: {found}"
    for dirpath, _, files in os.walk(os.path.join(ROOT, "ckptstore")):
        for f in files:
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                    text = fh.read()
                assert not re.search(r"^\s*(?:from|import)\s+(?:ckptstore\.adapters|\.+adapters)\b", text, re.M), \
                    f"{os.path.relpath(os.path.join(dirpath, f), ROOT)} imports ckptstore.adapters"


def test_modules_are_private():
    pkg = os.path.join(ROOT, "ckptstore")
    for f in os.listdir(pkg):
        if f.endswith(".py"):
            assert f.startswith("_"), f"public module {f}: make it private and re-export names"


def test_import_is_light():
    """`import ckptstore` pulls in neither a framework nor a cloud client."""
    code = ("import sys, ckptstore; bad=[m for m in ('transformers','lightning','s3fs','gcsfs','boto3')"
            " if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_schema_in_docs_is_current():
    for name, doc in schema().items():
        with open(os.path.join(ROOT, "docs", "schema", f"{name}.schema.json"), encoding="utf-8") as f:
            assert json.load(f) == doc, f"docs/schema/{name}.schema.json is stale: run python -m ckptstore.format._manifest docs/schema"
