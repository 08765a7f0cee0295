"""Global random-number-generator states: capture at save, restore on request."""

from __future__ import annotations

import base64
import random
import warnings
from typing import TYPE_CHECKING, Any

from .._errors import CkptstoreWarning
from .._lazy import lazy
from ..format._manifest import NumpyRng, PythonRng, RngState

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _tensor(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def capture_rng_state() -> RngState:
    """The RNG states of Python's ``random``, NumPy's global generator, torch's CPU generator,
    each initialised CUDA device, and MPS when available."""
    version, state, gauss = random.getstate()
    py = PythonRng(version=version, state=list(state), gauss=gauss)
    np_state = None
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
        np_state = NumpyRng(
            bit_generator=str(name),
            state=keys.tolist() if hasattr(keys, "tolist") else [int(k) for k in keys],
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached),
        )
    except ImportError:  # pragma: no cover - numpy is a dependency of torch in practice
        pass
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [_b64(torch.cuda.get_rng_state(i)) for i in range(torch.cuda.device_count())]
    mps = None
    mps_backend = getattr(torch.backends, "mps", None)
    if mps_backend is not None and mps_backend.is_available():
        mps = _b64(torch.mps.get_rng_state())
    return RngState(python=py, numpy=np_state, torch=_b64(torch.get_rng_state()), cuda=cuda, mps=mps)


def restore_rng_state(rng: Any) -> list[str]:
    """Apply RNG states saved in a checkpoint to this process.

    ``rng`` is a :class:`CheckpointInfo` (its ``rng``), an ``RngState`` or its dict form. States
    for hardware this machine lacks (a CUDA state on a Mac) are skipped with one warning; the
    returned list names what was skipped.
    """
    if hasattr(rng, "rng") and not isinstance(rng, RngState):
        rng = rng.rng
    if rng is None:
        warnings.warn(
            "this checkpoint has no RNG states (saved with rng=False); nothing restored", CkptstoreWarning, stacklevel=2
        )
        return ["all (none recorded)"]
    if isinstance(rng, dict):
        rng = RngState.model_validate(rng)
    skipped: list[str] = []
    if rng.python is not None:
        random.setstate((rng.python.version, tuple(rng.python.state), rng.python.gauss))
    if rng.numpy is not None:
        try:
            import numpy as np

            np.random.set_state(
                (
                    rng.numpy.bit_generator,
                    np.array(rng.numpy.state, dtype=np.uint32),
                    rng.numpy.pos,
                    rng.numpy.has_gauss,
                    rng.numpy.cached_gaussian,
                )
            )
        except ImportError:  # pragma: no cover
            skipped.append("numpy (not installed)")
    if rng.torch is not None:
        torch.set_rng_state(_tensor(rng.torch))
    if rng.cuda:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for i, s in enumerate(rng.cuda):
            if i < have:
                torch.cuda.set_rng_state(_tensor(s), i)
        if have < len(rng.cuda):
            skipped.append(f"cuda ({len(rng.cuda)} device states saved, {have} devices here)")
    if rng.mps is not None:
        mps_backend = getattr(torch.backends, "mps", None)
        if mps_backend is not None and mps_backend.is_available():
            torch.mps.set_rng_state(_tensor(rng.mps))
        else:
            skipped.append("mps (not available here)")
    if skipped:
        warnings.warn("RNG states not restored on this machine: " + "; ".join(skipped), CkptstoreWarning, stacklevel=2)
    return skipped
