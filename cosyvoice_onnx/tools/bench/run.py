"""One whole `bench` run: model folder and export, machine rates, every backend's worker, the bounds."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ...errors import CosyVoiceError
from .cost import bounds
from .machine import SGEMM_SHAPE, best_rates, describe_machine, measure_machine
from .report import stage_labels
from .stages import STAGES, STAGES_TIMED, _backend_job, run_backend_subprocess
from .workload import SIZES, Workload

def prepare(size: str, work: Path, precisions: list[str], model_dir: Path | None = None,
            progress: Callable[[str], None] = print, version: int = 3) -> tuple[Path, Path]:
    """(model folder, export folder): reuses what `work` (or `model_dir`) already holds, builds the rest."""
    from ...manifest import check_export
    from ...model_files import inspect_model_dir

    if model_dir is None:
        model_dir = Path(work) / (f"model-{size}" if version == 3 else f"model-{size}-cv{version}")
        # make_tiny_model writes spk2info.pt last, so its presence means a complete folder.
        if not (model_dir / "spk2info.pt").exists():
            from ..tiny import make_tiny_model

            progress(f"building a {size}-size CosyVoice{version} model folder with random weights in {model_dir}")
            make_tiny_model(model_dir, version=version, seed=0, size=size)
    files = inspect_model_dir(model_dir)
    export_dir = files.root / "onnx"
    try:
        for precision in precisions:
            check_export(export_dir, files, precision, ["lm", "flow", "vocoder"])
        progress(f"reusing the export in {export_dir}")
    except CosyVoiceError:
        from ...export.exporter import export_model

        progress(f"exporting {model_dir} to ONNX ({', '.join(precisions)}); at real size this takes minutes")
        export_model(model_dir, export_dir, precisions=precisions, parity=False, progress=progress)
    return files.root, export_dir



# --------------------------------------------------------------------------- the whole run


# On a GPU: PyTorch in every precision it has there, then ONNX fp16 where onnxruntime has the CUDA provider.
GPU_TORCH_BACKENDS = ["torch", "torch:bf16", "torch:fp16"]


def backends_for(precisions: list[str], cuda: bool, device=None) -> list[str]:
    """The columns of one run, as canonical plan strings. `device` cuda: GPU_TORCH_BACKENDS (+ onnx:fp16 with
    onnxruntime's CUDA provider); otherwise PyTorch and ONNX on the CPU (fp16 only where the CUDA provider exists)."""
    from ...devices import parse_device
    from ...plan import ExecutionPlan, stage_plan

    if device is not None and parse_device(device).is_cuda:
        return GPU_TORCH_BACKENDS + (["onnx:fp16"] if cuda else [])
    plans = [ExecutionPlan.everywhere("torch"), ExecutionPlan.everywhere("onnx")]
    plans += [ExecutionPlan.everywhere("onnx", p) for p in precisions if p == "int8" or (p == "fp16" and cuda)]
    if "int8" in precisions:
        plans.append(ExecutionPlan(stage_plan("lm", "onnx", "int8"), stage_plan("flow", "onnx"),
                                   stage_plan("vocoder", "onnx")))
    return [str(plan) for plan in plans]


def run_bench(size: str = "tiny", work: str | Path | None = None, model_dir: str | Path | None = None,
              precisions: str = "fp32,int8", threads: int | None = None, repeats: int = 3,
              workload: Workload | None = None, progress: Callable[[str], None] = print, version: int = 3,
              device: str = "cpu", backends: list[str] | None = None, backend_timeout_s: float | None = None,
              stages: list[str] | None = None) -> dict:
    """Everything `cosyvoice-onnx bench` prints, as a dict (also what --json writes). `device` cuda times the
    stages on the GPU (GPU_TORCH_BACKENDS, and ONNX fp16 where onnxruntime has the CUDA provider). `backends`
    names the columns instead (e.g. ["torch", "torch:bf16"]); only the ONNX precisions among them are exported.
    backend_timeout_s bounds each column's worker: one that fails or runs out of time is reported with what it
    finished, and the other columns still run. `stages` (default all of STAGES) limits what each column times."""
    import onnxruntime as ort

    from ...devices import parse_device, resolve_torch
    from ...plan import parse_precisions
    from ...onnx_backend.session import allow_spinning, default_threads

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose {' or '.join(SIZES)}")
    workload = workload or Workload()
    threads = threads or default_threads()
    wanted = parse_precisions(precisions)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    on_gpu = parse_device(device).is_cuda
    if on_gpu:
        resolve_torch(parse_device(device))  # a missing GPU fails here, before minutes of model building
        # Only the GPU's precisions are exported: fp16 where ONNX Runtime can run it there, nothing otherwise.
        wanted = ["fp16"] if cuda else []
    names = backends_for(wanted, cuda, device)
    if backends:
        from ...plan import ExecutionPlan

        # A typo fails here, not in a worker after the model is built; the columns are canonical plan strings.
        plans = [ExecutionPlan.parse(name.strip()) for name in backends]
        names = [str(plan) for plan in plans]
        wanted = sorted({p.precision for plan in plans for p in plan.on("onnx").values()})
    work = Path(work) if work else default_work_dir()
    model, export_dir = prepare(size, work, wanted, Path(model_dir) if model_dir else None, progress, version)
    described = str(model) if model_dir else f"CosyVoice{version} dimensions ({size}), seeded random weights"
    report = {"model": described, "machine": describe_machine(),
              "workload": asdict(workload), "threads": threads, "device": str(device),
              "ort_spinning": allow_spinning()}
    progress("measuring this machine (GEMM rates, memory bandwidth)")
    before = measure_machine(threads)
    report["backends"] = {}
    for backend in names:
        timed = [s for s in STAGES_TIMED.get(backend, list(STAGES)) if stages is None or s in stages]
        if not timed:
            continue
        progress(f"timing {backend} on {device} ({', '.join(timed)})")
        job = _backend_job(backend, model, export_dir, threads, repeats, workload, timed, str(device))
        if backend_timeout_s is None:
            report["backends"][backend] = run_backend_subprocess(job)
            continue
        try:
            report["backends"][backend] = run_backend_subprocess({**job, "timeout_s": backend_timeout_s})
        except CosyVoiceError as exc:
            report["backends"][backend] = {"backend": backend, "error": str(exc)}
        if "error" in report["backends"][backend]:
            progress(f"{backend}: {report['backends'][backend]['error']}")
    report["machine"]["load_average_after"] = list(os.getloadavg())
    report["rates"] = {**best_rates(before, measure_machine(threads)), "gemm_shape": list(SGEMM_SHAPE)}
    from ...model_files import inspect_model_dir

    cfg = inspect_model_dir(model).config
    report["bounds"] = bounds(cfg, workload, report["rates"])
    report["labels"] = stage_labels(cfg, workload)
    return report


def default_work_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cosyvoice-onnx" / "bench"

