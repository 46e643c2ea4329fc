"""Shared fixtures: one tiny synthetic CV3 model folder and a voice-like prompt clip per test session."""

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def single_torch_thread():
    """Test tensors are tiny: extra intra-op threads only spin against each other on a shared 2-core box."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from cosyvoice_onnx.tools.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-cv3", seed=0)


@pytest.fixture(scope="session")
def prompt_wav(tmp_path_factory):
    from cosyvoice_onnx.audio import write_wav
    from cosyvoice_onnx.tools.tiny import synthetic_voice

    path = tmp_path_factory.mktemp("audio") / "prompt.wav"
    write_wav(path, synthetic_voice(4.0, 24000, seed=1), 24000)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from cosyvoice_onnx import CosyVoice

    return CosyVoice(tiny_model_dir)
