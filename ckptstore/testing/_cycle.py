"""The whole cycle through ``ckptstore.Store`` on the backend: save, dedup, load, list, forget, reopen."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from .._errors import CheckpointNotFoundError
from ..store._store import Store
from ._base import ContractBase


class StoreContract(ContractBase):
    def test_store_save_load_list_forget_cycle(self, store: Store, target: Any) -> None:
        torch.manual_seed(0)
        frozen = torch.randn(256, 256)  # 256 KiB: packed; identical in every checkpoint
        big = torch.randn(600_000)  # 2.4 MB: its own object
        states: list[dict[str, Any]] = [
            {"frozen": frozen, "big": big + i, "step": i, "hist": [0.5 * i]} for i in range(3)
        ]
        infos = [store.save(s, step=10 * i, metrics={"loss": 1.0 / (i + 1)}) for i, s in enumerate(states)]
        assert [i.step for i in store.list()] == [0, 10, 20]
        latest = store.latest()
        assert latest is not None and latest.id == infos[-1].id
        assert infos[1].new_bytes < infos[0].new_bytes  # the frozen tensor was not stored again
        for info, s in zip(infos, states):
            back = store.load(info.step)
            assert torch.equal(back["frozen"], s["frozen"]) and torch.equal(back["big"], s["big"])
            assert back["step"] == s["step"] and back["hist"] == s["hist"]
        assert store.info(id=infos[1].id[:10]).step == 10
        store.verify(10, read_data=True)
        store.forget(10)
        assert [i.step for i in store.list()] == [0, 20]
        with pytest.raises(CheckpointNotFoundError):
            store.load(10)
        assert torch.equal(store.load(20)["big"], states[2]["big"])
        again = Store(target.uri, storage_options=target.options, retries=self.RETRIES)
        assert [i.step for i in again.list()] == [0, 20]

    def test_store_reopened_sees_everything(self, target: Any) -> None:
        a = Store(target.uri, storage_options=target.options, retries=self.RETRIES)
        a.save({"w": torch.arange(10.0)}, step=1)
        b = Store(target.uri, storage_options=target.options, retries=self.RETRIES)
        assert [i.step for i in b.list()] == [1]
        assert torch.equal(b.load()["w"], torch.arange(10.0))
        assert b.exists()
