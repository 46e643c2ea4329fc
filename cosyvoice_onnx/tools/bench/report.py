"""The per-stage table: median times, their multiples of the bound, PyTorch/ONNX ratios."""

from __future__ import annotations

from ...config import ModelConfig
from .stages import INT8_LM_ONLY, STAGES
from .workload import Workload

COLUMN_NAMES = {"torch": "PyTorch", "onnx": "ONNX fp32", "onnx:int8": "ONNX int8", INT8_LM_ONLY: "ONNX int8 LM",
                "onnx:fp16": "ONNX fp16", "torch:bf16": "PyTorch bf16", "torch:fp16": "PyTorch fp16"}
# Which bound applies to a column: the int8-LM column's flow is fp32, so its bound is neither row; none is shown.
COLUMN_BOUNDS = {"torch": "fp32", "onnx": "fp32", "onnx:int8": "int8"}


def _seconds(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def stage_labels(cfg: ModelConfig, work: Workload) -> dict[str, str]:
    first = work.stream_first_tokens(cfg)
    token_rate = cfg.features.token_frame_rate
    audio = work.flow_tokens / token_rate
    frames = (work.flow_prompt_tokens + work.flow_tokens) * cfg.flow.token_mel_ratio
    return {
        "lm_prefill": f"LM prefill, {work.prefill_len} positions",
        "lm_decode": f"LM decode, per token (x{work.decode_tokens})",
        "flow": f"flow {audio:g} s ({frames} frames x{cfg.flow.n_timesteps} x2)",
        "vocoder": f"vocoder {work.vocoder_frames / 50:g} s ({work.vocoder_frames} frames)",
        "e2e": f"end to end, {audio:g} s of audio",
        "stream": f"streamed request, {audio:g} s (LM decoding ahead)",
        "stream_serial": f"streamed request, {audio:g} s (serial)",
        "ttfa": f"streaming first audio ({first} tokens, serial)",
        "ttfa_first_chunk": f"first audio, first_chunk_tokens={work.first_chunk_tokens} "
                            f"({work.stream_first_tokens(cfg, work.first_chunk_tokens)} tokens)",
        "convert": f"voice conversion, {audio:g} s source ({work.flow_prompt_tokens / token_rate:g} s prompt)",
    }


def format_report(report: dict) -> str:
    """The table: per stage and backend the median time and its multiple of the bound, then PyTorch/ONNX ratios."""
    machine, rates = report["machine"], report["rates"]
    backends = report["backends"]
    onnx_names = [name for name in backends if name != "torch"]
    lines = [
        f"model: {report['model']}; {report['threads']} threads"
        f"{'' if report.get('ort_spinning', True) else ' (ONNX Runtime spinning off)'}; {machine.get('cpu')} "
        f"({machine.get('usable_cores', machine.get('cores'))} usable cores, {machine.get('ram_gb')} GB RAM, "
        f"{' '.join(machine.get('isa', []))})",
        f"python {machine['python']}, numpy {machine['numpy']}, onnxruntime {machine['onnxruntime']}, "
        f"torch {machine['torch']}; load average {'/'.join(f'{x:.1f}' for x in machine['load_average'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in machine.get('load_average_after', []))} after",
        f"this machine: ORT sgemm {rates['ort_sgemm_gflops']:.0f} GFLOP/s, numpy sgemm "
        f"{rates['numpy_sgemm_gflops']:.0f} GFLOP/s, ORT dynamic int8 GEMM {rates['ort_int8_gops']:.0f} GOP/s "
        f"({'x'.join(map(str, rates['gemm_shape']))}); read {rates['read_gbps']:.1f} GB/s, copy "
        f"{rates['copy_gbps']:.1f} GB/s (best of runs before and after the backends)",
        "cells: median time (its multiple of the lower bound); bound = max(FLOPs / GEMM rate, bytes / read bandwidth)",
        "",
    ]
    header = ["stage", "GFLOP", "GB fp32", "bound fp32", "bound int8"] + [
        COLUMN_NAMES.get(name, name) for name in backends] + [
        f"PyTorch/{COLUMN_NAMES.get(name, name)}" for name in onnx_names]
    rows = [header]
    labels = report["labels"]
    # A --stages run leaves out the rows no column timed.
    for stage in (s for s in STAGES if any(s in b for b in backends.values())):
        fp32 = report["bounds"]["fp32"][stage]
        row = [labels[stage], _number(fp32["gflop"], 1), _number(fp32["gbytes"], 2)]
        row += [_seconds(report["bounds"][p][stage]["seconds"]) for p in ("fp32", "int8")]
        for name in backends:
            measured = backends[name].get(stage)
            if measured is None:
                row.append("-")
                continue
            cell = _seconds(measured["median_s"])
            # The bounds describe this CPU; a run on the GPU, which the bench does not measure, gets none.
            on_gpu = str(report.get("device", "cpu")).startswith("cuda")
            bound = None if on_gpu else report["bounds"].get(COLUMN_BOUNDS.get(name), {}).get(stage, {}).get("seconds")
            if bound:
                cell += f" ({measured['median_s'] / bound:.1f}x)"
            if stage in ("e2e", "convert") and "audio_s" in measured:
                cell += f" RTF {measured['median_s'] / measured['audio_s']:.2f}"
            if "same_audio" in measured:
                cell += ", same audio" if measured["same_audio"] else ", AUDIO DIFFERS"
            if "snr_db" in measured:
                cell += f", SNR {measured['snr_db']:.1f} dB vs official"
            row.append(cell)
        torch_result = backends.get("torch", {}).get(stage)
        for name in onnx_names:
            other = backends[name].get(stage)
            row.append("-" if torch_result is None or other is None
                       else f"{torch_result['median_s'] / other['median_s']:.2f}x")
        rows.append(row)
    rows.append(["peak RSS", "", "", "", ""] + [f"{r['peak_rss_bytes'] / 2**30:.2f} GiB" if "peak_rss_bytes" in r
                                                 else "-" for r in backends.values()] + [""] * len(onnx_names))
    rows.append(["load time", "", "", "", ""] + [_seconds(r["load_s"]) if "load_s" in r else "-"
                                                  for r in backends.values()] + [""] * len(onnx_names))
    if any("peak_gpu_bytes" in r for r in backends.values()):
        rows.append(["peak GPU memory", "", "", "", ""] + [
            f"{r['peak_gpu_bytes'] / 2**30:.2f} GiB" if "peak_gpu_bytes" in r else "-" for r in backends.values()]
            + [""] * len(onnx_names))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += [f"{COLUMN_NAMES.get(name, name)}: {r['error']}" for name, r in backends.items() if "error" in r]
    lines.append("(ONNX int8: int8 LM and flow estimator, fp32 vocoder (timed under ONNX fp32); ONNX int8 LM: the "
                 "int8 LM with the fp32 flow and vocoder, timed end to end only. Streamed rows: 'same audio' = the "
                 "LM-ahead stream equals the serial one; SNR = the first-chunk option's whole stream against the "
                 "official schedule's)")
    return "\n".join(lines)



def format_scaling(reports: list[dict]) -> str:
    """One table for a `--threads` sweep: per stage and backend the median at each thread count, then the speed-up
    from the fewest to the most threads (all counts come from the same run, so the ratios compare like with like)."""
    counts = [r["threads"] for r in reports]
    names = list(dict.fromkeys(name for r in reports for name in r["backends"]))
    header = ["stage"] + [f"{COLUMN_NAMES.get(n, n)} @{c}" for n in names for c in counts] + [
        f"{COLUMN_NAMES.get(n, n)} {counts[0]}->{counts[-1]}" for n in names]
    rows = [header]
    labels = reports[0]["labels"]
    for stage in (s for s in STAGES if any(s in b for r in reports for b in r["backends"].values())):
        row = [labels[stage]]
        medians = {n: [r["backends"].get(n, {}).get(stage, {}).get("median_s") for r in reports] for n in names}
        for name in names:
            row += [_seconds(m) if m is not None else "-" for m in medians[name]]
        for name in names:
            first, last = medians[name][0], medians[name][-1]
            row.append(f"{first / last:.2f}x" if first and last else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"scaling over {', '.join(map(str, counts))} threads (cells: median; last columns: speed-up from "
             f"{counts[0]} to {counts[-1]} threads)"]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
