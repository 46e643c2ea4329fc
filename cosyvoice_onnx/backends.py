"""Building the stage objects of a model folder as an execution plan says (see plan.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .model_files import ModelFiles
from .plan import ExecutionPlan


@dataclass
class Stages:
    lm: Any
    flow: Any
    vocoder: Any
    flow_noise: np.ndarray
    plan: ExecutionPlan


def load_stages(files: ModelFiles, plan: ExecutionPlan, export_dir=None) -> Stages:
    """Builds each stage on its planned backend; torch is imported only when some stage needs it."""
    built: dict[str, Any] = {}
    flow_noise = None
    if plan.uses("torch"):
        from .torch_backend import loader as torch_loader

        for stage, stage_plan in plan.on("torch").items():
            built.update(torch_loader.load(files, [stage], device=stage_plan.device, precision=stage_plan.precision))
        flow_noise = torch_loader.flow_noise()
    if plan.uses("onnx"):
        from .onnx_backend import loader as onnx_loader

        onnx_stages, onnx_noise = onnx_loader.load(files, plan.on("onnx"), export_dir)
        built.update(onnx_stages)
        flow_noise = onnx_noise if flow_noise is None else flow_noise
    flow_noise.flags.writeable = False  # shared by every request of the engine
    return Stages(built["lm"], built["flow"], built["vocoder"], flow_noise, plan)
