"""The raw-loop ``Checkpointer`` under ``torchrun``: every rank calls it, the ranks act as one.

When a process group of more than one rank is initialized, the Checkpointer:

- agrees on every save decision: each ``step()`` / ``epoch_end()`` all-reduces (MAX) a bitmask
  of the triggers that fired on this rank and the number of any signal it caught, on a gloo
  group of its own, so every rank saves at the same step (a SIGTERM on one rank makes all save
  at that step and exit);
- saves through DCP (``save_distributed``) on a gloo group of its own: each rank writes its
  shards, the coordinator commits once and applies retention once. With ``async_save`` each
  rank stages a copy of its state (DTensors: their local shards) and the save, collectives
  included, runs on a background thread while training goes on;
- resumes from the checkpoint rank 0 chose (the newest that verifies, with the same fallback as
  one process), broadcast to all, loaded into every rank's objects in place with
  ``load_distributed`` (any world size, any sharding).

Each rank's RNG states (Python, NumPy, torch, CUDA) are saved with the checkpoint, under
``RNG_KEY`` in its state, keyed by rank: their JSON text in a zero-padded uint8 tensor of
``RNG_BYTES`` (a tensor, so that it lands in an object of that rank's, not in the manifest,
which would grow by ~25 KB per rank; a fixed size, so that a resume has a tensor to read it
into). The coordinator's are also the manifest's ``rng``, which a one-process resume restores.
A resume on the same number of ranks gives every rank back its own; on a different number of
ranks, or from a checkpoint one process wrote, they are not restored (rank 0 warns once).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist

import ckptstore
from ckptstore import CheckpointInfo, CkptstoreError, IntegrityError, Store

from ._resume import DamagedCheckpoint, Resumable, ResumeFallbackWarning, fallback_message
from ._warn import warn as _warn

TRIGGERS = ("manual", "every_steps", "every_seconds", "final", "best", "epoch_end")
#: where each rank's RNG states go in a distributed Checkpointer's state
RNG_KEY = "_ckptstore_rng"
#: the size of each rank's RNG tensor (its JSON is ~25 KB: Python's and NumPy's 624-word states)
RNG_BYTES = 1 << 16


class PeerSaveError(CkptstoreError, RuntimeError):
    """A background save failed on another rank; this rank stops at the same step()."""


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class DistSync:
    """Collectives of one Checkpointer (see the module docstring)."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        # a group of our own: never interleaves with the training's collectives, and works on CPU
        # tensors whatever the default backend is (NCCL)
        self.group = dist.new_group(backend="gloo")
        # and one for saves: a background save's collectives (DCP's plans, the commit) run on
        # it while the training thread agrees on the next step on ``group``
        self.save_group = dist.new_group(backend="gloo")
        self._rng_text: str | None = None  # this rank's RNG states from the checkpoint resumed

    def agree(
        self, triggers: list[str], sig: signal.Signals | None, saver: Any = None
    ) -> tuple[list[str], signal.Signals | None]:
        """The union of every rank's triggers, and the signal any rank caught. With ``saver``,
        also whether any rank's background save failed: then every rank raises here, at the same
        call (its own save's error, or :class:`PeerSaveError`), so none goes on to a collective
        the others will not join."""
        mask = 0
        for t in triggers:
            if t in TRIGGERS:
                mask |= 1 << TRIGGERS.index(t)
        failed = int(saver is not None and saver.failed)
        box = torch.tensor([mask, int(sig) if sig is not None else 0, failed], dtype=torch.int64)
        dist.all_reduce(box, op=dist.ReduceOp.MAX, group=self.group)
        mask, signum = int(box[0]), int(box[1])
        if saver is not None and int(box[2]):
            saver.wait()  # this rank's save: raises its error (a failure in DCP fails every rank's)
            raise PeerSaveError(
                "ckptstore: the background save failed on another rank (its error is raised there); "
                "every rank stops here so that none waits for the others in a collective. Fix the cause "
                "and resume from the last checkpoint."
            )
        agreed = [name for i, name in enumerate(TRIGGERS) if mask & (1 << i)]
        agreed += [t for t in triggers if t not in TRIGGERS and not t.startswith("signal:")]
        got = signal.Signals(signum) if signum else None
        if got is not None:
            agreed.append(f"signal:{got.name}")
        return agreed, got

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    # -- save -------------------------------------------------------------------------------------
    def save(self, store: Store, state: Any, **kw: Any) -> CheckpointInfo:
        kw.pop("progress", None)
        kw.pop("allow_pickle", None)  # a distributed save never pickles
        rng = kw.get("rng")
        if isinstance(rng, ckptstore.RngState):  # every rank's own, in the state (module docstring)
            packed = _pack_rng(rng)
            if packed is not None:
                state = {**state, RNG_KEY: {str(self.rank): packed}}
        else:
            kw["rng"] = False
        from .dcp import save_distributed  # DCP is imported only when a distributed run saves

        return save_distributed(state, store, process_group=self.save_group, **kw)

    # -- resume -----------------------------------------------------------------------------------
    def choose(
        self, store: Store, step: int | None, id: str | None
    ) -> tuple[CheckpointInfo | None, tuple[DamagedCheckpoint, ...]]:
        """Rank 0 picks (verifying newest first, as ``find_resumable``); every rank gets its pick."""
        picked: Any = None
        error: BaseException | None = None
        if self.rank == 0:
            try:
                picked = ("ok", *_pick(store, step, id))
            except Exception as e:  # noqa: BLE001 - raised on every rank below
                error, picked = e, ("error", type(e).__name__, str(e))
        picked = self.broadcast(picked)
        if picked[0] == "error":
            if error is not None:
                raise error
            cls = getattr(ckptstore, picked[1], None)
            if isinstance(cls, type) and issubclass(cls, CkptstoreError):
                raise cls(picked[2])
            raise RuntimeError(f"rank 0 could not choose a checkpoint to resume: {picked[1]}: {picked[2]}")
        return picked[1], picked[2]

    def resume(
        self, store: Store, objects: Mapping[str, Any], extra: Any, *, step: int | None, id: str | None
    ) -> Resumable | None:
        """Load the agreed checkpoint into the objects' own state dicts (in place, every rank its
        shards); the caller then applies them with ``load_state_dict`` as in one process. Keys the
        checkpoint lacks keep their current values (reported as missing by the caller)."""
        info, skipped = self.choose(store, step, id)
        if info is None:
            return None
        init_optimizers(objects)
        state: dict[str, Any] = {}
        for name, obj in objects.items():
            if obj is not None:
                state[name] = [o.state_dict() for o in obj] if isinstance(obj, (list, tuple)) else obj.state_dict()
        if isinstance(extra, Mapping) and extra:
            state["extra"] = dict(extra)
        state[RNG_KEY] = {str(self.rank): torch.zeros(RNG_BYTES, dtype=torch.uint8)}  # for DCP to fill
        from .dcp import CkptstoreLoadPlanner, load_distributed

        load_distributed(state, store, id=info.id, planner=CkptstoreLoadPlanner(allow_partial_load=True))
        self._rng_text = _unpack_rng(state.pop(RNG_KEY, {}).get(str(self.rank)))
        found = Resumable(info, state, skipped)
        if skipped:
            _warn(fallback_message(found, store.uri), ResumeFallbackWarning)
        return found

    def restore_rng(self, store: Store, info: CheckpointInfo) -> list[str]:
        """Give this rank the RNG states it had when ``info`` (just resumed) was saved; what was
        not restored (all of it when the checkpoint came from another number of ranks)."""
        text, self._rng_text = self._rng_text, None
        m = store.manifest(id=info.id)
        saved_world = m.distributed.world_size if m.distributed is not None else 1
        if text is None or saved_world != self.world:
            why = (
                f"it was saved by {saved_world} process{'es' if saved_world != 1 else ''}, this run has {self.world}"
                if saved_world != self.world
                else "it holds none for this rank (written before ckptstore recorded each rank's)"
            )
            if self.rank == 0:
                _warn(
                    f"ckptstore: RNG states not restored from step {info.step}: {why}; random streams will "
                    "differ from an uninterrupted run"
                )
            return ["every RNG"]
        from ._resume import restore_rng_states

        return restore_rng_states(ckptstore.RngState.model_validate_json(text), info.step)


def _pack_rng(rng: ckptstore.RngState) -> torch.Tensor | None:
    """``rng``'s JSON in a zero-padded uint8 tensor of RNG_BYTES; None (with a warning) if larger."""
    data = rng.model_dump_json().encode()
    if len(data) > RNG_BYTES:
        _warn(f"ckptstore: this rank's RNG states take {len(data)} bytes (over {RNG_BYTES}); not recorded")
        return None
    out = torch.zeros(RNG_BYTES, dtype=torch.uint8)
    out[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return out


def _unpack_rng(t: Any) -> str | None:
    """The JSON text in a tensor from _pack_rng, or None when it holds none (a partial load)."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
        return None
    data = bytes(t.numpy()).rstrip(b"\0")
    return data.decode() if data else None


def _pick(
    store: Store, step: int | None, id: str | None
) -> tuple[CheckpointInfo | None, tuple[DamagedCheckpoint, ...]]:
    if step is not None or id is not None:
        info = store.info(step, id=id)
        store.verify(id=info.id)
        return info, ()
    if not store.exists():
        return None, ()
    skipped: list[DamagedCheckpoint] = []
    for info in sorted(store.list(), key=lambda i: (i.step, i.created_at), reverse=True):
        try:
            store.verify(id=info.id)
        except IntegrityError as e:
            skipped.append(DamagedCheckpoint(info.step, info.id, str(e)))
            continue
        return info, tuple(skipped)
    if skipped:
        raise IntegrityError(
            f"no checkpoint in {store.uri} verifies ({len(skipped)} damaged); restore the store "
            "from a backup, or start over in a new location"
        )
    return None, ()


def init_optimizers(objects: Mapping[str, Any]) -> None:
    """Give every optimizer its state tensors (a zero step with lr 0), so a load has targets."""
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    for obj in objects.values():
        for o in obj if isinstance(obj, (list, tuple)) else [obj]:
            if isinstance(o, torch.optim.Optimizer):
                _init_optim_state(o)
