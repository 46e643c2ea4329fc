"""Opens the ONNX stages of an export after checking it belongs to this model folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..int8 import QUANTIZED_STAGES, full_range_notice
from ..manifest import FLOW_NOISE_FILE, check_export
from ..model_files import ModelFiles
from ..plan import StagePlan, graph_files

DEFAULT_EXPORT_SUBDIR = "onnx"


def default_export_dir(files: ModelFiles) -> Path:
    return files.root / DEFAULT_EXPORT_SUBDIR


def manifest_graphs(manifest: dict, export_dir: Path, stage: str, precision: str, causal_vocoder: bool) -> dict:
    """The graph files of `stage` at `precision` by role, each one the manifest lists for that stage."""
    listed = set(manifest["precisions"][precision].get(stage, []))
    wanted = graph_files(stage, precision, causal_vocoder)
    missing = sorted(name for name in wanted.values() if name not in listed)
    if missing:
        raise ExportError(f"{export_dir}: the manifest lists no {', '.join(missing)} for the {precision} {stage}; "
                          f"re-export: `cosyvoice-onnx export --precision {precision}`")
    return wanted


def load(files: ModelFiles, plans: dict[str, StagePlan], export_dir: Path | None = None):
    """Returns ({stage: Onnx stage}, flow noise buffer) for the stages the plan runs on ONNX."""
    from .flow import OnnxFlow
    from .hift import OnnxVocoder
    from .lm import OnnxLanguageModel

    export_dir = Path(export_dir) if export_dir else default_export_dir(files)
    classes = {"lm": OnnxLanguageModel, "flow": OnnxFlow, "vocoder": OnnxVocoder}
    causal = files.config.hift.causal
    stages = {}
    for precision in sorted({p.precision for p in plans.values()}):
        names = [s for s, p in plans.items() if p.precision == precision]
        manifest = check_export(export_dir, files, precision, names)
        notice = full_range_notice(manifest, export_dir) if precision == "int8" and (
            set(names) & set(QUANTIZED_STAGES)) else None
        if notice:
            warnings.warn(notice, stacklevel=2)
        for stage in names:
            graphs = manifest_graphs(manifest, export_dir, stage, precision, causal)
            stages[stage] = classes[stage](export_dir, files.config, precision=precision, graphs=graphs,
                                           device=plans[stage].device)
    noise_path = export_dir / FLOW_NOISE_FILE
    try:
        noise = np.load(noise_path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{noise_path}: missing or unreadable ({exc}); re-export") from exc
    if noise.shape != (1, files.config.flow.mel_dim, files.config.flow.noise_frames):
        raise ExportError(f"{noise_path}: unexpected shape {noise.shape}; re-export")
    return stages, noise.astype(np.float32, copy=False)
