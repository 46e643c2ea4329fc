"""Where a stage runs: `auto`, `cpu` or `cuda[:N]`, parsed once and resolved per backend."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InputError

DEVICE_KINDS = ("auto", "cpu", "cuda")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda)(?::(\d{1,3}))?$")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class Device:
    """A device request. `auto` stays unresolved until a backend resolves it (torch and ORT see GPUs apart)."""

    kind: str = "cpu"
    index: int = 0

    def __str__(self) -> str:
        if self.kind == "cuda" and self.index:
            return f"cuda:{self.index}"
        return self.kind

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"


CPU = Device("cpu")


def parse_device(text: str | Device | None) -> Device:
    """`auto`, `cpu`, `cuda` or `cuda:N` (None means auto); anything else is an InputError naming the choices."""
    if isinstance(text, Device):
        return text
    if text is None:
        return Device("auto")
    match = _DEVICE_RE.match(str(text).strip().lower())
    if not match:
        raise InputError(f"unknown device {text!r}; choose auto, cpu, cuda or cuda:N")
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind != "cuda" and match.group(2) is not None:
        raise InputError(f"device {text!r}: only cuda takes an index (cuda:N)")
    return Device(kind, index)


def torch_cuda_count() -> int:
    """CUDA devices torch can use (0 without torch or without a CUDA build)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ort_has_cuda() -> bool:
    """Whether this onnxruntime build offers the CUDA provider (onnxruntime-gpu)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return CUDA_PROVIDER in ort.get_available_providers()


def gpu_summary() -> str | None:
    """The GPUs torch sees with their free memory ("cuda:0 NVIDIA H200, 131.2 of 139.8 GiB free"); None without."""
    count = torch_cuda_count()
    if not count:
        return None
    import torch

    parts = []
    for index in range(count):
        free, total = torch.cuda.mem_get_info(index)
        parts.append(f"cuda:{index} {torch.cuda.get_device_name(index)}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free")
    return "; ".join(parts)


def describe_device(device: Device) -> str:
    """One line for a UI: what `device` becomes for each backend, and the GPUs there are."""
    def concrete(resolve) -> str:
        try:
            return str(resolve(device))
        except InputError as exc:
            return f"unavailable ({exc})"

    line = f"device {device}: PyTorch stages on {concrete(resolve_torch)}, ONNX stages on {concrete(resolve_onnx)}"
    gpus = gpu_summary()
    return f"{line}. GPU: {gpus}" if gpus else f"{line}. No GPU seen by torch."


def resolve_torch(device: Device) -> Device:
    """The concrete device for a torch stage: auto -> cuda when torch sees a GPU, else cpu."""
    count = torch_cuda_count()
    if device.kind == "auto":
        return Device("cuda", 0) if count else CPU
    if device.kind == "cuda":
        if count == 0:
            raise InputError("device cuda was asked for the PyTorch backend, but torch sees no CUDA GPU "
                             "(a CPU-only torch build, or no NVIDIA driver); use --device cpu")
        if device.index >= count:
            raise InputError(f"device {device} does not exist: torch sees {count} CUDA GPU(s) (cuda:0..{count - 1})")
    return device


def resolve_onnx(device: Device) -> Device:
    """The concrete device for an ONNX stage: auto -> cuda when onnxruntime has the CUDA provider, else cpu."""
    has_cuda = ort_has_cuda()
    if device.kind == "auto":
        return Device("cuda", 0) if has_cuda else CPU
    if device.kind == "cuda" and not has_cuda:
        raise InputError("device cuda was asked for the ONNX backend, but this onnxruntime has no CUDA provider; "
                         "install the GPU build: pip uninstall -y onnxruntime && pip install 'cosyvoice-onnx[gpu]'")
    return device


def onnx_providers(device: Device) -> list:
    """ONNX Runtime providers for a resolved device: CUDA (with its index) first on cuda, CPU as the fallback."""
    if device.is_cuda:
        return [(CUDA_PROVIDER, {"device_id": device.index}), CPU_PROVIDER]
    return [CPU_PROVIDER]
