"""Incremental saves: data that did not change is never stored twice."""

from __future__ import annotations

import os

import pytest
import torch

import ckptstore

from .conftest import train_tiny


def _object_bytes(root) -> tuple[int, int]:
    n = total = 0
    for dirpath, _, files in os.walk(os.path.join(root, "objects")):
        for f in files:
            if not f.startswith("."):
                n += 1
                total += os.path.getsize(os.path.join(dirpath, f))
    return n, total


def test_unchanged_resave_adds_only_a_manifest(store_uri):
    model, opt, sched = train_tiny()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "big": torch.randn(3_000_000)}
    first = ckptstore.save(state, store_uri)
    before = _object_bytes(store_uri)
    second = ckptstore.save(state, store_uri)
    assert second.new_bytes == 0
    assert _object_bytes(store_uri) == before
    assert len(os.listdir(os.path.join(store_uri, "manifests"))) == 2
    assert first.stored_bytes == second.stored_bytes


def test_frozen_base_costs_nothing_after_first_checkpoint(tmp_path):
    """A LoRA-style fine-tune: only the small adapters change between checkpoints."""
    torch.manual_seed(0)
    base = {f"layer{i}.weight": torch.randn(256, 256) for i in range(8)}  # 2 MiB frozen
    base.update({f"layer{i}.bias": torch.randn(256) for i in range(8)})  # small frozen tensors (packed)
    lora_a = torch.zeros(256, 4)
    lora_b = torch.zeros(4, 256)
    store = ckptstore.Store(tmp_path / "lora")
    first = store.save({"base": base, "lora": {"a": lora_a, "b": lora_b}}, step=0)
    base_bytes = sum(t.numel() * 4 for t in base.values())
    assert first.new_bytes >= base_bytes
    for step in range(1, 4):
        lora_a += 0.01 * step
        lora_b -= 0.02
        info = store.save({"base": base, "lora": {"a": lora_a, "b": lora_b}}, step=step)
        lora_bytes = (lora_a.numel() + lora_b.numel()) * 4
        # only the adapters (plus pack alignment) are new; the frozen base is not rewritten
        assert info.new_bytes <= lora_bytes + 256, (step, info.new_bytes)
        assert info.new_bytes >= lora_bytes
    # and a fresh Store instance (another process) dedups against the newest manifest too
    lora_a += 1
    info = ckptstore.save({"base": base, "lora": {"a": lora_a, "b": lora_b}}, tmp_path / "lora", step=4)
    assert info.new_bytes <= (lora_a.numel() + lora_b.numel()) * 4 + 256
    back = ckptstore.load(tmp_path / "lora", step=2)
    assert torch.equal(back["base"]["layer3.weight"], base["layer3.weight"])


def test_partially_changed_large_tensor_rewrites_only_changed_chunks(tmp_path):
    store = ckptstore.Store(tmp_path / "s", chunk_size=1 << 20)
    emb = torch.randn(4 << 20 >> 2)  # 4 MiB = 4 chunks
    store.save({"emb": emb})
    emb[:10] += 1.0  # touch the first chunk only
    info = store.save({"emb": emb})
    assert info.new_bytes == 1 << 20
    assert torch.equal(store.load()["emb"], emb)


def test_interrupted_save_leftovers_are_reused(tmp_path):
    """Objects written by a save that never committed are not written again."""
    store = ckptstore.Store(tmp_path / "s")
    x = torch.randn(1_000_000)
    store.save({"x": x}, step=1)
    # simulate a crashed save: delete the manifest, keep the objects
    store.forget(step=1)
    again = ckptstore.Store(tmp_path / "s").save({"x": x}, step=1)
    assert again.new_bytes == 0
    assert torch.equal(ckptstore.load(tmp_path / "s")["x"], x)


def _damage(root, kind):
    paths = []
    for dirpath, _, files in os.walk(os.path.join(root, "objects")):
        paths += [os.path.join(dirpath, f) for f in files if not f.startswith(".")]
    for p in paths:
        if kind == "flip":
            with open(p, "r+b") as f:
                b = f.read(1)
                f.seek(0)
                f.write(bytes([b[0] ^ 0xFF]))
        else:
            os.unlink(p)


@pytest.mark.parametrize("kind", ["flip", "delete"])
@pytest.mark.parametrize("size", [100, 3_000_000])  # packed and chunked
def test_damaged_object_is_not_reused_and_is_healed(tmp_path, kind, size):
    """After a load finds an object damaged, saving the same content writes it again (and the
    old checkpoint, which names the same content, loads again too)."""
    store = ckptstore.Store(tmp_path / "s")
    w = torch.arange(size, dtype=torch.float32)
    store.save({"w": w}, step=1)
    _damage(tmp_path / "s", kind)
    with pytest.raises(ckptstore.IntegrityError):
        store.load(1)
    info = ckptstore.Store(tmp_path / "s").save({"w": w}, step=2)  # another Store in this process
    assert info.new_bytes > 0
    store.verify(2)
    assert torch.equal(store.load(2)["w"], w)
    assert torch.equal(store.load(1)["w"], w)  # healed: same content, same object name
    assert ckptstore.Store(tmp_path / "s").save({"w": w}, step=3).new_bytes == 0  # trusted again


def test_what_an_a_b_a_save_stores_again(tmp_path):
    """The README's claim, exactly: a chunk of a large tensor is stored once per store, whichever
    checkpoint held it; a small (packed) tensor is reused from the checkpoints this process wrote
    or read as a parent, so in a new process (after a restart) one that comes back from an older
    checkpoint than the newest (A, B, A) is stored again."""

    class Fresh:  # a new Store for every save, as a restarted job has
        def save(self, state, step):
            return ckptstore.Store(tmp_path).save(state, step=step)

    store = Fresh()
    big_a, big_b = torch.full((1 << 19,), 1.0), torch.full((1 << 19,), 2.0)  # 2 MiB each: own objects
    x1, x2, y = torch.full((100,), 1.0), torch.full((100,), 2.0), torch.full((100,), 3.0)  # packed
    store.save({"big": big_a}, step=1)
    store.save({"big": big_b}, step=2)
    assert store.save({"big": big_a}, step=3).new_bytes == 0  # A again: nothing new
    store.save({"x": x1, "y": y}, step=4)  # one pack: x1, y
    store.save({"x": x2, "y": y}, step=5)  # y reused from the parent; a pack of x2
    again = store.save({"x": x1, "y": y}, step=6)  # x1 is in step 4's pack, but step 5 is the parent
    assert 0 < again.new_bytes < 1024  # x1 packed again (400 bytes and alignment); y reused
    assert store.save({"x": x1, "y": y}, step=7).new_bytes == 0  # unchanged from the newest: nothing
