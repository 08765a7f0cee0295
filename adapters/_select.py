"""Which checkpoint to resume from: the newest one that reads back whole.

Stand-in with the same contract as the raw-loop adapter's ``find_resumable`` (issue 6); the two
are meant to become one at merge.
"""

from __future__ import annotations

import warnings
from typing import Any

import ckptstore


def find_resumable(store: ckptstore.Store, *, step: int | None = None, id: str | None = None,
                   map_location: Any = "auto", allow_pickle: bool = False
                   ) -> tuple[ckptstore.CheckpointInfo, Any] | None:
    """(info, state) of the checkpoint to resume from, every byte verified, or None when the
    store has no checkpoint (or does not exist yet).

    With ``step`` or ``id`` that exact checkpoint is loaded (errors propagate). Otherwise the
    newest is tried first; when it is damaged or incomplete, the ones before it are tried in turn
    and a warning names what was skipped and what is used instead.
    """
    if step is not None or id is not None:
        info = store.info(step, id=id)
        return info, store.load(id=info.id, map_location=map_location, allow_pickle=allow_pickle)
    if not store.exists():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        infos = store.list()  # damaged manifests are left out with a warning
    bad: list[str] = []
    for w in caught:
        text = str(w.message)
        if text.startswith("skipping checkpoint"):  # an unreadable manifest: name it in the fallback
            bad.append(text.replace("skipping checkpoint at ", "", 1))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for info in reversed(infos):
        try:
            state = store.load(id=info.id, map_location=map_location, allow_pickle=allow_pickle)
        except ckptstore.CheckpointNotFoundError:  # removed meanwhile (retention in another process)
            continue
        except ckptstore.IntegrityError as e:
            bad.append(f"step {info.step} ({info.short_id}) is damaged: {e}")
            continue
        if bad:
            warnings.warn(f"ckptstore: the newest checkpoint in {store.uri}, " + "; ".join(bad)
                          + f". Resuming from step {info.step} ({info.short_id}) instead; the steps after it "
                          "will run again.", stacklevel=2)
        return info, state
    if bad:
        raise ckptstore.IntegrityError(f"no checkpoint in {store.uri} can be read back: " + "; ".join(bad))
    return None
