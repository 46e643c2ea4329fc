"""Opens the ONNX stages of an export after checking it belongs to this model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..devices import Device
from ..errors import ExportError
from ..manifest import FLOW_NOISE_FILE, check_export
from ..model_files import ModelFiles

DEFAULT_EXPORT_SUBDIR = "onnx"


def default_export_dir(files: ModelFiles) -> Path:
    return files.root / DEFAULT_EXPORT_SUBDIR


def load(files: ModelFiles, choices: dict, export_dir: Path | None = None, device: Device | str | None = None):
    """Returns ({stage: Onnx stage}, flow noise buffer) for the stages chosen to run on ONNX, on `device` (None:
    auto, CUDA where this onnxruntime has the provider)."""
    from .flow import OnnxFlow
    from .hift import OnnxVocoder
    from .lm import OnnxLanguageModel

    export_dir = Path(export_dir) if export_dir else default_export_dir(files)
    classes = {"lm": OnnxLanguageModel, "flow": OnnxFlow, "vocoder": OnnxVocoder}
    stages = {}
    for precision in sorted({c.precision for c in choices.values()}):
        names = [s for s, c in choices.items() if c.precision == precision]
        check_export(export_dir, files, precision, names)
        for stage in names:
            stages[stage] = classes[stage](export_dir, files.config, precision=precision, device=device)
    noise_path = export_dir / FLOW_NOISE_FILE
    try:
        noise = np.load(noise_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{noise_path}: missing or unreadable ({exc}); re-export") from exc
    if noise.shape != (1, files.config.flow.mel_dim, files.config.flow.noise_frames):
        raise ExportError(f"{noise_path}: unexpected shape {noise.shape}; re-export")
    return stages, noise.astype(np.float32, copy=False)
