"""Choosing a backend per stage and building the stage objects for a model folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .devices import parse_device
from .errors import InputError
from .model_files import ModelFiles

STAGES = ("lm", "flow", "vocoder")
BACKENDS = ("torch", "onnx")
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class StageChoice:
    backend: str = "torch"
    precision: str = "fp32"

    def __str__(self) -> str:
        return self.backend if self.precision == "fp32" else f"{self.backend}:{self.precision}"


def parse_backend(spec: str | dict | None) -> dict[str, StageChoice]:
    """`torch`, `onnx:int8`, or per stage: `lm=onnx:int8,flow=torch,vocoder=onnx` (or a dict of those)."""
    if spec is None or spec == "":
        spec = "torch"
    if isinstance(spec, str) and "=" not in spec:
        choice = _parse_choice(spec)
        # int8 graphs exist for the LM and the flow estimator; the vocoder stays fp32 under a global int8 choice,
        # and the PyTorch vocoder under a half precision (its f0 predictor and NSF phase need the range).
        keeps_fp32 = choice.precision == "int8" or (choice.backend == "torch" and choice.precision != "fp32")
        return {s: StageChoice(choice.backend) if (s == "vocoder" and keeps_fp32) else choice for s in STAGES}
    if isinstance(spec, str):
        items = dict(part.split("=", 1) for part in spec.split(",") if part.strip())
    else:
        items = dict(spec)
    unknown = set(items) - set(STAGES)
    if unknown:
        raise InputError(f"unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    out = {s: StageChoice() for s in STAGES}
    for stage, value in items.items():
        out[stage.strip()] = _parse_choice(str(value).strip())
    return out


def _parse_choice(text: str) -> StageChoice:
    backend, _, precision = text.strip().partition(":")
    precision = precision or "fp32"
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose torch or onnx")
    allowed = TORCH_PRECISIONS if backend == "torch" else ONNX_PRECISIONS
    if precision not in allowed:
        raise InputError(f"the {backend} backend has no precision {precision!r}; choose {', '.join(allowed)}")
    return StageChoice(backend, precision)


@dataclass
class Stages:
    lm: Any
    flow: Any
    vocoder: Any
    flow_noise: np.ndarray
    choices: dict[str, StageChoice]


def load_stages(files: ModelFiles, choices: dict[str, StageChoice], export_dir=None, device=None) -> Stages:
    """Builds each stage on its chosen backend and `device` (a `devices.Device` or its text; None: auto, which is
    the CPU where the backend sees no GPU); torch is imported only when some stage needs it."""
    device = parse_device(device)
    built: dict[str, Any] = {}
    flow_noise = None
    if any(c.backend == "torch" for c in choices.values()):
        from .torch_backend import loader as torch_loader

        torch_names = [s for s in STAGES if choices[s].backend == "torch"]
        torch_stages = torch_loader.load(files, torch_names, device, {s: choices[s].precision for s in torch_names})
        built.update(torch_stages)
        flow_noise = torch_loader.flow_noise()
    if any(c.backend == "onnx" for c in choices.values()):
        from .onnx_backend import loader as onnx_loader

        onnx_stages, onnx_noise = onnx_loader.load(files, {s: c for s, c in choices.items() if c.backend == "onnx"},
                                                   export_dir, device)
        built.update(onnx_stages)
        flow_noise = onnx_noise if flow_noise is None else flow_noise
    return Stages(built["lm"], built["flow"], built["vocoder"], flow_noise, choices)
