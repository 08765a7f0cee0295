"""Where loaded tensors go: ``map_location`` resolution.

Rules (docs/api.md, "map_location"):
- ``None``: the device recorded at save time when this machine has it, else the CPU.
- ``"auto"``: CUDA (the current device) if available, else Apple MPS, else the CPU.
- a device string or ``torch.device``: exactly that; a device this machine lacks raises
  :class:`DeviceUnavailableError`.
- a dict: recorded device string -> target (like ``torch.load``); unmapped ones as with ``None``.
- a callable ``fn(tensor, recorded_location) -> tensor``: applied to each CPU tensor.
MPS has no float64 or complex128: such tensors stay on the CPU and one warning says how many.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Union

from .._errors import DeviceUnavailableError
from .._lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())

MapLocation = Union[None, str, "torch.device", Mapping[str, Any], Callable[["torch.Tensor", str], Any]]
#: dtype names MPS cannot hold
MPS_UNSUPPORTED = frozenset({"float64", "complex128"})


@dataclass(frozen=True)
class Accelerators:
    """What this machine has; injectable so the rules can be tested without the hardware."""

    cuda_count: int = 0
    mps: bool = False

    @classmethod
    def probe(cls) -> Accelerators:
        cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        mps_backend = getattr(torch.backends, "mps", None)
        mps = bool(mps_backend is not None and mps_backend.is_available())
        return cls(cuda_count=cuda, mps=mps)


def auto_device(acc: Accelerators) -> torch.device:
    """The device ``map_location="auto"`` picks, given what ``acc`` says this machine has
    (``Accelerators.probe()``): the current CUDA device, else MPS, else the CPU."""
    if acc.cuda_count > 0:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    if acc.mps:
        return torch.device("mps")
    return torch.device("cpu")


def _parse(d: Any, what: str) -> torch.device:
    if isinstance(d, torch.device):
        return d
    if isinstance(d, str):
        try:
            return torch.device(d)
        except RuntimeError:
            raise ValueError(f"{what}: {d!r} is not a device (use 'cpu', 'cuda', 'cuda:1', 'mps' or 'auto')") from None
    raise TypeError(f"{what}: expected a device string or torch.device, not {type(d).__name__}")


def available(dev: torch.device, acc: Accelerators) -> bool:
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return acc.cuda_count > (dev.index or 0)
    if dev.type == "mps":
        return acc.mps
    return False


def _require(dev: torch.device, acc: Accelerators, what: str) -> torch.device:
    if dev.type == "meta":  # exists everywhere, but holds no data: nothing a load could return
        raise DeviceUnavailableError(
            f"{what} asks for the meta device, which holds no data, so a load cannot place tensors there. "
            "To see what a checkpoint holds without reading it, use Store.manifest() or `ckptstore show`."
        )
    if not available(dev, acc):
        have = ["cpu"] + [f"cuda:{i}" for i in range(acc.cuda_count)] + (["mps"] if acc.mps else [])
        raise DeviceUnavailableError(
            f"{what} asks for {dev}, which this machine does not have (it has: {', '.join(have)}). "
            "Use map_location='auto' to pick the best available device, or 'cpu'."
        )
    return dev


class Placement:
    """Decides a device for each blob from its recorded device and dtypes."""

    def __init__(self, map_location: MapLocation, acc: Accelerators | None = None) -> None:
        self.map_location = map_location
        self.acc = acc if acc is not None else Accelerators.probe()
        self.callable = callable(map_location) and not isinstance(map_location, (str, torch.device, Mapping))
        self._fn: Callable[[torch.Tensor, str], Any] | None = map_location if self.callable else None  # type: ignore[assignment]
        self.kept_on_cpu = 0
        ml = map_location
        self._fixed: torch.device | None = None
        if ml is None or self.callable:
            pass
        elif isinstance(ml, str) and ml == "auto":
            self._fixed = auto_device(self.acc)
        elif isinstance(ml, (str, torch.device)):
            self._fixed = _require(_parse(ml, "map_location"), self.acc, "map_location")
        elif isinstance(ml, Mapping):
            for k, v in ml.items():
                _parse(k, "map_location key")
                if not (isinstance(v, str) and v == "auto"):
                    _require(_parse(v, "map_location value"), self.acc, f"map_location[{k!r}]")
        else:
            raise TypeError(
                "map_location must be None, 'auto', a device string, a torch.device, a dict or a callable, "
                f"not {type(ml).__name__}"
            )

    def move(self, t: torch.Tensor, recorded: str) -> torch.Tensor:
        """A callable ``map_location`` applied to a loaded CPU tensor (None from it keeps the tensor)."""
        moved = self._fn(t, recorded) if self._fn is not None else None
        return t if moved is None else moved

    def device_for(self, recorded: str, dtypes: Iterable[torch.dtype]) -> torch.device:
        ml = self.map_location
        if self._fixed is not None:
            dev = self._fixed
        elif isinstance(ml, Mapping) and recorded in ml:
            v = ml[recorded]
            dev = auto_device(self.acc) if isinstance(v, str) and v == "auto" else _parse(v, "map_location")
        else:
            try:
                rec = torch.device(recorded)
            except RuntimeError:
                rec = torch.device("cpu")
            dev = rec if available(rec, self.acc) else torch.device("cpu")
        if dev.type == "mps" and any(str(dt).removeprefix("torch.") in MPS_UNSUPPORTED for dt in dtypes):
            self.kept_on_cpu += 1
            return torch.device("cpu")
        return dev
