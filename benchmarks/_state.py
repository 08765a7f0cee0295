"""A realistic checkpoint state for the benchmarks: a small GPT trained for real AdamW steps.

The model is a decoder-only transformer written in plain torch. It is trained on real text (the
Python standard library's own source files, read from this machine, two bytes per token) so its
weights and Adam moments have the distributions of a real run, not of a random init. The trained
state is cached under ``benchmarks/.cache/`` (keyed by the size preset, steps and seed) because
training is the slowest part of a benchmark run.
"""

from __future__ import annotations

import math
import os
import sysconfig
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


@dataclass(frozen=True)
class Size:
    d_model: int
    n_layer: int
    n_head: int
    vocab: int
    seq: int = 128
    batch: int = 2


SIZES: dict[str, Size] = {
    "tiny": Size(256, 4, 4, 8192),  # ~5M params, ~65 MB with Adam (tests, smoke runs)
    "small": Size(512, 8, 8, 16384),  # ~34M params, ~0.4 GB with Adam (default)
    "medium": Size(768, 12, 12, 32768),  # ~110M params, ~1.3 GB with Adam (the size)
    "large": Size(1024, 24, 16, 50304),  # ~350M params, ~4.2 GB with Adam
}


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, s: Size) -> None:
        super().__init__()
        self.tok = nn.Embedding(s.vocab, s.d_model)
        self.pos = nn.Embedding(s.seq, s.d_model)
        self.blocks = nn.ModuleList(Block(s.d_model, s.n_head) for _ in range(s.n_layer))
        self.ln = nn.LayerNorm(s.d_model)
        self.head = nn.Linear(s.d_model, s.vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * s.n_layer) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def _corpus(limit: int = 8 << 20) -> torch.Tensor:
    """Real text: the standard library's source files, as 16-bit tokens."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    for dirpath, _dirs, files in sorted(os.walk(root)):
        if "site-packages" in dirpath or "test" in dirpath:
            continue
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f), "rb") as fh:
                    data = fh.read()
                parts.append(data)
                total += len(data)
                if total >= limit:
                    break
        if total >= limit:
            break
    raw = b"".join(parts)
    raw = raw[: len(raw) // 2 * 2]
    return torch.frombuffer(bytearray(raw), dtype=torch.int16).to(torch.int64) & 0xFFFF


def train(size: str, steps: int, seed: int = 0, log: bool = True) -> dict[str, Any]:
    """Train the model of preset ``size`` for ``steps`` AdamW steps; the fp32 state dict."""
    s = SIZES[size]
    torch.manual_seed(seed)
    model = GPT(s)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    tokens = _corpus() % s.vocab
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(tokens) - s.seq - 1, (s.batch,), generator=g)
        x = torch.stack([tokens[i : i + s.seq] for i in starts])
        y = torch.stack([tokens[i + 1 : i + s.seq + 1] for i in starts])
        loss = F.cross_entropy(model(x).view(-1, s.vocab), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step % 10 == 0 or step == steps - 1):
            print(f"  train step {step}: loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": steps, "config": asdict(s)}


def as_bf16(state: dict[str, Any]) -> dict[str, Any]:
    """The same trained state in pure bf16 (weights and Adam moments), as a bf16 run keeps it."""

    def cast(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() > 0:
            return x.to(torch.bfloat16)
        if isinstance(x, dict):
            return {k: cast(v) for k, v in x.items()}
        if isinstance(x, list):
            return [cast(v) for v in x]
        return x

    return cast(state)


def trained_state(size: str = "small", steps: int = 20, seed: int = 0, log: bool = True) -> dict[str, Any]:
    """The fp32 trained state, from the cache when present."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    path = os.path.join(CACHE_DIR, f"gpt-{size}-{steps}steps-seed{seed}.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=True)
    if log:
        print(f"training the {size} model for {steps} AdamW steps (cached in {path}) ...", flush=True)
    state = train(size, steps, seed, log)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
    return state


def tensors_of(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flat name -> tensor view of a nested state (for safetensors / DCP / stats)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        out[prefix.rstrip(".")] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(tensors_of(v, f"{prefix}{k}."))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(tensors_of(v, f"{prefix}{i}."))
    return out


def state_bytes(state: Any) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors_of(state).values():
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total
