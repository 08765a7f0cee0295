"""Non-tensor values of a DCP state without pickle, and the planners that carry them.

DCP's default planners turn every non-tensor leaf (a ``BYTE_IO`` item) into ``torch.save`` bytes
and read them back with ``torch.load(weights_only=False)``. Here such a value travels as its JSON
tree encoding (``ckptstore.encode_value``) and lands in the manifest's tree; on load it is
decoded (``ckptstore.decode_value``), never unpickled.
"""

from __future__ import annotations

import io
import json
from typing import Any

from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.planner import ReadItem, WriteItem, WriteItemType

import ckptstore
from ckptstore import UnsupportedValueError

#: the first bytes of a value a ``CkptstoreSavePlanner`` resolves: JSON follows
MAGIC = b"ckptstore.value.json\n"


def _to_bytes(node: Any) -> io.BytesIO:
    return io.BytesIO(MAGIC + json.dumps(node, separators=(",", ":"), allow_nan=False).encode("utf-8"))


def _from_bytes(data: bytes, fqn: str) -> Any:
    if not data.startswith(MAGIC):
        raise UnsupportedValueError(
            f"{fqn}: this value is not ckptstore JSON (torch.save bytes from another planner or storage "
            "reader?); CkptstoreLoadPlanner never unpickles. Load ckptstore checkpoints with CkptstoreReader.",
            fqn,
        )
    return json.loads(data[len(MAGIC) :])


class CkptstoreSavePlanner(DefaultSavePlanner):
    """DCP's default save planner, except that non-tensor values are resolved to their JSON tree
    encoding instead of ``torch.save`` bytes (an unsupported value fails on the rank holding it)."""

    def transform_object(self, write_item: WriteItem, object: Any) -> Any:
        if write_item.type == WriteItemType.BYTE_IO:
            return _to_bytes(ckptstore.encode_value(object, write_item.index.fqn))
        return object


class CkptstoreLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, except that non-tensor values are decoded from JSON: it never
    calls ``torch.load`` or ``pickle``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        place_value(self, read_item, ckptstore.decode_value(_from_bytes(value.getvalue(), read_item.dest_index.fqn)))


def place_value(planner: DefaultLoadPlanner, read_item: ReadItem, value: Any) -> None:
    """What ``DefaultLoadPlanner.load_bytes`` does with the value it unpickled."""
    fqn = read_item.dest_index.fqn
    if planner.flatten_state_dict:
        set_element(planner.original_state_dict, planner.mappings[fqn], value)
    else:
        planner.state_dict[fqn] = value


def value_node(planner: Any, item: WriteItem) -> Any:
    """The encoded value of a ``BYTE_IO`` item, without pickle whichever planner is in use."""
    fqn = item.index.fqn
    if (
        isinstance(planner, DefaultSavePlanner)
        and not isinstance(planner, CkptstoreSavePlanner)
        and type(planner).transform_object is DefaultSavePlanner.transform_object
    ):
        # the default planner would torch.save it: take the value itself instead
        return ckptstore.encode_value(planner.lookup_object(item.index), fqn)
    data = planner.resolve_data(item)
    raw = data.getvalue() if isinstance(data, io.BytesIO) else bytes(data)
    if not raw.startswith(MAGIC):
        raise UnsupportedValueError(
            f"{fqn}: the planner {type(planner).__name__} resolved this value to bytes that are not ckptstore "
            "JSON (torch.save bytes need pickle to read). Use ckptstore.adapters.dcp.CkptstoreSavePlanner "
            "(or DefaultSavePlanner).",
            fqn,
        )
    return _from_bytes(raw, fqn)


def deliver_value(planner: Any, item: ReadItem, value: Any) -> None:
    """Hand a stored (decoded) value to the load planner without letting it unpickle anything."""
    if isinstance(planner, CkptstoreLoadPlanner):
        planner.load_bytes(item, _to_bytes(ckptstore.encode_value(value, item.dest_index.fqn)))
    elif isinstance(planner, DefaultLoadPlanner) and type(planner).load_bytes is DefaultLoadPlanner.load_bytes:
        place_value(planner, item, value)  # what it would do, minus torch.load
    else:
        raise UnsupportedValueError(
            f"{item.dest_index.fqn}: the planner {type(planner).__name__} reads non-tensor values with its own "
            "load_bytes, which would unpickle them. Use ckptstore.adapters.dcp.CkptstoreLoadPlanner.",
            item.dest_index.fqn,
        )
