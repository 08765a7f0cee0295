from __future__ import annotations

import os
import sys

import pytest
import torch

HERE = os.path.dirname(__file__)

# the validation cache (ckptstore/store/_verdicts.py) of this test run, not the user's
if "CKPTSTORE_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["CKPTSTORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="ckptstore-test-cache-")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def store_uri(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def python_exe():
    return sys.executable


def train_tiny(steps: int = 3, seed: int = 0):
    """A real model + AdamW + LR scheduler after a few steps (shared by several tests)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(steps):
        x = torch.randn(4, 16)
        loss = model(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    return model, opt, sched


@pytest.fixture(autouse=True)
def _restore_torch_globals():
    """Frameworks (Lightning's deterministic=True) flip process-wide torch switches; undo them."""
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.set_num_threads(threads)
