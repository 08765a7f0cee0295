"""torch.distributed.checkpoint (DCP) on a ckptstore store: sharded saves with one commit, no pickle.

>>> import torch.distributed.checkpoint as dcp
>>> from ckptstore.adapters.dcp import CkptstoreWriter, CkptstoreReader
>>> dcp.save(sd, storage_writer=CkptstoreWriter("s3://bucket/run", step=1000))     # doctest: +SKIP
>>> dcp.load(sd, storage_reader=CkptstoreReader("s3://bucket/run"))                # doctest: +SKIP
>>> save_distributed(sd, "runs/exp1", step=1000)    # the same, on every rank    # doctest: +SKIP

Every rank stages its own shards as content-addressed objects (deduplicated, durable when its
``write_data`` returns); their ``Staged`` records travel to the coordinator in DCP's write
results, and the coordinator's ``finish`` writes one manifest: the commit (docs/distributed.md).
Non-tensor values go into the manifest's JSON tree; nothing is pickled on storage, and loading
never calls ``pickle`` or ``torch.load``.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from ckptstore import CheckpointInfo, SaveSession, Store

from ._dcp_layout import DistributedCheckpointError, ReadLayout, build_commit, read_layout
from ._dcp_values import CkptstoreLoadPlanner, CkptstoreSavePlanner, deliver_value, value_node

log = logging.getLogger("ckptstore")

#: chunk bytes a rank reads at once while loading (bounds its memory beyond the target state)
READ_BATCH_BYTES = 64 << 20


def _core_share(peers: int) -> int:
    """The CPU cores one of ``peers`` ranks saving at once on this machine may keep busy."""
    return max(1, (os.cpu_count() or 1) // max(1, peers))  # as the writer counts the machine's cores


def _done(value: Any) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


class CkptstoreWriter(StorageWriter):
    """A DCP storage writer that saves into the ckptstore store at ``uri`` as one checkpoint.

    ``step``, ``epoch``, ``metrics``, ``tags``, ``config``, ``meta`` label the checkpoint (as in
    ``Store.save``); ``keep`` is applied once, by the coordinator, after the commit. ``rng``
    (default False) records the coordinator's RNG states only. ``uri`` may be an open ``Store``
    (its settings are used; it is not closed). The writer pickles cheaply (no open handles), so
    ``dcp.async_save`` works in thread and process mode (there a ``Store`` travels as its URI)."""

    def __init__(
        self,
        uri: str | os.PathLike[str] | Store,
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        config: Any = None,
        meta: Mapping[str, Any] | None = None,
        keep: Any = None,
        compression: str | bool | None = None,
        rng: Any = False,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._given: Store | None = uri if isinstance(uri, Store) else None
        self.uri = uri.uri if isinstance(uri, Store) else os.fspath(uri)
        self.step, self.epoch, self.config, self.keep, self.rng = step, epoch, config, keep, rng
        self.metrics = dict(metrics or {})
        self.tags = [tags] if isinstance(tags, str) else list(tags)
        self.meta = dict(meta or {})
        self.compression = compression
        self.storage_options = dict(storage_options or {})
        self.is_coordinator = False
        self.rank = 0
        self.info: CheckpointInfo | None = None
        """The committed checkpoint (on the coordinator, after ``finish``)."""
        self._store: Store | None = None
        self._session: SaveSession | None = None

    # -- pickling into DCP's background process: settings only ------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        state["_session"] = None
        state["_given"] = None
        return state

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def close(self) -> None:
        """Release this rank's save lease if a save left it open (a save that failed on another
        rank: DCP calls no writer method after that). Safe to call any time."""
        session, self._session = self._session, None
        if session is not None:
            session.abort()
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def _open_store(self) -> Store:
        if self._given is not None:
            return self._given
        if self._store is None:
            self._store = Store(self.uri, compression=self.compression, storage_options=self.storage_options)
        return self._store

    # -- StorageWriter --------------------------------------------------------------------------
    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.close()
        if checkpoint_id is not None:
            self.uri, self._given = os.fspath(checkpoint_id), None
        self.info = None

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.close()  # a lease left open by an earlier save that failed elsewhere
        if kwargs.get("use_collectives", True) is False:
            raise ValueError(
                "CkptstoreWriter needs use_collectives=True: without collectives there is no single "
                "commit of every rank's data"
            )
        self.is_coordinator = bool(is_coordinator)
        self.rank = int(kwargs.get("rank", dist.get_rank() if dist.is_available() and dist.is_initialized() else 0))
        self.info = None
        if self.is_coordinator:
            # The coordinator's lease spans from before any rank stages (the plan is scattered
            # after this) to the commit: no gc can sweep between a rank's reuse and the commit.
            self._session = self._open_store().session(keep=self.keep).open()

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return dataclasses.replace(plan, storage_data={"host": socket.gethostname()})

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # ranks on one machine share its cores: each rank's writer threads get its share
        hosts = [p.storage_data.get("host") if isinstance(p.storage_data, dict) else None for p in plans]
        counts = collections.Counter(hosts)
        return [dataclasses.replace(p, storage_data={"peers": counts[h]}) for p, h in zip(plans, hosts)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        try:
            return _done(self._write(plan, planner))
        except BaseException:
            self.close()
            raise

    def _write(self, plan: SavePlan, planner: SavePlanner) -> list[WriteResult]:
        results: list[WriteResult] = []
        tensor_items = []
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                results.append(
                    WriteResult(index=item.index, size_in_bytes=0, storage_data={"value": value_node(planner, item)})
                )
            else:
                tensor_items.append(item)
        if not tensor_items:
            if not self.is_coordinator:
                self.close()
            return results
        tensors = []
        for item in tensor_items:
            t = planner.resolve_data(item)
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"the planner resolved tensor item {item.index.fqn} to a {type(t).__name__}")
            tensors.append(t.detach())
        peers = plan.storage_data.get("peers", 1) if isinstance(plan.storage_data, dict) else 1
        cores = _core_share(peers)
        if self._session is not None:  # the coordinator: its session spans the whole save
            staged = self._session.stage(
                tensors, compression=self.compression, progress=False, step=self.step, cores=cores
            )
        else:
            # under the coordinator's lease (taken before the plan reached this rank, held until
            # the commit): one lease per save, however many ranks
            with self._open_store().session(lease=False) as session:
                staged = session.stage(
                    tensors, compression=self.compression, progress=False, step=self.step, cores=cores
                )
        part = staged.model_dump(mode="json")
        for k, (item, t) in enumerate(zip(tensor_items, tensors)):
            results.append(
                WriteResult(
                    index=item.index,
                    size_in_bytes=t.numel() * t.element_size(),
                    storage_data={"tensor": k, "part": part if k == 0 else None},
                )
            )
        return results

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        """The commit: every rank's objects are durable and every rank reported success."""
        session = self._session
        if session is None:
            raise RuntimeError("CkptstoreWriter.finish runs on the coordinator after set_up_storage_writer")
        try:
            plan = build_commit(metadata, results)
            self.info = session.commit(
                plan.parts,
                state=plan.state,
                distributed=plan.distributed,
                step=self.step,
                epoch=self.epoch,
                config=self.config,
                metrics=self.metrics,
                tags=self.tags,
                meta=self.meta,
                rng=self.rng,
            )
        finally:
            session.close()
            self._session = None
        self._apply_retention()

    def _apply_retention(self) -> None:
        store = self._open_store()
        try:
            policy = store.get_retention() if self.keep is None else self.keep
            if policy is not None and store.plan_retention(policy).remove:
                store.gc(policy, wait=0.0)  # does not wait for other writers: their data goes at a later gc
        except Exception as e:  # noqa: BLE001 - the checkpoint is committed; report, do not fail
            warnings.warn(f"the checkpoint was saved, but applying the retention policy failed: {e}", stacklevel=3)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False  # never chosen automatically: pass the writer explicitly


class CkptstoreReader(StorageReader):
    """A DCP storage reader for a checkpoint in the store at ``uri``: the newest unless ``step``
    or ``id`` is given. Any checkpoint loads (distributed or saved by one process), on any
    number of ranks; every rank reads only the objects holding the chunks it needs, and checks
    their hashes (``verify=False`` skips that). All ranks must resolve the same checkpoint, or
    the load fails on every rank."""

    def __init__(
        self,
        uri: str | os.PathLike[str] | Store,
        *,
        step: int | None = None,
        id: str | None = None,
        verify: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._given: Store | None = uri if isinstance(uri, Store) else None
        self.uri = uri.uri if isinstance(uri, Store) else os.fspath(uri)
        self.step, self.id, self.verify = step, id, verify
        self.storage_options = dict(storage_options or {})
        self.info: CheckpointInfo | None = None
        self._layout: ReadLayout | None = None
        self._store: Store | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_store"] = None
        state["_given"] = None
        return state

    def _open_store(self) -> Store:
        if self._given is not None:
            return self._given
        if self._store is None:
            self._store = Store(self.uri, storage_options=self.storage_options)
        return self._store

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.uri, self._given = os.fspath(checkpoint_id), None
            self._store = None
        self.info = None
        self._layout = None

    def read_metadata(self) -> Metadata:
        store = self._open_store()
        self.info = store.info(self.step, id=self.id)
        self._layout = read_layout(store.manifest(id=self.info.id))
        return self._layout.metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if self._layout is None or self._layout.metadata is not metadata:
            raise RuntimeError("CkptstoreReader: read_metadata must run first, on every rank")

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        assert self.info is not None
        return LoadPlan(plan.items, storage_data=self.info.id, planner_data=plan.planner_data)

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        ids = {p.storage_data for p in plans}
        if len(ids) > 1:
            raise DistributedCheckpointError(
                f"the ranks resolved different checkpoints ({', '.join(sorted(i[:12] for i in ids))}); a save "
                "committed while they looked. Pass step= or id= to CkptstoreReader so all load the same one."
            )
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        layout, info = self._layout, self.info
        assert layout is not None and info is not None
        store = self._open_store()
        by_tensor: dict[int, list[Any]] = {}
        for item in plan.items:
            if item.type == LoadItemType.BYTE_IO:
                deliver_value(planner, item, layout.values[item.storage_index.fqn])
                continue
            try:
                idx = layout.chunks[item.storage_index]
            except KeyError:
                raise DistributedCheckpointError(
                    f"{item.storage_index.fqn}: the checkpoint has no chunk at {list(item.storage_index.offset or ())}"
                ) from None
            by_tensor.setdefault(idx, []).append(item)
        m = store.manifest(id=info.id)
        # a chunk that one item reads whole goes straight into that item's tensor (no mapping, no
        # temporary, no copy); only the other chunks need memory of their own, so only they count
        # toward a batch's size
        targets = {
            idx: self._direct_target(items, list(m.tensors[idx].shape), planner) for idx, items in by_tensor.items()
        }
        batch: list[int] = []
        size = 0
        for idx in sorted(by_tensor):
            batch.append(idx)
            if targets[idx] is None:
                size += m.blobs[m.tensors[idx].blob].nbytes
            if size >= READ_BATCH_BYTES:
                self._read_batch(store, info, batch, by_tensor, targets, planner)
                batch, size = [], 0
        if batch:
            self._read_batch(store, info, batch, by_tensor, targets, planner)
        return _done(None)

    @staticmethod
    def _direct_target(items: list[Any], shape: list[int], planner: LoadPlanner) -> torch.Tensor | None:
        """The tensor a stored chunk can be read straight into: one item that needs the chunk
        whole, resolved by the planner to a contiguous CPU tensor of the chunk's shape."""
        if len(items) != 1 or any(items[0].storage_offsets) or list(items[0].lengths) != shape:
            return None
        t = planner.resolve_tensor(items[0]).detach()
        if t.device.type == "cpu" and t.is_contiguous() and list(t.size()) == shape:
            return t
        return None

    def _read_batch(
        self,
        store: Store,
        info: CheckpointInfo,
        batch: list[int],
        by_tensor: dict[int, list[Any]],
        targets: dict[int, torch.Tensor | None],
        planner: LoadPlanner,
    ) -> None:
        out = [targets[idx] for idx in batch]
        loaded = store.load_tensors(batch, id=info.id, verify=self.verify, map_location="cpu", out=out)
        for idx, src, direct in zip(batch, loaded, out):
            if direct is not None and src is direct:
                planner.commit_tensor(by_tensor[idx][0], direct)
                continue
            for item in by_tensor[idx]:
                piece: torch.Tensor = src
                for d, (o, n) in enumerate(zip(item.storage_offsets, item.lengths)):
                    piece = piece.narrow(d, o, n)
                target = planner.resolve_tensor(item).detach()
                if target.size() != piece.size():
                    raise DistributedCheckpointError(
                        f"{item.dest_index.fqn}: the planner asked for {list(target.size())} elements where the "
                        f"checkpoint has {list(piece.size())}"
                    )
                target.copy_(piece)
                planner.commit_tensor(item, target)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False


# -- one line on every rank ------------------------------------------------------------------------
def save_distributed(
    state: dict[str, Any],
    uri: str | os.PathLike[str] | Store,
    *,
    step: int | None = None,
    process_group: Any = None,
    planner: SavePlanner | None = None,
    **writer_options: Any,
) -> CheckpointInfo:
    """``dcp.save`` of ``state`` into the store at ``uri`` with the pickle-free planner; call it on
    every rank. Returns the committed checkpoint on every rank (one extra broadcast)."""
    import torch.distributed.checkpoint as dcp

    writer = CkptstoreWriter(uri, step=step, **writer_options)
    try:
        dcp.save(
            state,
            storage_writer=writer,
            planner=planner or CkptstoreSavePlanner(),
            process_group=process_group,
            no_dist=not (dist.is_available() and dist.is_initialized()),
        )
        info = writer.info
    finally:
        writer.close()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1:
        box = [info]
        dist.broadcast_object_list(
            box, src=dist.get_global_rank(process_group, 0) if process_group else 0, group=process_group
        )
        info = box[0]
    assert info is not None
    return info


def load_distributed(
    state: dict[str, Any],
    uri: str | os.PathLike[str] | Store,
    *,
    step: int | None = None,
    id: str | None = None,
    process_group: Any = None,
    planner: LoadPlanner | None = None,
    verify: bool = True,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """``dcp.load`` into ``state`` (in place) from the store at ``uri``, pickle-free; every rank.
    Returns the checkpoint that was loaded."""
    import torch.distributed.checkpoint as dcp

    reader = CkptstoreReader(uri, step=step, id=id, verify=verify, storage_options=storage_options)
    dcp.load(
        state,
        storage_reader=reader,
        planner=planner or CkptstoreLoadPlanner(),
        process_group=process_group,
        no_dist=not (dist.is_available() and dist.is_initialized()),
    )
    assert reader.info is not None
    return reader.info


__all__ = [
    "CkptstoreLoadPlanner",
    "CkptstoreReader",
    "CkptstoreSavePlanner",
    "CkptstoreWriter",
    "DistributedCheckpointError",
    "load_distributed",
    "save_distributed",
]
