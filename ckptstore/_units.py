"""Sizes for people: parse "2GiB", print 1.5 GiB."""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)


def parse_size(value: int | str | None) -> int:
    """Bytes from an int or text such as ``"2GiB"``, ``"500MB"``, ``"1.5G"``. Every unit is a
    power of 1024, with or without the ``i`` (a guard should err towards more space)."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"a size must be bytes or text like '2GiB', not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if m is None:
        raise ValueError(f"cannot read the size {value!r}: use bytes or text like 500MiB, 2GiB, 1.5T")
    mult = 1024 ** ("kmgtp".find(m.group(2).lower()) + 1) if m.group(2) else 1
    return int(float(m.group(1)) * mult)


def fmt_bytes(n: int) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{int(v)} B" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(n)  # pragma: no cover
