"""PyTorch vs ONNX parity, stage by stage, from the same seed, tokens, noise and prompt."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..devices import Device
from ..plan import ExecutionPlan
from ..prompts import MODES
from ..sampling import GreedySampler, make_sampler

DEFAULT_TEXT = "Hello! This sentence checks that both backends say exactly the same thing."
DEFAULT_TRANSCRIPT = "This is the prompt clip."
TARGETS_FP32 = {"logits_max_abs_diff": 1e-3, "mel_max_abs_diff": 1e-3, "snr_db": 40.0}


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    n = min(reference.size, test.size)
    ref, err = reference[:n].astype(np.float64), reference[:n].astype(np.float64) - test[:n].astype(np.float64)
    noise = float(np.sum(err ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref ** 2) / noise))


def agreement(a: list[int], b: list[int]) -> float:
    """Share of positions (over the longer sequence) where both produced the same token."""
    n = max(len(a), len(b))
    return 1.0 if n == 0 else sum(x == y for x, y in zip(a, b)) / n


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(d.max()) if d.size else 0.0, float(d.mean()) if d.size else 0.0


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def compare_engines(ref, test, voice, text: str = DEFAULT_TEXT, seed: int = 0, max_tokens: int = 200) -> dict:
    """Runs both engines on the same inputs; `ref` is the PyTorch engine, `test` the ONNX one."""
    report: dict = {"text": text, "seed": seed, "backends": {"ref": str(ref.plan), "test": str(test.plan)}}
    mode = MODES["zero_shot"]
    text_ids, prompt_ids = ref.frontend.lm_inputs(mode, ref.frontend.text_segments(text)[0], voice.transcript, None)
    prompt_speech = voice.speech_tokens.reshape(-1)

    # LM: logits on identical inputs (teacher-forced), greedy agreement, free-sampling agreement.
    greedy_ref, t_ref = _timed(ref.generate_tokens, text_ids, prompt_ids, prompt_speech, GreedySampler(),
                               max_len=max_tokens)
    greedy_test, t_test = _timed(test.generate_tokens, text_ids, prompt_ids, prompt_speech, GreedySampler(),
                                 max_len=max_tokens)
    max_diffs, mean_diffs = [], []
    text_all = np.concatenate([prompt_ids, text_ids])
    logits_a, cache_a = ref.stages.lm.prefill(text_all, prompt_speech)
    logits_b, cache_b = test.stages.lm.prefill(text_all, prompt_speech)
    for token in greedy_ref[:50]:
        mx, mn = _diff(logits_a, logits_b)
        max_diffs.append(mx)
        mean_diffs.append(mn)
        logits_a, cache_a = ref.stages.lm.step(token, cache_a)
        logits_b, cache_b = test.stages.lm.step(token, cache_b)
    sampled_ref = ref.generate_tokens(text_ids, prompt_ids, prompt_speech, make_sampler("auto", seed, ref.cfg.llm),
                                      max_len=max_tokens)
    sampled_test = test.generate_tokens(text_ids, prompt_ids, prompt_speech, make_sampler("auto", seed, ref.cfg.llm),
                                        max_len=max_tokens)
    report["lm"] = {
        "logits_max_abs_diff": max(max_diffs), "logits_mean_abs_diff": float(np.mean(mean_diffs)),
        "greedy_identical": greedy_ref == greedy_test, "greedy_token_agreement": agreement(greedy_ref, greedy_test),
        "sampled_token_agreement": agreement(sampled_ref, sampled_test),
        "tokens": len(sampled_ref), "time_ref_s": t_ref, "time_test_s": t_test,
    }

    # Flow on the reference's sampled tokens, so the stage is compared on identical input.
    tokens = sampled_ref or greedy_ref
    args = (tokens, voice.speech_tokens, voice.mel, voice.embedding)
    mel_ref, tf_ref = _timed(ref.tokens_to_mel, *args)
    mel_test, tf_test = _timed(test.tokens_to_mel, *args)
    mx, mn = _diff(mel_ref, mel_test)
    report["flow"] = {"mel_max_abs_diff": mx, "mel_mean_abs_diff": mn, "frames": int(mel_ref.shape[2]),
                      "time_ref_s": tf_ref, "time_test_s": tf_test}

    # Vocoder on the reference mel; end to end on each backend's own mel.
    # The same seed gives both the same vocoder noise (CV2 draws it per call).
    wav_ref, tv_ref = _timed(ref.mel_to_audio, mel_ref, seed=seed)
    wav_test, tv_test = _timed(test.mel_to_audio, mel_ref, seed=seed)
    wav_test_e2e = test.mel_to_audio(mel_test, seed=seed)
    mx, _ = _diff(wav_ref, wav_test)
    report["vocoder"] = {"snr_db": snr_db(wav_ref[0], wav_test[0]), "max_abs_diff": mx,
                         "time_ref_s": tv_ref, "time_test_s": tv_test}
    report["end_to_end"] = {"snr_db": snr_db(wav_ref[0], wav_test_e2e[0]),
                            "duration_s": wav_ref.shape[1] / ref.sample_rate,
                            "speaker_cosine": speaker_cosine(ref, wav_ref[0], wav_test_e2e[0])}
    return report


def speaker_cosine(engine, a: np.ndarray, b: np.ndarray) -> float:
    """CAM++ embedding cosine of two 24 kHz waveforms (the model's own speaker encoder)."""
    from ..audio import resample

    ea = engine.frontend.speaker_embedding(resample(a, engine.sample_rate, 16000))[0]
    eb = engine.frontend.speaker_embedding(resample(b, engine.sample_rate, 16000))[0]
    return float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb) + 1e-12))


def targets_met(report: dict) -> dict[str, bool]:
    return {
        "lm_logits": report["lm"]["logits_max_abs_diff"] <= TARGETS_FP32["logits_max_abs_diff"],
        "lm_greedy_identical": bool(report["lm"]["greedy_identical"]),
        "flow_mel": report["flow"]["mel_max_abs_diff"] <= TARGETS_FP32["mel_max_abs_diff"],
        "waveform_snr": report["vocoder"]["snr_db"] >= TARGETS_FP32["snr_db"],
    }


def test_backend_for(device, test_backend: str | None = None) -> str:
    """The backend under test: as asked, else PyTorch when a GPU is named (`cuda`, `cuda:N`: precisions on the GPU
    against fp32 on the CPU), ONNX otherwise (the exported graphs against PyTorch; `auto` puts them on the CUDA
    provider where onnxruntime has it)."""
    from ..devices import parse_device

    if test_backend:
        return test_backend
    return "torch" if parse_device(device).is_cuda else "onnx"


def parity_plans(precision: str = "fp32", device: str | Device | None = "auto",
                 test_backend: str | None = None) -> tuple[ExecutionPlan, ExecutionPlan]:
    """(reference, test): the reference is every stage on PyTorch fp32 on the CPU; the test engine runs
    `test_backend_for(device, test_backend)` at `precision` on `device`."""
    backend = test_backend_for(device, test_backend)
    return ExecutionPlan.everywhere("torch", device="cpu"), ExecutionPlan.everywhere(backend, precision, device)


def run_parity(model_dir: str | Path, export_dir: str | Path | None = None, precision: str = "fp32",
               prompt_wav=None, prompt_text: str = DEFAULT_TRANSCRIPT, text: str = DEFAULT_TEXT, seed: int = 0,
               max_tokens: int = 200, llm_variant: str = "base", device: str | Device | None = "auto",
               test_backend: str | None = None) -> dict:
    """The reference is always PyTorch fp32 on the CPU; the test engine runs `test_backend` (see
    test_backend_for) at `precision` on `device`."""
    from ..engine import CosyVoice
    from .tiny import synthetic_voice

    ref_plan, test_plan = parity_plans(precision, device, test_backend)
    ref = CosyVoice(model_dir, backend=ref_plan, llm_variant=llm_variant)
    test = CosyVoice(model_dir, backend=test_plan, llm_variant=llm_variant, export_dir=export_dir)
    if prompt_wav is None:
        prompt_wav = (ref.sample_rate, synthetic_voice(4.0, ref.sample_rate, seed=1))
    voice = ref.prompt_from_audio(prompt_wav, prompt_text)
    report = compare_engines(ref, test, voice, text=text, seed=seed, max_tokens=max_tokens)
    report["precision"] = precision
    report["device"] = str(test.plan.lm.device)
    if precision == "fp32" and test.plan.lm.backend == "onnx":
        report["targets_met"] = targets_met(report)
    return report


def quick_parity(model_dir, export_dir, precision: str, llm_variant: str = "base") -> dict:
    """The short check the exporter records in the manifest right after export."""
    return run_parity(model_dir, export_dir, precision, max_tokens=60, llm_variant=llm_variant, test_backend="onnx")


def format_report(report: dict) -> str:
    lm, fl, vo, e2e = report["lm"], report["flow"], report["vocoder"], report["end_to_end"]
    ref_name, test_names = report["backends"]["ref"], report["backends"]["test"]
    test_name = "/".join(sorted(set(test_names.values()))) if isinstance(test_names, dict) else str(test_names)
    if report.get("device"):
        test_name += f" on {report['device']}"
    rows = [
        ("stage", "metric", "value", f"{ref_name} s", f"{test_name} s"),
        ("LM", "logits max|mean abs diff", f"{lm['logits_max_abs_diff']:.2e} | {lm['logits_mean_abs_diff']:.2e}",
         f"{lm['time_ref_s']:.2f}", f"{lm['time_test_s']:.2f}"),
        ("LM", "greedy identical / agreement", f"{lm['greedy_identical']} / {lm['greedy_token_agreement']:.3f}", "", ""),
        ("LM", "sampled token agreement", f"{lm['sampled_token_agreement']:.3f} ({lm['tokens']} tokens)", "", ""),
        ("flow", "mel max|mean abs diff", f"{fl['mel_max_abs_diff']:.2e} | {fl['mel_mean_abs_diff']:.2e}",
         f"{fl['time_ref_s']:.2f}", f"{fl['time_test_s']:.2f}"),
        ("vocoder", "waveform SNR / max diff", f"{vo['snr_db']:.1f} dB / {vo['max_abs_diff']:.2e}",
         f"{vo['time_ref_s']:.2f}", f"{vo['time_test_s']:.2f}"),
        ("e2e", "SNR / speaker cosine / duration",
         f"{e2e['snr_db']:.1f} dB / {e2e['speaker_cosine']:.4f} / {e2e['duration_s']:.2f} s", "", ""),
    ]
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    if "targets_met" in report:
        lines.append("fp32 targets: " + ", ".join(f"{k} {'OK' if v else 'MISSED'}"
                                                  for k, v in report["targets_met"].items()))
    return "\n".join(lines)
