"""Choosing a backend per stage and building the stage objects for a model folder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError
from .model_files import ModelFiles

STAGES = ("lm", "flow", "vocoder")
BACKENDS = ("torch", "onnx")
INT8_STAGES = ("lm", "flow")


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
        # int8 graphs exist for the LM and the flow estimator; the vocoder stays fp32 under a global int8 choice.
        return {s: choice if (s in INT8_STAGES or choice.precision != "int8") else StageChoice(choice.backend)
                for s in STAGES}
    if isinstance(spec, str):
        parts = [part.partition("=") for part in spec.split(",") if part.strip()]
        malformed = [stage + sep + value for stage, sep, value in parts if not sep]
        if malformed:
            raise InputError(f"backend spec {spec!r}: {malformed[0]!r} is not STAGE=BACKEND; write e.g. "
                             "lm=onnx:int8,flow=torch,vocoder=onnx")
        items = {stage: value for stage, _, value in parts}
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
    if precision not in ("fp32", "fp16", "int8"):
        raise InputError(f"unknown precision {precision!r}; choose fp32, fp16 or int8")
    if backend == "torch" and precision != "fp32":
        raise InputError("the PyTorch backend runs in fp32 on CPU; use onnx:fp16 / onnx:int8 for other precisions")
    return StageChoice(backend, precision)


@dataclass
class Stages:
    lm: Any
    flow: Any
    vocoder: Any
    flow_noise: np.ndarray
    choices: dict[str, StageChoice]


def load_stages(files: ModelFiles, choices: dict[str, StageChoice], export_dir=None) -> Stages:
    """Builds each stage on its chosen backend; torch is imported only when some stage needs it."""
    built: dict[str, Any] = {}
    flow_noise = None
    if any(c.backend == "torch" for c in choices.values()):
        from .torch_backend import loader as torch_loader

        torch_stages = torch_loader.load(files, [s for s in STAGES if choices[s].backend == "torch"])
        built.update(torch_stages)
        flow_noise = torch_loader.flow_noise()
    if any(c.backend == "onnx" for c in choices.values()):
        from .onnx_backend import loader as onnx_loader

        onnx_stages, onnx_noise = onnx_loader.load(files, {s: c for s, c in choices.items() if c.backend == "onnx"},
                                                   export_dir)
        built.update(onnx_stages)
        flow_noise = onnx_noise if flow_noise is None else flow_noise
    return Stages(built["lm"], built["flow"], built["vocoder"], flow_noise, choices)
