"""The dashboard page as one self-contained HTML document.

``page.html`` is the skeleton; ``page.css`` and ``page.js`` lay out the data; the charts are
drawn by uPlot (https://github.com/leeoniya/uPlot, MIT, ``uPlot.LICENSE``), whose minified
files ship in this package. Everything is inlined, so the page needs no network: the same
document is served by ``ckptstore dashboard`` and written by ``--output``.
"""

from __future__ import annotations

import functools
import html
import json
import math
import re
from importlib import resources
from typing import Any

#: the bundled uPlot release (ckptstore/web/uPlot.*)
UPLOT_VERSION = "1.6.32"
_KEYS = re.compile(r"(/\*__[A-Z_]+__\*/|__[A-Z]+__)")


@functools.cache
def asset(name: str) -> str:
    """A file shipped in this package (page.html, page.js, page.css, uPlot.iife.min.js, ...)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _clean(v: Any) -> Any:
    """``v`` with non-finite floats as the strings JSON.parse can read ("NaN", "Infinity")."""
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def to_json(v: Any) -> str:
    """Strict JSON (no NaN literals); values JSON lacks are shown by ``repr``."""
    return json.dumps(_clean(v), allow_nan=False, default=repr)


def _inline(text: str) -> str:
    """JSON or script text made safe inside a ``<script>`` element."""
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def render(snapshot: dict[str, Any], *, mode: str, refresh: float = 5.0, diff: dict[str, Any] | None = None) -> str:
    """The page for ``snapshot``; ``mode`` is ``"static"`` (a file) or ``"live"`` (served, polls)."""
    if mode not in ("static", "live"):
        raise ValueError(f"mode must be 'static' or 'live', not {mode!r}")
    parts = {
        "/*__UPLOT_CSS__*/": asset("uPlot.min.css"),
        "/*__PAGE_CSS__*/": asset("page.css"),
        "/*__UPLOT_JS__*/": _inline(asset("uPlot.iife.min.js")),
        "/*__PAGE_JS__*/": _inline(asset("page.js")),
        "__DATA__": _inline(to_json(snapshot)),
        "__DIFF__": _inline(to_json(diff)),
        "__MODE__": mode,
        "__REFRESH__": repr(float(refresh)),
        "__TITLE__": html.escape(str(snapshot.get("uri", ""))),
    }
    pieces = _KEYS.split(asset("page.html"))
    missing = set(parts) - set(pieces[1::2])
    if missing:
        raise RuntimeError(f"the page template lacks {sorted(missing)}")
    # one pass over the template: text inserted for one key is never searched for another
    return "".join(parts[x] if i % 2 else x for i, x in enumerate(pieces))
