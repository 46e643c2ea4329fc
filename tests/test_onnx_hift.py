"""Tests of the HiFT vocoder export: ORT vs the PyTorch vocoder, the streaming prefix property, a torch-free runtime."""

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from cosyvoice_onnx.config import HiFTConfig, ModelConfig
from cosyvoice_onnx.errors import ExportError
from cosyvoice_onnx.export.hift import export_hift
from cosyvoice_onnx.noise import HiftNoise
from cosyvoice_onnx.onnx_backend import hift as onnx_hift
from cosyvoice_onnx.onnx_backend.hift import OnnxVocoder
from cosyvoice_onnx.torch_backend.hift import F0_LOOK_RIGHT, CausalHiFT, TorchVocoder

HOP = 480


def tiny_config() -> ModelConfig:
    return ModelConfig(version=3, yaml_name="cosyvoice3.yaml", speech_tokenizer_file="speech_tokenizer_v3.onnx",
                       hift=HiFTConfig(base_channels=32, f0_cond_channels=32))


def random_mel(frames: int, seed: int = 2) -> np.ndarray:
    return (torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(seed)) * 2 - 5).numpy()


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def hift(cfg):
    """Random weights with Snake alphas away from 1 and an f0 head giving unvoiced frames and f0 up to ~480 Hz."""
    torch.manual_seed(0)
    model = CausalHiFT(cfg.hift).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.3, 3.0)
        model.f0_predictor.classifier.weight.mul_(4000)
        model.f0_predictor.classifier.bias.fill_(-300.0)
    return model


@pytest.fixture(scope="module")
def export_dir(hift, cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("hift_export")
    export_hift(hift, cfg, out)
    return out


@pytest.fixture(scope="module")
def noise(cfg):
    return HiftNoise(cfg)


@pytest.fixture(scope="module")
def onnx_vocoder(export_dir, cfg):
    return OnnxVocoder(export_dir, cfg, threads=1)


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    error = np.sum((test.astype(np.float64) - reference) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(error, 1e-30)))


def test_export_writes_two_loadable_graphs_with_dynamic_lengths(export_dir):
    assert sorted(p.name for p in export_dir.iterdir()) == ["hift_final.onnx", "hift_stream.onnx"]
    for name in ("hift_final", "hift_stream"):
        model = onnx.load(export_dir / f"{name}.onnx")
        assert model.ir_version <= 13
        onnx.checker.check_model(model)
        inputs = {i.name: i.type.tensor_type for i in model.graph.input}
        assert list(inputs) == ["mel", "sine_noise"] and [o.name for o in model.graph.output] == ["speech"]
        assert all(t.elem_type == onnx.TensorProto.FLOAT for t in inputs.values())
        assert [d.dim_value or d.dim_param for d in inputs["mel"].shape.dim] == [1, 80, "frames"]
        assert [d.dim_value or d.dim_param for d in inputs["sine_noise"].shape.dim] == [1, "samples", 9]
        ops = {node.op_type for node in model.graph.node}
        assert not ops & {"STFT", "DFT"}, "the STFT/iSTFT must be the DFT convolutions"


def test_f0_predictor_stays_in_float64(export_dir):
    model = onnx.load(export_dir / "hift_final.onnx")
    double_casts = [n for n in model.graph.node if n.op_type == "Cast"
                    and any(a.name == "to" and a.i == onnx.TensorProto.DOUBLE for a in n.attribute)]
    # The mel into the f0 predictor and the per-frame phase increments into the phase cumsum.
    assert len(double_casts) == 2
    assert {n.op_type for n in model.graph.node if n.op_type in ("MatMul", "CumSum")} == {"MatMul", "CumSum"}


@pytest.mark.parametrize("finalize", [True, False])
@pytest.mark.parametrize("frames", [20, 100, 500])
def test_waveform_matches_torch_vocoder(hift, onnx_vocoder, noise, finalize, frames):
    mel = random_mel(frames, seed=frames)
    sine_noise = noise.sine_noise(HOP * frames)  # what Token2Wav passes in both modes
    reference = TorchVocoder(hift, exact_fft=True).vocode(mel, finalize, sine_noise)
    f0 = hift.predict_f0(torch.from_numpy(mel), finalize)
    assert (f0 < hift.cfg.nsf_voiced_threshold).any() and (f0 > 100).any(), "want voiced and unvoiced frames"

    out = onnx_vocoder.vocode(mel, finalize, sine_noise)
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert out.shape[1] == HOP * (frames if finalize else frames - 8)
    assert np.abs(reference).max() > 1e-2
    # The contract asks for 40 dB. Measured ~128 dB at every length; a float32 phase cumsum or f0 predictor
    # in the graph drops T=500 to ~70 / ~91 dB, which this bound catches.
    assert snr_db(reference, out) > 105
    np.testing.assert_allclose(out, reference, rtol=0, atol=2e-6)


def test_stream_output_is_a_prefix_of_the_final_output(onnx_vocoder, noise):
    frames = 120
    mel = random_mel(frames, seed=7)
    final = onnx_vocoder.vocode(mel, True, noise.sine_noise(HOP * frames))
    assert final.shape == (1, HOP * frames)
    for end in (9, 37, 80, frames):
        partial = onnx_vocoder.vocode(mel[:, :, :end], False, noise.sine_noise(HOP * end))
        assert partial.shape == (1, HOP * (end - 8))
        np.testing.assert_allclose(partial, final[:, :partial.shape[1]], rtol=0, atol=1e-6)


def test_graph_needs_only_the_noise_samples_the_length_uses(export_dir, hift, cfg, noise):
    import onnxruntime as ort

    frames = 30
    mel = random_mel(frames, seed=3)
    for finalize, name in ((True, "hift_final"), (False, "hift_stream")):
        needed = hift.source_samples(frames, finalize)
        session = ort.InferenceSession(str(export_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        exact = session.run(None, {"mel": mel, "sine_noise": np.array(noise.sine_noise(needed))})[0]
        np.testing.assert_array_equal(exact, OnnxVocoder(export_dir, cfg, threads=1).vocode(
            mel, finalize, noise.sine_noise(HOP * frames)))
    assert onnx_hift.F0_LOOK_RIGHT == F0_LOOK_RIGHT


def test_every_precision_runs_the_fp32_graphs(export_dir, cfg, onnx_vocoder, noise):
    mel = random_mel(15, seed=5)
    sine_noise = noise.sine_noise(HOP * 15)
    fp32 = onnx_vocoder.vocode(mel, True, sine_noise)
    for precision in ("fp16", "int8"):
        vocoder = OnnxVocoder(export_dir, cfg, precision=precision, threads=1)
        np.testing.assert_array_equal(vocoder.vocode(mel, True, sine_noise), fp32)
    with pytest.raises(ValueError, match="precision"):
        OnnxVocoder(export_dir, cfg, precision="bf16")


def test_rejects_short_noise_too_few_frames_and_a_missing_export(onnx_vocoder, noise, cfg, tmp_path):
    with pytest.raises(ValueError, match="sine_noise"):
        onnx_vocoder.vocode(random_mel(10), True, noise.sine_noise(HOP * 10 - 1))
    with pytest.raises(ValueError, match="at least 8"):
        onnx_vocoder.vocode(random_mel(7), False, noise.sine_noise(HOP * 7))
    with pytest.raises(ExportError, match="hift_final.onnx"):
        OnnxVocoder(tmp_path, cfg)


def test_export_refuses_a_module_for_another_config(hift, tmp_path):
    with pytest.raises(ValueError, match="config"):
        export_hift(hift, ModelConfig(3, "cosyvoice3.yaml", "speech_tokenizer_v3.onnx"), tmp_path)


def test_runtime_runs_without_torch(export_dir, hift, tmp_path):
    frames = 25
    mel = random_mel(frames, seed=11)
    np.save(tmp_path / "mel.npy", mel)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import numpy as np
        from cosyvoice_onnx.config import HiFTConfig, ModelConfig
        from cosyvoice_onnx.noise import HiftNoise
        from cosyvoice_onnx.onnx_backend.hift import OnnxVocoder
        cfg = ModelConfig(3, "cosyvoice3.yaml", "speech_tokenizer_v3.onnx",
                          hift=HiFTConfig(base_channels=32, f0_cond_channels=32))
        vocoder = OnnxVocoder({str(export_dir)!r}, cfg, threads=1)
        mel = np.load({str(tmp_path / "mel.npy")!r})
        speech = vocoder.vocode(mel, False, HiftNoise(cfg).sine_noise({HOP * frames}))
        np.save({str(tmp_path / "speech.npy")!r}, speech)
        assert "torch" not in {{name.split(".")[0] for name, mod in sys.modules.items() if mod is not None}}
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    reference = TorchVocoder(hift).vocode(mel, False, HiftNoise(tiny_config()).sine_noise(HOP * frames))
    assert snr_db(reference, np.load(tmp_path / "speech.npy")) > 105
