"""Shared fixtures: one tiny synthetic CV3 model folder and a voice-like prompt clip per test session."""

import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from cosyvoice_onnx.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-cv3", seed=0)


@pytest.fixture(scope="session")
def prompt_wav(tmp_path_factory):
    from cosyvoice_onnx.audio import write_wav
    from cosyvoice_onnx.tiny import synthetic_voice

    path = tmp_path_factory.mktemp("audio") / "prompt.wav"
    write_wav(path, synthetic_voice(4.0, 24000, seed=1), 24000)
    return path


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    import torch

    from cosyvoice_onnx import CosyVoice

    torch.set_num_threads(1)  # tiny graphs: thread hand-offs cost more than they save on a shared 2-core box
    return CosyVoice(tiny_model_dir)
