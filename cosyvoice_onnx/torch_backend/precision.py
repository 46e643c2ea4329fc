"""What a device and a precision mean for a PyTorch stage: the torch device, the weight dtype, one conversion.

Weights are converted once, when a stage is built; there is no per-op autocast. A module can name the parts that
must keep their own dtype (`KEEP_DTYPE_ATTR`): the CV3 f0 predictor stays float64, the DiT's RoPE frequencies stay
float32 (positions up to thousands do not survive bfloat16's 8-bit mantissa).
"""

from __future__ import annotations

import torch
from torch import nn

from ..devices import CPU, Device, resolve_torch

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# A module may list attribute paths (dotted, relative to itself) of submodules/buffers that keep their dtype.
KEEP_DTYPE_ATTR = "keep_dtype"


def torch_dtype(precision: str) -> torch.dtype:
    """`fp32` | `bf16` | `fp16` -> the torch dtype the stage's weights are held in."""
    try:
        return TORCH_DTYPES[precision]
    except KeyError:
        raise ValueError(f"the PyTorch backend has no precision {precision!r}; choose "
                         f"{', '.join(TORCH_DTYPES)}") from None


def torch_device(device: Device = CPU) -> torch.device:
    """A resolved torch device for a `devices.Device` (auto -> cuda when torch sees a GPU; a missing GPU is an
    InputError naming what is missing)."""
    device = resolve_torch(device)
    return torch.device("cuda", device.index) if device.is_cuda else torch.device("cpu")


def place(module: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Moves `module` to `device` and its floating weights to `dtype`, except the parts it lists in `keep_dtype`
    (taken out while the rest converts, so they are never rounded). fp32 moves only: the weights stay as loaded."""
    detached = []
    for path in getattr(module, KEEP_DTYPE_ATTR, ()):
        *parents, name = path.split(".")
        owner = module
        for part in parents:
            owner = getattr(owner, part)
        table = owner._modules if name in owner._modules else owner._buffers
        detached.append((table, name, table.pop(name)))
    if dtype == torch.float32:
        module.to(device=device)
    else:
        module.to(device=device, dtype=dtype)
    for table, name, part in reversed(detached):
        table[name] = part.to(device)
    return module
