"""`cosyvoice-onnx export`: every neural stage of a model folder to ONNX, plus the manifest and parity figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ModelFolderError
from ..hash_cache import HashCache
from ..int8 import (DEFAULT_WEIGHT_BITS, MANIFEST_KEY as INT8_KEY, QUANTIZED_STAGES, UNRECORDED_WEIGHT_BITS,
                    parse_weight_bits)
from ..manifest import FLOW_NOISE_FILE, fingerprint, new_manifest, previous_export, write_manifest
from ..model_files import ModelFiles, inspect_model_dir
from ..onnx_backend.loader import default_export_dir
from ..plan import parse_precisions
from ..progress import OnEvent, ProgressEvent


def export_model(model_dir: str | Path, out_dir: str | Path | None = None, precisions: str | list[str] = "fp32",
                 llm_variant: str = "base", parity: bool = True,
                 progress: Callable[[str], None] = print, on_event: OnEvent | None = None,
                 int8_weight_bits: int = DEFAULT_WEIGHT_BITS) -> Path:
    """Writes the ONNX graphs for the requested precisions into out_dir (default: <model>/onnx).

    int8_weight_bits: 7 (exact on every CPU) or 8 (exact only with VNNI/AMX), see cosyvoice_onnx/int8.py; the
    manifest records it.

    Precisions exported earlier from the same checkpoints are kept (see `carry_over`). `progress` gets every
    log line; `on_event` a ProgressEvent("export", done, total) as each step starts (a step: one stage at
    one precision, or one parity run) and when all are done.
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
    wanted = parse_precisions(precisions)
    int8_weight_bits = parse_weight_bits(int8_weight_bits)
    if parity:
        check_parity_can_run(files)  # before any file is written
    out.mkdir(parents=True, exist_ok=True)
    progress(f"exporting {files.root} (CosyVoice{cfg.version}) to {out} at {', '.join(wanted)}")
    hashes = HashCache.in_folder(out)
    previous = previous_export(out, files, hashes)
    manifest = new_manifest(files, __version__, hashes)
    if "int8" in wanted:
        manifest[INT8_KEY] = int8_weight_bits
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
            same_as_fp32 = stage == "vocoder" and precision != "fp32"  # the vocoder always runs its fp32 graphs
            step(f"[{stage}] {precision}: uses the fp32 graphs" if same_as_fp32 else f"[{stage}] exporting {precision}")
            # fp16/int8 graphs are derived from the fp32 ones just written (fp32 always comes first).
            options = {"int8_weight_bits": int8_weight_bits} if stage in QUANTIZED_STAGES else {}
            paths = export(module, cfg, out, precision=precision, fp32_paths=fp32_paths, **options)
            if precision == "fp32":
                fp32_paths = paths
            manifest["precisions"].setdefault(precision, {})[stage] = [p.name for p in paths]
            for p in paths:
                manifest["files"][p.name] = fingerprint(p, hashes)
                data = p.with_name(p.name + ".data")
                if data.exists():
                    manifest["files"][data.name] = fingerprint(data, hashes)
                    manifest["precisions"][precision][stage].append(data.name)
        del module
        progress(f"[{stage}] done in {time.perf_counter() - start:.1f} s")
    np.save(out / FLOW_NOISE_FILE, flow_noise())
    manifest["files"][FLOW_NOISE_FILE] = fingerprint(out / FLOW_NOISE_FILE, hashes)
    kept, dropped = carry_over(previous, manifest)
    if kept:
        progress(f"kept the earlier {', '.join(kept)} export (its fp32 graphs are unchanged)")
    if dropped:
        progress(f"dropped the earlier {', '.join(dropped)} export: the fp32 graphs it was derived from changed; "
                 f"re-export it with `cosyvoice-onnx export --model {files.root} --precision {','.join(dropped)}`")
    write_manifest(out, manifest)
    hashes.save()
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


def carry_over(previous: dict | None, manifest: dict) -> tuple[list[str], list[str]]:
    """Adds to `manifest` the precisions of the earlier export of the same checkpoints that this run did not redo.

    They were derived from the fp32 graphs the earlier run wrote, so they are kept only when this run's fp32
    graphs came out byte-identical (same SHA-256); otherwise they are dropped. Returns (kept, dropped).
    """
    if previous is None:
        return [], []
    earlier = sorted(p for p in previous.get("precisions", {}) if p not in manifest["precisions"])
    fp32 = {name for names in manifest["precisions"]["fp32"].values() for name in names}
    if any(previous["files"].get(name, {}).get("sha256") != manifest["files"][name]["sha256"] for name in fp32):
        return [], earlier
    for precision in earlier:
        manifest["precisions"][precision] = previous["precisions"][precision]
        for name in (n for names in previous["precisions"][precision].values() for n in names):
            manifest["files"].setdefault(name, previous["files"].get(name, {}))
        if precision in previous.get("parity", {}):
            manifest["parity"][precision] = previous["parity"][precision]
    if "int8" in earlier:
        manifest[INT8_KEY] = previous.get(INT8_KEY, UNRECORDED_WEIGHT_BITS)
    return earlier, []


def check_parity_can_run(files: ModelFiles) -> None:
    """The built-in parity run tokenizes text; a LM whose text vocabulary is smaller than the tokenizer's ids
    could not embed them."""
    from ..tokenizer import TextTokenizer

    tokenizer = TextTokenizer.from_dir(files.qwen_dir, files.config.tokenizer_version)
    if tokenizer.vocab_size > files.config.llm.text_vocab_size:
        raise ModelFolderError(
            f"{files.qwen_dir / 'config.json'}: vocab_size {files.config.llm.text_vocab_size} is smaller than the "
            f"tokenizer's {tokenizer.vocab_size} ids, so the LM cannot embed its special tokens and the parity check "
            "cannot run; fix the model folder, or export with --no-parity (nothing was written)")


def summarize(report: dict) -> str:
    lm, flow, voc = report.get("lm", {}), report.get("flow", {}), report.get("vocoder", {})
    return (f"LM logits max diff {lm.get('logits_max_abs_diff', float('nan')):.2e}, greedy agreement "
            f"{lm.get('greedy_token_agreement', float('nan')):.3f}; flow mel max diff "
            f"{flow.get('mel_max_abs_diff', float('nan')):.2e}; waveform SNR {voc.get('snr_db', float('nan')):.1f} dB")
