"""Turning framework objects into values a store holds without pickle, and back.

Two jobs, shared by ``ckptstore import`` / ``export`` and (through the public ``ckptstore.to_plain``
/ ``ckptstore.from_plain``) the framework adapters:

- :func:`safe_torch_load` reads a ``torch.save`` file with ``weights_only=True``, allowing a short,
  fixed list of harmless classes that checkpoints commonly contain (NumPy arrays and dtypes in
  RNG states, ``argparse.Namespace``, ``pathlib`` paths). Full
  unpickling happens only with ``allow_pickle=True``. (A pickled dict subclass such as an old
  ``AttributeDict`` cannot be read this way: torch's safe unpickler fills only real dicts.)
- :func:`to_plain` / :func:`from_plain` replace container types the store does not know (dict
  subclasses such as ``AttributeDict``, ``Namespace``, ``SimpleNamespace``, paths, OmegaConf
  containers) by plain dicts, lists and strings, and return a list of *fixes* (JSON) that puts the
  original types back on load. A fix only ever names a class from a fixed allowlist; unknown dict
  subclasses come back as plain dicts.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import io
import os
import pathlib
import re
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable

from .._lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())


_ATTRDICT_NAMES = (
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)

# Classes torch.load(weights_only=True) may construct when a checkpoint needs them. Each one builds
# plain data from plain data; none runs user code.
_SAFE_GLOBAL_NAMES = frozenset(
    {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.ndarray",
        "numpy.dtype",
        "argparse.Namespace",
        "types.SimpleNamespace",
        "pathlib.Path",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "torch.torch_version.TorchVersion",
    }
)


def _is_safe_global(name: str) -> bool:
    if name in _SAFE_GLOBAL_NAMES:
        return True
    # numpy.dtypes.Float32DType, UInt32DType, ... (the class of a dtype object)
    return name.startswith("numpy.dtypes.") and name.endswith("DType") and name.count(".") == 2


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _numpy_dtype_classes() -> list[type]:
    import numpy as np

    out = []
    for code in "?bhilqBHILQefdgFDGSUVMm":
        try:
            out.append(type(np.dtype(code)))
        except TypeError:  # pragma: no cover - a code this numpy lacks
            continue
    return out


def safe_torch_load(source: str | os.PathLike[str] | bytes, *, allow_pickle: bool = False) -> Any:
    """``torch.load`` a file (or its bytes) onto the CPU without running pickle.

    Raises ``pickle.UnpicklingError`` (what torch raises) naming the classes the file needs when it
    holds anything beyond tensors, plain containers and the allowlisted classes; with
    ``allow_pickle=True`` the file is fully unpickled, which can execute code.
    """

    def opened() -> Any:
        return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source

    if allow_pickle:
        return torch.load(opened(), map_location="cpu", weights_only=False)
    try:
        return torch.load(opened(), map_location="cpu", weights_only=True)
    except Exception as first:
        try:
            needed = torch.serialization.get_unsafe_globals_in_checkpoint(opened())
        except Exception:  # noqa: BLE001 - not a zip checkpoint: report the original error
            raise first from None
        if not needed or not all(_is_safe_global(n) for n in needed):
            raise first from None
        allowed = []
        for n in needed:
            try:
                allowed.append(_resolve(n))
            except (ImportError, AttributeError):
                raise first from None
        if any(n.startswith("numpy") for n in needed):
            allowed.extend(_numpy_dtype_classes())  # the unpickler meets these only while loading
        with torch.serialization.safe_globals(allowed):
            return torch.load(opened(), map_location="cpu", weights_only=True)


def why_refused(source: str | os.PathLike[str] | bytes, error: BaseException) -> str:
    """A short reason why :func:`safe_torch_load` refused a file: the classes it needs."""
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(
            io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        )
    except Exception:  # noqa: BLE001 - not a zip checkpoint
        needed = []
    unsafe = [n for n in needed if not _is_safe_global(n)]
    if not unsafe:  # an old (non-zip) torch.save file: torch names the first class in its message
        unsafe = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(error))[:1]
    if unsafe:
        return "it needs " + ", ".join(unsafe[:4]) + (" and more" if len(unsafe) > 4 else "")
    text = " ".join(str(error).split())
    text = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation", 1)[0].strip()
    return text[:160] or type(error).__name__


# -- plain types ---------------------------------------------------------------------------------


def _type_name(v: Any) -> str:
    t = type(v)
    return f"{t.__module__}.{t.__qualname__}"


def _omegaconf_container(v: Any) -> tuple[str, Any] | None:
    mod = type(v).__module__
    if not mod.startswith("omegaconf"):
        return None
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(v, DictConfig):
        return "omegaconf.DictConfig", OmegaConf.to_container(v, resolve=False)
    if isinstance(v, ListConfig):
        return "omegaconf.ListConfig", OmegaConf.to_container(v, resolve=False)
    return None


def to_plain(value: Any) -> tuple[Any, list[list[Any]]]:
    """``value`` with foreign containers replaced by plain ones, and the fixes that undo it.

    Each fix is ``[path, type_name]``; ``path`` lists the keys (str or int) from the root.
    Values this does not recognise are returned unchanged (the store then says whether it can
    hold them).
    """
    fixes: list[list[Any]] = []

    def note(path: list[Any] | None, v: Any, name: str | None = None) -> None:
        if path is not None:
            fixes.append([list(path), name or _type_name(v)])

    def child(path: list[Any] | None, k: Any) -> list[Any] | None:
        if path is None or not isinstance(k, (str, int)) or isinstance(k, bool):
            return None
        return [*path, k]

    def walk(v: Any, path: list[Any] | None, depth: int) -> Any:
        t = type(v)
        if depth > 100:
            return v
        if t is list:
            return [walk(x, child(path, i), depth + 1) for i, x in enumerate(v)]
        if t is tuple:
            return tuple(walk(x, child(path, i), depth + 1) for i, x in enumerate(v))
        if t is dict or t is collections.OrderedDict:
            return t((k, walk(x, child(path, k), depth + 1)) for k, x in v.items())
        if isinstance(v, dict):  # AttributeDict, defaultdict, other dict subclasses
            note(path, v)
            return walk(dict(v), path, depth)
        if isinstance(v, (argparse.Namespace, types.SimpleNamespace)):
            note(path, v)
            return walk(dict(vars(v)), path, depth)
        if isinstance(v, pathlib.PurePath):
            note(path, v)
            return str(v)
        om = _omegaconf_container(v)
        if om is not None:
            note(path, v, om[0])
            return walk(om[1], path, depth)
        return v

    return walk(value, [], 0), fixes


def _rebuilders() -> dict[str, Callable[[Any], Any]]:
    def attrdict(v: Any) -> Any:
        for name in _ATTRDICT_NAMES:
            try:
                return _resolve(name)(v)
            except (ImportError, AttributeError):
                continue
        return v

    def omegaconf(v: Any) -> Any:
        try:
            from omegaconf import OmegaConf
        except ImportError:
            return v
        return OmegaConf.create(v)

    out: dict[str, Callable[[Any], Any]] = {
        "argparse.Namespace": lambda v: argparse.Namespace(**v),
        "types.SimpleNamespace": lambda v: types.SimpleNamespace(**v),
        "omegaconf.DictConfig": omegaconf,
        "omegaconf.ListConfig": omegaconf,
    }
    for name in _ATTRDICT_NAMES:
        out[name] = attrdict
    for name in ("pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath"):
        out[name] = pathlib.Path
    for name in ("pathlib.PurePath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath"):
        out[name] = pathlib.PurePath
    return out


def from_plain(value: Any, fixes: Iterable[Any]) -> Any:
    """Undo :func:`to_plain`: put the recorded types back (deepest first). Unknown type names
    and paths that no longer exist are skipped: the plain value is kept."""
    rebuild = _rebuilders()
    todo = sorted(
        (f for f in fixes if isinstance(f, (list, tuple)) and len(f) == 2 and isinstance(f[0], list)),
        key=lambda f: -len(f[0]),
    )
    root = [value]
    for path, name in todo:
        fn = rebuild.get(name)
        if fn is None:
            continue
        container: Any = root
        key: Any = 0
        try:
            for k in path:
                container, key = container[key], k
            current = container[key]
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(container, (list, dict)):
            continue  # inside a tuple: keep the plain value
        container[key] = fn(current)
    return root[0]
