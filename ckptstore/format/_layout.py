"""Key names on storage and their grammars (see docs/format.md, "Layout").

Every key is relative to the store root and uses "/" as separator. Anything under the root that
does not match these grammars (temporary files, foreign files) is ignored by readers.
"""

from __future__ import annotations

import functools
import re

CONFIG_KEY = "ckptstore.json"
OBJECTS_DIR = "objects"
MANIFESTS_DIR = "manifests"

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
OBJECT_KEY_RE = re.compile(r"^objects/([0-9a-f]{2})/([0-9a-f]{64})$")
MANIFEST_KEY_RE = re.compile(r"^manifests/([0-9]{20})-([0-9a-f]{64})\.json$")
STEP_DIGITS = 20
MAX_STEP = 10**STEP_DIGITS - 1


def object_key(digest: str) -> str:
    """``objects/<first two hex digits>/<64 hex digits>``."""
    if not HASH_RE.match(digest):
        raise ValueError(f"not a hash: {digest!r}")
    return f"{OBJECTS_DIR}/{digest[:2]}/{digest}"


def manifest_key(step: int, digest: str) -> str:
    """``manifests/<step as 20 decimal digits>-<64 hex digits>.json``: sorts by step."""
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"step {step} is out of range: steps go from 0 to {MAX_STEP}")
    return f"{MANIFESTS_DIR}/{step:0{STEP_DIGITS}d}-{digest}.json"


@functools.lru_cache(maxsize=1 << 16)  # every save and listing parses every manifest's name
def parse_manifest_key(key: str) -> tuple[int, str] | None:
    """(step, manifest hash) for a manifest key, or None when the key is not one."""
    m = MANIFEST_KEY_RE.match(key)
    if m is None:
        return None
    return int(m.group(1)), m.group(2)


def parse_object_key(key: str) -> str | None:
    m = OBJECT_KEY_RE.match(key)
    if m is None or m.group(2)[:2] != m.group(1):
        return None
    return m.group(2)


def is_temporary(key: str) -> bool:
    """Temporary files written on the way to an atomic rename: ``.<name>.tmp-<suffix>``."""
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and ".tmp-" in name
