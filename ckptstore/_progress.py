"""Progress bars for long work: shown on a terminal, silent when piped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Callable

AUTO_MIN_BYTES = 256 << 20


def wanted(progress: bool | None, total: int) -> bool:
    if progress is not None:
        return bool(progress)
    return total >= AUTO_MIN_BYTES and sys.stderr.isatty()


@contextmanager
def byte_bar(total: int, desc: str, progress: bool | None) -> Iterator[Callable[[int], None] | None]:
    if not wanted(progress, total):
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False) as bar:
        yield bar.update
