"""The one device setting: how `TrainingArguments.device` (or `trainer.to(...)`) becomes a torch device.

`device=None` means: CUDA when a CUDA GPU is visible, else the CPU. MPS is never picked on its own
(some operations GRADIEND needs have no MPS kernel, and float64 is missing there); ask for it with
`device="mps"`. A loaded model passed in keeps its own device unless a device is asked for explicitly.

`device_name` validates a spelling without importing torch (so reading a configuration stays cheap);
`resolve_device` turns it into a `torch.device`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu|meta)(:\d+)?$")
KNOWN = ("cpu", "cuda", "cuda:N", "mps", "xpu", "xpu:N")


def device_name(device: Any) -> str | None:
    """Canonical string of a device spelling ('cuda:1', a `torch.device`, an int N = 'cuda:N'); None stays None."""
    if device is None:
        return None
    if isinstance(device, bool):
        raise ValueError(f"device must be a device name such as 'cuda' or 'cpu', got {device!r}")
    if isinstance(device, int):
        if device < 0:
            raise ValueError(f"device index must be ≥ 0, got {device}")
        return f"cuda:{device}"
    text = str(device).strip().lower()  # a torch.device prints as its name
    if not _DEVICE.match(text):
        raise ValueError(f"device {device!r} is not a device name; use one of {list(KNOWN)} (or None: cuda when "
                         f"available, else cpu)")
    return text


def default_device() -> torch.device:
    """CUDA (the current device) when a CUDA GPU is visible, else the CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_device(device: Any = None, fallback: torch.device | None = None) -> torch.device:
    """The torch device for `device`: itself when given, else `fallback` (a loaded model's device), else the default.

    An accelerator that is not there is an error naming the fix, not a failure deep inside a model.
    """
    import torch

    name = device_name(device)
    if name is None:
        return fallback if fallback is not None else default_device()
    resolved = torch.device(name)
    check_available(resolved)
    return resolved


def check_available(device: torch.device) -> None:
    """RuntimeError when `device` names an accelerator this machine does not have."""
    import torch

    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={str(device)!r} was asked for, but no CUDA GPU is available (torch "
                               f"{torch.__version__}, built with CUDA {torch.version.cuda}); use device='cpu', or "
                               f"install a CUDA build of torch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device={str(device)!r} was asked for, but only {torch.cuda.device_count()} CUDA "
                               f"GPU(s) are visible (cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={str(device)!r} was asked for, but MPS is not available here; use device='cpu'")
    elif device.type == "xpu" and not torch.xpu.is_available():
        raise RuntimeError(f"device={str(device)!r} was asked for, but no XPU is available here; use device='cpu'")


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same place ('cuda' and 'cuda:0' are, when cuda:0 is the current device)."""
    import torch

    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (current if a.index is None else a.index) == (current if b.index is None else b.index)
