"""Choosing the checkpoint to resume from: the newest that verifies, or an explicit one.

Shared by every adapter (the raw loop, Hugging Face, Lightning). It uses only the public
store API plus the manifest key grammar of docs/format.md ("Layout"), which it needs to notice
manifests that are damaged: ``Store.list()`` leaves those out, and a fallback must name them.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import ckptstore
from ckptstore import CheckpointInfo, CheckpointNotFoundError, IntegrityError, Store, StoreNotFoundError

from ._warn import warn as _warn

log = logging.getLogger("ckptstore.loop")

# docs/format.md, "Layout": manifests/<step as 20 digits>-<64 hex>.json
_MANIFEST_KEY = re.compile(r"^manifests/([0-9]{20})-([0-9a-f]{64})\.json$")

__all__ = [
    "DamagedCheckpoint",
    "Resumable",
    "ResumeFallbackWarning",
    "find_resumable",
    "load_into",
    "restore_into",
]


class ResumeFallbackWarning(ckptstore.CkptstoreWarning):
    """The newest checkpoint did not verify; an older one was used."""


@dataclass(frozen=True)
class DamagedCheckpoint:
    """A checkpoint passed over because it did not verify."""

    step: int
    id: str
    reason: str

    @property
    def short_id(self) -> str:
        return self.id[:12]


@dataclass(frozen=True)
class Resumable:
    """The checkpoint chosen for resuming, its loaded (verified) state, and what was skipped."""

    info: CheckpointInfo
    state: Any = field(repr=False)
    skipped: tuple[DamagedCheckpoint, ...] = ()

    def __iter__(self) -> Iterator[Any]:
        """``info, state = find_resumable(...)``"""
        return iter((self.info, self.state))


def _damaged_manifests(store: Store, good: set[str]) -> list[tuple[int, str]]:
    out = []
    for key in store.backend.list("manifests"):
        m = _MANIFEST_KEY.match(key)
        if m is not None and m.group(2) not in good:
            out.append((int(m.group(1)), m.group(2)))
    return out


def _manifest_problem(store: Store, digest: str) -> str | None:
    try:
        store.info(id=digest)
    except IntegrityError as e:
        return str(e)
    except CheckpointNotFoundError:
        return None
    # UnsupportedFormatError propagates: a newer manifest is not damage; resuming from an older
    # checkpoint instead would quietly redo work (format.md §12)
    return None


def find_resumable(
    store: Store | str | os.PathLike[str],
    *,
    step: int | None = None,
    id: str | None = None,
    map_location: Any = "auto",
    allow_pickle: bool = False,
    warn: bool = True,
) -> Resumable | None:
    """Load the checkpoint to resume from (``store``: a Store or a URI). The result unpacks as
    ``info, state``.

    With ``step`` or ``id``: exactly that checkpoint; a missing or damaged one raises
    (``CheckpointNotFoundError`` / ``IntegrityError``): it was asked for by name.

    Otherwise the newest checkpoint whose manifest and every object verify. Damaged ones
    (a corrupt or truncated object or manifest, a missing object) are passed over, newest
    first, with one :class:`ResumeFallbackWarning` naming each and the one used. Returns None
    when there is nothing to resume (no store, or no checkpoints). When checkpoints exist but
    none verifies, raises ``IntegrityError`` rather than silently starting over.
    Storage errors (``StorageError``) and format errors propagate: they do not mean damage.
    """
    if not isinstance(store, Store):
        with Store(store) as opened:
            return find_resumable(
                opened, step=step, id=id, map_location=map_location, allow_pickle=allow_pickle, warn=warn
            )
    if step is not None or id is not None:
        info = store.info(step, id=id)
        state = store.load(id=info.id, map_location=map_location, allow_pickle=allow_pickle)
        return Resumable(info, state)
    if store.backend.root_state() == "file":
        raise StoreNotFoundError(
            f"{store.uri} is a file, not a checkpoint store. Give a folder (or bucket prefix) for the store; to bring "
            "a torch.save file into one, use ckptstore.import_torch_file().",
            path=store.uri,
        )
    if not store.exists():
        return None
    good = store.list()
    candidates: list[tuple[int, int, Any]] = [(i.step, 0, i) for i in good]
    candidates += [(s, 1, d) for s, d in _damaged_manifests(store, {i.id for i in good})]
    # newest step first; at equal steps an unreadable manifest counts as newer (its time is unknown)
    candidates.sort(key=lambda c: (c[0], c[1], c[2].created_at.timestamp() if c[1] == 0 else 0.0), reverse=True)
    skipped: list[DamagedCheckpoint] = []
    for s, kind, c in candidates:
        if kind == 1:
            reason = _manifest_problem(store, c)
            if reason is not None:
                skipped.append(DamagedCheckpoint(s, c, reason))
            continue
        try:
            state = store.load(id=c.id, map_location=map_location, allow_pickle=allow_pickle)
        except CheckpointNotFoundError:  # removed meanwhile (retention in another process)
            continue
        except IntegrityError as e:
            skipped.append(DamagedCheckpoint(c.step, c.id, str(e)))
            continue
        found = Resumable(c, state, tuple(skipped))
        if skipped and warn:
            _warn(fallback_message(found, store.uri), ResumeFallbackWarning)
        return found
    if skipped:
        names = "; ".join(f"step {d.step} ({d.short_id}): {d.reason}" for d in skipped)
        raise IntegrityError(
            f"no checkpoint in {store.uri} verifies ({len(skipped)} damaged: {names}). Restore the store "
            "from a backup, or start over in a new location."
        )
    return None


def fallback_message(r: Resumable, uri: str) -> str:
    first = r.skipped[0]
    more = ""
    if len(r.skipped) > 1:
        more = " Also damaged: " + ", ".join(f"step {d.step} ({d.short_id})" for d in r.skipped[1:]) + "."
    return (
        f"ckptstore: the newest checkpoint in {uri}, step {first.step} ({first.short_id}), is damaged: "
        f"{first.reason}. Resuming from step {r.info.step} ({r.info.short_id}) instead; the steps after it "
        f"will run again.{more}"
    )


def _load_one(obj: Any, state: Any, name: str) -> None:
    load = getattr(obj, "load_state_dict", None)
    if load is None:
        raise TypeError(
            f"{name} ({type(obj).__name__}) has no load_state_dict(); pass objects that do, "
            "or put plain values in extra="
        )
    load(state)


def load_into(state: Mapping[str, Any], objects: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """``obj.load_state_dict(state[name])`` for each named object (a list or tuple of objects
    matches a list of states). Returns (restored names, names the checkpoint does not have)."""
    restored, missing = [], []
    for name, obj in objects.items():
        if obj is None:
            continue
        if name not in state:
            missing.append(name)
            continue
        sub = state[name]
        if isinstance(obj, (list, tuple)):
            if not isinstance(sub, (list, tuple)) or len(sub) != len(obj):
                raise ValueError(
                    f"the checkpoint holds {len(sub) if isinstance(sub, (list, tuple)) else 1} "
                    f"state(s) for {name!r}, you passed {len(obj)} objects"
                )
            for i, (o, s) in enumerate(zip(obj, sub)):
                _load_one(o, s, f"{name}[{i}]")
        else:
            _load_one(obj, sub, name)
        restored.append(name)
    return restored, missing


def restore_into(
    found: Resumable, objects: Mapping[str, Any], extra: Any, *, rng: bool = True, uri: str = ""
) -> tuple[list[str], list[str], list[str]]:
    """Apply a loaded checkpoint in the Checkpointer layout: each object's ``load_state_dict``,
    ``extra`` (a dict) updated in place with the saved extras, and the RNG states (``rng``).
    Warns about objects the checkpoint lacks and RNG states this machine cannot take.
    Returns (restored names, missing names, RNG kinds not restored)."""
    info, state = found.info, found.state
    if not isinstance(state, Mapping):
        raise ValueError(
            f"checkpoint step {info.step} in {uri} holds a {type(state).__name__}, not the dict a "
            "Checkpointer writes; load it with ckptstore.load() instead"
        )
    restored, missing = load_into(state, objects)
    if objects and not restored:
        raise ValueError(
            f"checkpoint step {info.step} in {uri} has none of {sorted(objects)} (it has "
            f"{sorted(state)}); was it written by a Checkpointer?"
        )
    if missing:
        _warn(f"ckptstore: checkpoint step {info.step} has no state for {', '.join(missing)}; they start fresh")
    saved_extra = state.get("extra")
    if isinstance(extra, dict) and isinstance(saved_extra, Mapping):
        extra.update(saved_extra)
    skipped = restore_rng_states(info.rng, info.step) if rng and info.rng is not None else []
    return restored, missing, skipped


def restore_rng_states(rng: ckptstore.RngState, step: int) -> list[str]:
    """Apply RNG states saved at ``step``; one warning names the kinds this machine lacks
    (returned)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skipped = ckptstore.restore_rng(rng)
    if skipped:
        _warn(
            f"ckptstore: resumed step {step} on a machine without {', '.join(skipped)}: those RNG "
            "states were not restored (random streams on them will differ from an uninterrupted run)"
        )
    for w in caught:
        if not str(w.message).startswith("RNG states not restored"):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return skipped
