"""The whole ONNX workflow on a tiny CV3 folder: export, manifest, synth, parity, per-stage swap, staleness; tests
parametrized by release also run on that release's tiny folder."""

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from cosyvoice_onnx.releases import RELEASES
from cosyvoice_onnx.errors import ExportError

TRANSCRIPT = "hello there this is a test"
TEXT = "Hello world, this is a tiny test."
EXPORT_EVENTS = []


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    """A private copy of the tiny model with an fp32 + int8 export in <model>/onnx."""
    from cosyvoice_onnx.export.exporter import export_model

    model = tmp_path_factory.mktemp("onnx") / "tiny"
    shutil.copytree(tiny_model_dir, model)
    messages = []
    export_model(model, precisions="fp32,int8", progress=messages.append, on_event=EXPORT_EVENTS.append)
    return model, messages


def test_export_writes_every_stage_and_a_manifest(exported):
    model, messages = exported
    manifest = json.loads((model / "onnx" / "manifest.json").read_text())
    assert set(manifest["precisions"]) == {"fp32", "int8"}
    for precision in ("fp32", "int8"):
        assert set(manifest["precisions"][precision]) == {"lm", "flow", "vocoder"}
        for names in manifest["precisions"][precision].values():
            assert names and all((model / "onnx" / n).exists() for n in names)
    assert any(".int8." in n for n in manifest["precisions"]["int8"]["lm"])
    assert manifest["sources"]["llm"]["sha256"] and manifest["sources"]["flow"]["bytes"] > 0
    assert any("[lm] exporting" in m for m in messages) and any("[parity]" in m for m in messages)


def test_export_reports_progress_as_events(exported):
    steps = 3 * 2 + 2  # three stages at two precisions, then one parity run per precision
    assert [(e.stage, e.done, e.total) for e in EXPORT_EVENTS] == [("export", i, steps) for i in range(steps + 1)]
    assert EXPORT_EVENTS[0].message == "[lm] exporting fp32" and EXPORT_EVENTS[-1].fraction == 1.0


def test_fp32_parity_recorded_at_export_meets_the_targets(exported):
    model, _ = exported
    parity = json.loads((model / "onnx" / "manifest.json").read_text())["parity"]
    fp32 = parity["fp32"]
    assert fp32["lm"]["logits_max_abs_diff"] <= 1e-3
    assert fp32["lm"]["greedy_identical"]
    assert fp32["flow"]["mel_max_abs_diff"] <= 1e-3
    assert fp32["vocoder"]["snr_db"] >= 40
    assert all(fp32["targets_met"].values())
    assert "speaker_cosine" in parity["int8"]["end_to_end"]


@pytest.fixture
def exported_of(exported, tiny_export_of):
    """exported_of(version): a tiny folder of that release with an ONNX export (this module's own, where it is)."""
    from cosyvoice_onnx.config_readers import load_config

    model, _ = exported
    return lambda version: model if load_config(model).version == version else tiny_export_of(version).parent


@pytest.mark.parametrize("version", sorted(RELEASES, reverse=True), ids=lambda v: f"CV{v}")
def test_onnx_engine_synthesizes_without_torch(exported_of, version, prompt_wav, tmp_path):
    model = exported_of(version)
    out = tmp_path / "onnx.wav"
    script = textwrap.dedent(f"""
        import sys
        sys.modules['torch'] = None  # any import of torch now fails
        from cosyvoice_onnx import CosyVoice, save_wav
        tts = CosyVoice({str(model)!r}, backend='onnx')
        assert tts.cfg.version == {version}
        audio = tts.synthesize({TEXT!r}, prompt_wav={str(prompt_wav)!r}, prompt_text={TRANSCRIPT!r}, seed=1,
                               exact_len=40)
        chunks = list(tts.synthesize({TEXT!r}, prompt_wav={str(prompt_wav)!r}, prompt_text={TRANSCRIPT!r},
                                     seed=1, exact_len=60, stream=True))
        assert sum(len(c) for c in chunks) == 60 * 960, [len(c) for c in chunks]
        save_wav({str(out)!r}, audio, tts.sample_rate)
        assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules if sys.modules[m] is not None)
        print('ok', len(audio))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ok 38400" in res.stdout


def test_onnx_and_torch_give_the_same_audio_for_the_same_tokens(exported, prompt_wav):
    from cosyvoice_onnx import CosyVoice
    from cosyvoice_onnx.tools.parity import snr_db

    model, _ = exported
    ref, test = CosyVoice(model, backend="torch"), CosyVoice(model, backend="onnx")
    voice = ref.prompt_from_audio(prompt_wav, TRANSCRIPT)
    a = ref.synthesize(TEXT, voice=voice, seed=3, exact_len=50, sampler="torch")
    b = test.synthesize(TEXT, voice=voice, seed=3, exact_len=50, sampler="torch")
    assert a.shape == b.shape and snr_db(a, b) >= 40


def test_onnx_streaming_skips_a_segment_without_speech_tokens(exported, prompt_wav):
    from cosyvoice_onnx import CosyVoice

    model, _ = exported
    tts = CosyVoice(model, backend="onnx")
    voice = tts.prompt_from_audio(prompt_wav, TRANSCRIPT)
    assert tts.synthesize(TEXT, voice=voice, seed=1, max_len=0).size == 0
    assert sum(len(c) for c in tts.synthesize(TEXT, voice=voice, seed=1, max_len=0, stream=True)) == 0


def test_per_stage_backend_choice(exported):
    from cosyvoice_onnx import CosyVoice

    model, _ = exported
    tts = CosyVoice(model, backend="lm=onnx:int8,flow=torch,vocoder=onnx")
    assert (tts.stages.lm.backend, tts.stages.flow.backend, tts.stages.vocoder.backend) == ("onnx", "torch", "onnx")
    assert str(tts.plan) == "lm=onnx:int8,flow=torch,vocoder=onnx" and tts.stages.plan is tts.plan
    assert tts.stages.lm.precision == "int8"


def test_cli_synth_with_onnx_backend_and_parity_json(exported, prompt_wav, tmp_path):
    model, _ = exported
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "x.wav"
    res = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "synth", "--model", str(model), "--backend", "onnx:int8",
                          "--prompt-wav", str(prompt_wav), "--prompt-text", TRANSCRIPT, "--text", TEXT, "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    report_path = tmp_path / "parity.json"
    res = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "parity", "--model", str(model), "--max-tokens", "40",
                          "--json", str(report_path)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["flow"]["mel_max_abs_diff"] <= 1e-3 and "waveform SNR" in res.stdout


def test_missing_export_says_how_to_make_one(tiny_model_dir, tmp_path):
    from cosyvoice_onnx import CosyVoice

    with pytest.raises(ExportError, match="cosyvoice-onnx export"):
        CosyVoice(tiny_model_dir, backend="onnx", export_dir=tmp_path / "nothing")


def test_missing_precision_is_reported(exported):
    from cosyvoice_onnx import CosyVoice

    model, _ = exported
    with pytest.raises(ExportError, match="no fp16 export"):
        CosyVoice(model, backend="onnx:fp16")


def test_stale_export_is_refused(exported, tmp_path):
    from cosyvoice_onnx import CosyVoice

    model, _ = exported
    stale = tmp_path / "stale"
    shutil.copytree(model, stale)
    state = torch.load(stale / "flow.pt", weights_only=True)
    state["spk_embed_affine_layer.bias"] += 1.0  # same size, different weights: a retrained checkpoint
    torch.save(state, stale / "flow.pt")
    assert (stale / "flow.pt").stat().st_size == (model / "flow.pt").stat().st_size
    with pytest.raises(ExportError, match="stale export: flow.pt"):
        CosyVoice(stale, backend="onnx")
    CosyVoice(stale, backend="lm=onnx,flow=torch,vocoder=onnx")  # stages that did not change still load


def test_corrupt_onnx_file_is_reported(exported, tmp_path):
    from cosyvoice_onnx import CosyVoice

    model, _ = exported
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    manifest = json.loads((broken / "onnx" / "manifest.json").read_text())
    victim = broken / "onnx" / manifest["precisions"]["fp32"]["vocoder"][0]
    size = victim.stat().st_size
    victim.write_bytes(np.random.default_rng(0).bytes(size))
    with pytest.raises(ExportError, match=victim.name):
        CosyVoice(broken, backend="onnx")


def test_export_from_an_older_format_is_refused(exported, tmp_path):
    from cosyvoice_onnx import CosyVoice

    model, _ = exported
    old = tmp_path / "old"
    shutil.copytree(model, old)
    manifest_path = old / "onnx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] -= 1  # what an export by the previous release says of itself
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="re-export: `cosyvoice-onnx export"):
        CosyVoice(old, backend="onnx:int8")


@pytest.mark.parametrize("value, expected", [(None, "1"), ("0", "0"), ("off", "0"), ("ON", "1")])
def test_ort_spinning_follows_cosyvoice_ort_spin(tiny_export_of, monkeypatch, value, expected):
    from cosyvoice_onnx.onnx_backend.session import make_session

    if value is None:
        monkeypatch.delenv("COSYVOICE_ORT_SPIN", raising=False)
    else:
        monkeypatch.setenv("COSYVOICE_ORT_SPIN", value)
    session = make_session(tiny_export_of(3) / "flow_encoder.onnx", threads=1, device="cpu")
    assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == expected


def test_a_bad_cosyvoice_ort_spin_is_a_clear_error(tiny_export_of, monkeypatch):
    from cosyvoice_onnx.errors import InputError
    from cosyvoice_onnx.onnx_backend.session import make_session

    monkeypatch.setenv("COSYVOICE_ORT_SPIN", "maybe")
    with pytest.raises(InputError, match="COSYVOICE_ORT_SPIN='maybe': use 1/on or 0/off"):
        make_session(tiny_export_of(3) / "flow_encoder.onnx", threads=1, device="cpu")
