"""Which compute devices exist here, and whether `--device` names one of them.

Checked before any work (a CLI option callback and the API entry points), so a typo costs a one-line error
naming the devices that exist, not a model load followed by a torch traceback.
"""

from __future__ import annotations

import re

from tensorpress.errors import TensorpressError

_CUDA = re.compile(r"cuda(?::(\d+))?")


def available_devices() -> list[str]:
    """cpu, plus cuda:0..N-1 and mps where torch sees them."""
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def check_device(device: str) -> str:
    """Return `device` if it exists on this machine; else a `TensorpressError` listing what does."""
    if device == "cpu":  # the default: no torch import needed to accept it
        return device
    here = available_devices()
    m = _CUDA.fullmatch(device)
    if m and m.group(1) is None and any(d.startswith("cuda:") for d in here):
        return device
    if device in here:
        return device
    if m:
        why = "no CUDA device here" if not any(d.startswith("cuda") for d in here) else "no such CUDA device here"
    elif device in ("mps",):
        why = "MPS is not available here"
    else:
        why = "not a device name (cpu, cuda, cuda:N or mps)"
    raise TensorpressError(f"--device {device!r}: {why}; devices here: {', '.join(here)}")
