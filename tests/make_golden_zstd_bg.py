"""Writes tests/golden/zstd-bg: a tiny store whose objects use the byte-grouped codecs
zstd-bg2/4/8 (format.md §4.1), written by ckptstore before the blosc2 codec became the default.
Every later ckptstore must keep loading it. Run once (never to "fix" a failing golden test):
    python tests/make_golden_zstd_bg.py
"""

import os
import shutil

import torch

import ckptstore

ROOT = os.path.join(os.path.dirname(__file__), "golden", "zstd-bg")


def golden_bg_state() -> dict:
    g = torch.Generator().manual_seed(7)
    w = torch.randn(40_001, generator=g) * 0.02  # an odd length: a tail after the planes
    return {
        "w32": w,
        "w16": w[:30_001].to(torch.bfloat16),
        "w64": w[:20_000].to(torch.float64),
        "i64": torch.arange(30_000, dtype=torch.int64) * 3,
        "small": torch.arange(100, dtype=torch.float32) / 7,  # packed
    }


if __name__ == "__main__":
    shutil.rmtree(ROOT, ignore_errors=True)
    ckptstore.Store(ROOT, chunk_size=256 << 10).save(golden_bg_state(), step=1, rng=False, compression="zstd")
    print(ROOT)
