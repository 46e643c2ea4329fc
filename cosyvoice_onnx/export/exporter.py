"""`cosyvoice-onnx export`: every neural stage of a model folder to ONNX, plus the manifest and parity figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..manifest import FLOW_NOISE_FILE, fingerprint, new_manifest, write_manifest
from ..model_files import inspect_model_dir
from ..onnx_backend.loader import default_export_dir
from ..plan import parse_precisions
from ..progress import OnEvent, ProgressEvent



def export_model(model_dir: str | Path, out_dir: str | Path | None = None, precisions: str | list[str] = "fp32",
                 llm_variant: str = "base", parity: bool = True,
                 progress: Callable[[str], None] = print, on_event: OnEvent | None = None) -> Path:
    """Writes the ONNX graphs for the requested precisions into out_dir (default: <model>/onnx).

    `progress` gets every log line; `on_event` a ProgressEvent("export", done, total) as each step starts
    (a step: one stage at one precision, or one parity run) and when all are done.
    """
    import torch

    from .. import __version__
    from ..torch_backend.loader import flow_noise, load_module
    from .flow import export_flow
    from .hift import export_hift
    from .lm import export_lm

    files = inspect_model_dir(model_dir, llm_variant)
    cfg = files.config
    out = Path(out_dir) if out_dir else default_export_dir(files)
    out.mkdir(parents=True, exist_ok=True)
    wanted = parse_precisions(precisions)
    progress(f"exporting {files.root} (CosyVoice{cfg.version}) to {out} at {', '.join(wanted)}")
    manifest = new_manifest(files, __version__)
    exporters = {"lm": export_lm, "flow": export_flow, "vocoder": export_hift}
    steps = len(exporters) * len(wanted) + (len(wanted) if parity else 0)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        progress(message)
        if on_event is not None:
            on_event(ProgressEvent("export", done, steps, message))
        done += 1
    torch.set_grad_enabled(False)
    for stage, export in exporters.items():
        start = time.perf_counter()
        progress(f"[{stage}] loading weights")
        module = load_module(files, stage)
        fp32_paths = None
        for precision in wanted:
            step(f"[{stage}] exporting {precision}")
            # fp16/int8 graphs are derived from the fp32 ones just written (fp32 always comes first).
            paths = export(module, cfg, out, precision=precision, fp32_paths=fp32_paths)
            if precision == "fp32":
                fp32_paths = paths
            manifest["precisions"].setdefault(precision, {})[stage] = [p.name for p in paths]
            for p in paths:
                manifest["files"][p.name] = fingerprint(p, with_hash=p.stat().st_size < 64 << 20)
                data = p.with_name(p.name + ".data")
                if data.exists():
                    manifest["files"][data.name] = fingerprint(data, with_hash=False)
                    manifest["precisions"][precision][stage].append(data.name)
        del module
        progress(f"[{stage}] done in {time.perf_counter() - start:.1f} s")
    np.save(out / FLOW_NOISE_FILE, flow_noise())
    manifest["files"][FLOW_NOISE_FILE] = fingerprint(out / FLOW_NOISE_FILE)
    write_manifest(out, manifest)
    if parity:
        from ..tools.parity import quick_parity

        for precision in wanted:
            step(f"[parity] measuring {precision} against PyTorch")
            manifest["parity"][precision] = quick_parity(files.root, out, precision, llm_variant=llm_variant)
            write_manifest(out, manifest)
            progress("[parity] " + summarize(manifest["parity"][precision]))
    progress(f"export written to {out}")
    if on_event is not None:
        on_event(ProgressEvent("export", steps, steps, f"export written to {out}"))
    return out


def summarize(report: dict) -> str:
    lm, flow, voc = report.get("lm", {}), report.get("flow", {}), report.get("vocoder", {})
    return (f"LM logits max diff {lm.get('logits_max_abs_diff', float('nan')):.2e}, greedy agreement "
            f"{lm.get('greedy_token_agreement', float('nan')):.3f}; flow mel max diff "
            f"{flow.get('mel_max_abs_diff', float('nan')):.2e}; waveform SNR {voc.get('snr_db', float('nan')):.1f} dB")
