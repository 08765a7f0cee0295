"""A Hugging Face ``checkpoint-N/`` folder <-> one store state, without pickle by default.

The state of such a checkpoint is ``{"format": FORMAT, "files": {relative path: entry}}`` where
each entry is one of

- ``{"kind": "safetensors", "tensors": {name: tensor}, "metadata": {str: str} | None}``
- ``{"kind": "json", "value": <the parsed JSON>}``
- ``{"kind": "torch", "value": <what torch.load(weights_only=True) returned>}``  (optimizer.pt,
  scheduler.pt, rng_state.pth, pytorch_model.bin: tensors stay tensors)
- ``{"kind": "bytes", "data": uint8 tensor}``  any other file (tokenizer files, README.md)
- ``{"kind": "pickle", "data": uint8 tensor}``  a pickle that is more than data (training_args.bin),
  kept byte for byte only with ``allow_pickle=True``; written back only with ``allow_pickle=True``

Nothing here imports transformers: reading and writing folders needs only torch and safetensors.
The public ``ckptstore.read_hf_folder`` / ``ckptstore.write_hf_folder`` (used by the transformers
adapter) are :func:`read_hf_folder` and :func:`write_hf_folder`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import UnsupportedFormatError
from .._errors import warn_user as warn
from .._lazy import lazy
from ._convert import safe_torch_load, why_refused

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())

FORMAT = "hf-checkpoint-folder/1"
JSON_INLINE_MAX = 1 << 20  # larger JSON files (big tokenizer.json) are kept as bytes, deduplicated
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl")
_CKPT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


_WEIGHT_FILE_RE = re.compile(r"^(model|pytorch_model|adapter_model)(-\d+-of-\d+)?\.(safetensors|bin)$")


def is_hf_folder(path: str | os.PathLike[str]) -> bool:
    """A Trainer ``checkpoint-N`` folder, or a ``save_pretrained`` model folder."""
    p = os.fspath(path)
    if not os.path.isdir(p):
        return False
    if os.path.isfile(os.path.join(p, "trainer_state.json")) or _CKPT_DIR_RE.match(os.path.basename(p.rstrip("/"))):
        return True
    names = os.listdir(p)
    return ("config.json" in names or "adapter_config.json" in names) and any(_WEIGHT_FILE_RE.match(n) for n in names)


def is_hf_state(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format") == FORMAT and isinstance(state.get("files"), dict)


def _bytes_tensor(data: bytes) -> torch.Tensor:
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _read_safetensors(path: str) -> dict[str, Any]:
    from safetensors import safe_open

    tensors = {}
    with safe_open(path, framework="pt", device="cpu") as f:
        meta = f.metadata()
        for name in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            tensors[name] = f.get_tensor(name)
    return {"kind": "safetensors", "tensors": tensors, "metadata": dict(meta) if meta else None}


def read_entry(path: str, rel: str, *, allow_pickle: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """(entry, None) for one file, or (None, reason) when it is left out."""
    name = rel.rsplit("/", 1)[-1]
    if name.endswith(".safetensors"):
        return _read_safetensors(path), None
    with open(path, "rb") as f:
        data = f.read()
    if name.endswith(".json") and len(data) <= JSON_INLINE_MAX:
        try:
            return {"kind": "json", "value": json.loads(data)}, None
        except ValueError:
            return {"kind": "bytes", "data": _bytes_tensor(data)}, None
    if name.endswith(_PICKLE_SUFFIXES) and data[:2] in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05"):
        try:
            return {"kind": "torch", "value": safe_torch_load(data)}, None
        except Exception as e:  # noqa: BLE001 - any refusal means "not plain data"
            if allow_pickle:
                return {"kind": "pickle", "data": _bytes_tensor(data)}, None
            return None, (
                f"{rel} was left out: it is a pickle that holds more than tensors and plain data "
                f"({why_refused(data, e)}). Pass allow_pickle=True (--allow-pickle) to keep it "
                "byte for byte."
            )
    return {"kind": "bytes", "data": _bytes_tensor(data)}, None


def read_folder(
    folder: str | os.PathLike[str], *, allow_pickle: bool = False, leave_out: Iterable[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """The state of a checkpoint folder and the reasons for files left out.

    ``leave_out`` names relative paths left out silently, e.g. ``training_args.bin`` when the
    caller records the arguments as JSON.
    """
    root = os.fspath(folder)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder")
    files: dict[str, Any] = {}
    skipped: list[str] = []
    silent = set(leave_out)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if fn.startswith(".") or os.path.islink(full) or rel in silent:
                continue
            entry, reason = read_entry(full, rel, allow_pickle=allow_pickle)
            if entry is None:
                skipped.append(reason or rel)
            else:
                files[rel] = entry
    return {"format": FORMAT, "files": files}, skipped


def _own_storage(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors can write: contiguous, CPU, no two sharing memory."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in tensors.items():
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and (
            ptr in seen or t.storage_offset() or t.untyped_storage().nbytes() != t.nbytes or not t.is_contiguous()
        ):
            t = t.contiguous().clone()
            ptr = t.untyped_storage().data_ptr()
        if ptr is not None:
            seen[ptr] = name
        out[name] = t
    return out


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str, metadata: Mapping[str, str] | None) -> None:
    from safetensors.torch import save_file

    save_file(_own_storage(tensors), path, metadata=dict(metadata) if metadata else {"format": "pt"})
    # safetensors creates the file private (0600); give it the mode every other file gets
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """This process's umask, read without changing it where the OS says it (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _dumps_json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, allow_nan=True) + "\n").encode("utf-8")


def _as_bytes(t: Any) -> bytes:
    if isinstance(t, torch.Tensor):
        return t.contiguous().numpy().tobytes() if t.numel() else b""
    return bytes(t)


def _is_weights(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


_BIN_SHARD_RE = re.compile(r"^(pytorch_model|adapter_model)(-\d+-of-\d+)?\.bin$")


def _safetensors_name(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    m = _BIN_SHARD_RE.match(name)
    base = "model" if m.group(1) == "pytorch_model" else "adapter_model"  # type: ignore[union-attr]
    new = f"{base}{m.group(2) or ''}.safetensors"  # type: ignore[union-attr]
    return f"{head}/{new}" if head else new


def write_folder(
    state: Mapping[str, Any],
    dest: str | os.PathLike[str],
    *,
    allow_pickle: bool = False,
    weights_as_safetensors: bool = True,
) -> list[str]:
    """Write a checkpoint folder's files into ``dest`` (which must exist). Returns the relative
    paths written. ``weights_as_safetensors`` writes ``pytorch_model*.bin`` weights as
    ``model*.safetensors`` (and rewrites the shard index to match)."""
    root = os.fspath(dest)
    files: Mapping[str, Any] = state["files"]
    renamed: dict[str, str] = {}
    if weights_as_safetensors:
        for rel, e in files.items():
            name = rel.rsplit("/", 1)[-1]
            if e.get("kind") == "torch" and _BIN_SHARD_RE.match(name) and _is_weights(e.get("value")):
                renamed[rel] = _safetensors_name(rel)
    written: list[str] = []
    for rel, e in files.items():
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"refusing to write {rel!r} outside {root}")
        kind = e.get("kind")
        out_rel = renamed.get(rel, rel)
        if kind == "json" and rel.endswith(".bin.index.json") and renamed:
            out_rel, value = _rename_index(rel, e["value"], renamed)
            e = {"kind": "json", "value": value}
        path = os.path.join(root, *out_rel.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if kind == "safetensors":
            write_safetensors(e["tensors"], path, e.get("metadata"))
        elif rel in renamed:
            write_safetensors(e["value"], path, {"format": "pt"})
        elif kind == "json":
            with open(path, "wb") as f:
                f.write(_dumps_json(e["value"]))
        elif kind == "torch":
            torch.save(e["value"], path)
        elif kind == "bytes":
            with open(path, "wb") as f:
                f.write(_as_bytes(e["data"]))
        elif kind == "pickle":
            if not allow_pickle:
                warn(
                    f"{rel} was stored as a raw pickle; it is written only with allow_pickle=True "
                    "(the framework would unpickle it)"
                )
                continue
            with open(path, "wb") as f:
                f.write(_as_bytes(e["data"]))
        else:
            raise ValueError(f"unknown file entry kind {kind!r} for {rel}")
        written.append(out_rel)
    return written


def _rename_index(rel: str, value: Any, renamed: Mapping[str, str]) -> tuple[str, Any]:
    head, _, name = rel.rpartition("/")
    new_name = name.replace("pytorch_model.bin", "model.safetensors").replace(
        "adapter_model.bin", "adapter_model.safetensors"
    )
    by_name = {k.rsplit("/", 1)[-1]: v.rsplit("/", 1)[-1] for k, v in renamed.items()}
    if isinstance(value, dict) and isinstance(value.get("weight_map"), dict):
        value = dict(value)
        value["weight_map"] = {k: by_name.get(v, v) for k, v in value["weight_map"].items()}
    return (f"{head}/{new_name}" if head else new_name), value


def trainer_state(state: Mapping[str, Any]) -> dict[str, Any]:
    e = state["files"].get("trainer_state.json")
    return e["value"] if e and e.get("kind") == "json" and isinstance(e.get("value"), dict) else {}


def progress_of(state: Mapping[str, Any], folder_name: str | None = None) -> dict[str, Any]:
    """step, epoch (int, completed epochs), the exact epoch, and metrics logged at that step."""
    ts = trainer_state(state)
    step = ts.get("global_step")
    if not isinstance(step, int) and folder_name:
        m = _CKPT_DIR_RE.match(folder_name)
        step = int(m.group(1)) if m else None
    epoch_f = ts.get("epoch")
    epoch = None
    if isinstance(epoch_f, (int, float)) and math.isfinite(epoch_f):
        epoch = math.floor(epoch_f + 1e-6)
    metrics: dict[str, float] = {}
    for rec in ts.get("log_history") or []:
        if isinstance(rec, dict) and rec.get("step") == step:
            for k, v in rec.items():
                if (
                    k not in ("step", "epoch", "total_flos")
                    and not k.endswith(("_runtime", "_per_second"))
                    and isinstance(v, (int, float))
                    and not isinstance(v, bool)
                ):
                    metrics[k] = float(v)
    return {
        "step": step if isinstance(step, int) else None,
        "epoch": epoch,
        "epoch_float": epoch_f if isinstance(epoch_f, (int, float)) else None,
        "metrics": metrics,
    }


#: files one of which an existing folder must hold for write_hf_folder to replace it
_HF_MARKERS = ("trainer_state.json", "config.json", "adapter_config.json", "model.safetensors")


def check_replaceable(final: str, markers: tuple[str, ...], what: str) -> None:
    """Refuse (``FileExistsError``) to replace the folder ``final`` when it holds files but none
    of ``markers``: it is not ``what``, and ``replace_dir`` would delete all of it."""
    if os.path.isdir(final) and os.listdir(final) and not any(os.path.isfile(os.path.join(final, n)) for n in markers):
        raise FileExistsError(
            f"{final} holds files but is not {what} (none of {', '.join(markers)}), and writing replaces the "
            "folder whole: pick a new or empty folder"
        )


def replace_dir(tmp: str, final: str) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older one, so a reader never
    sees a half-written ``final``."""
    if os.path.exists(final):
        old = final + f".old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


class HfFolder(NamedTuple):
    """What :func:`read_hf_folder` read: the state to store, the reasons for files left out, and the
    progress recorded in ``trainer_state.json`` (step falls back to N of a ``checkpoint-N`` name)."""

    state: dict[str, Any]
    skipped: list[str]
    step: int | None
    epoch: int | None
    epoch_float: float | None
    metrics: dict[str, float]


def read_hf_folder(
    folder: str | os.PathLike[str], *, allow_pickle: bool = False, leave_out: Iterable[str] = ()
) -> HfFolder:
    """Read a Hugging Face ``checkpoint-N`` (or ``save_pretrained``) folder into a state a store
    holds without pickle (docs/format.md §20), with its step, epoch and the metrics logged at that step.

    A pickle that holds more than tensors and plain data (``training_args.bin``) is left out, with
    the reason in ``skipped``, unless ``allow_pickle=True`` (then it is kept byte for byte, never
    unpickled). ``leave_out`` names relative paths to leave out silently.
    """
    state, skipped = read_folder(folder, allow_pickle=allow_pickle, leave_out=leave_out)
    prog = progress_of(state, os.path.basename(os.path.normpath(os.fspath(folder))))
    return HfFolder(state, skipped, prog["step"], prog["epoch"], prog["epoch_float"], prog["metrics"])


def write_hf_folder(state: Mapping[str, Any], dest: str | os.PathLike[str], *, allow_pickle: bool = False) -> list[str]:
    """Write a state read by :func:`read_hf_folder` (and loaded back from a store) as the folder
    ``dest``, complete or not at all: it is written under a temporary name next to ``dest`` and
    renamed into place, replacing an older ``dest`` (a folder that holds other files and none of
    ``trainer_state.json``, ``config.json``, ``adapter_config.json``, ``model.safetensors`` is
    refused with ``FileExistsError``). ``pytorch_model*.bin`` weights are written
    as ``model*.safetensors``. Stored pickles are written only with ``allow_pickle=True``.
    Returns the paths written, relative to ``dest``."""
    if not is_hf_state(state):
        raise UnsupportedFormatError(
            "this checkpoint is not a Hugging Face checkpoint folder (it was not written by the transformers "
            "adapter or by `ckptstore import` of a Trainer folder); load it with ckptstore.load instead"
        )
    final = os.path.abspath(os.fspath(dest))
    check_replaceable(final, _HF_MARKERS, "a Hugging Face checkpoint folder")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        written = write_folder(state, tmp, allow_pickle=allow_pickle)
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
