"""ONNX Runtime sessions with settings chosen on purpose: providers, threads, graph optimisation."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ExportError


def providers(prefer_gpu: bool = True) -> list[str]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = ["CUDAExecutionProvider"] if prefer_gpu and "CUDAExecutionProvider" in available else []
    return chosen + ["CPUExecutionProvider"]


def default_threads() -> int:
    """All physical cores for one request at a time; COSYVOICE_ORT_THREADS overrides."""
    env = os.environ.get("COSYVOICE_ORT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def make_session(path: Path, *, threads: int | None = None, prefer_gpu: bool = True):
    """Opens one exported graph; a missing or unreadable file is reported as a stale/corrupt export."""
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: missing from the export; run `cosyvoice-onnx export --model DIR` again")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or default_threads()
    # One request runs its stages one after another, so inter-op parallelism only adds contention.
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers(prefer_gpu))
    except Exception as exc:  # onnxruntime raises Fail / InvalidProtobuf / NoSuchFile
        raise ExportError(f"{path}: cannot be loaded ({str(exc).splitlines()[0][:200]}); "
                          "the file is corrupt or from another version: re-export") from exc
