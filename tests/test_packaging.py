"""Fresh installs of the built wheel: the torch-free core synthesizes with an exported model, and the studio
extra serves the studio. Each test makes its own venv and installs from the package registry (pip's cache makes
repeats fast); they are skipped, with the reason, only when the registry cannot be reached."""

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parent.parent
TORCH_CPU_INDEX = os.environ.get("COSYVOICE_TORCH_CPU_INDEX", "https://download.pytorch.org/whl/cpu")
PIP_NETWORK = ["--timeout", "30", "--retries", "2"]
NETWORK_ERRORS = ("Failed to establish a new connection", "Temporary failure in name resolution",
                  "Name or service not known", "Network is unreachable", "Max retries exceeded", "timed out")


def clean_env() -> dict:
    """The test's environment without PYTHONPATH, so a venv runs what was installed into it, not this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def run(cmd, timeout, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=clean_env(),
                          **kwargs)


def pip_install(venv: Path, *args, timeout: int) -> None:
    # --no-compile: these venvs live for one test, so byte-compiling torch and gradio would be wasted time.
    res = run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-compile", *PIP_NETWORK, *args],
              timeout=timeout)
    if res.returncode != 0:
        if any(e in res.stdout + res.stderr for e in NETWORK_ERRORS):
            pytest.skip(f"package registry unreachable: {res.stderr.strip().splitlines()[-1]}")
        pytest.fail(f"pip install {' '.join(args)} failed:\n{res.stderr[-3000:]}")


def fresh_venv(path: Path) -> Path:
    res = run([sys.executable, "-m", "venv", path], timeout=120)
    assert res.returncode == 0, res.stderr
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, so the build leaves nothing in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "cosyvoice_onnx", src / "cosyvoice_onnx", ignore=shutil.ignore_patterns("__pycache__"))
    res = run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", *PIP_NETWORK, "-w", work / "dist", src],
              timeout=300)
    if res.returncode != 0 and any(e in res.stderr for e in NETWORK_ERRORS):
        pytest.skip(f"package registry unreachable (building needs setuptools): {res.stderr.strip()[-300:]}")
    assert res.returncode == 0, res.stderr[-3000:]
    (built,) = (work / "dist").glob("cosyvoice_onnx-*.whl")
    return built


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model with its fp32 ONNX export, made with this (torch) environment."""
    from cosyvoice_onnx.export.exporter import export_model

    model = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("packaging-model") / "tiny")
    export_model(model, precisions="fp32", progress=lambda message: None)
    return model


def test_core_wheel_synthesizes_with_onnx_and_without_torch(wheel, exported_model, prompt_wav, tmp_path):
    venv = fresh_venv(tmp_path / "core-venv")
    pip_install(venv, wheel, timeout=600)

    res = run([venv / "bin" / "python", "-c", "import torch"], timeout=60)
    assert res.returncode != 0 and "No module named 'torch'" in res.stderr, "the core install pulled in torch"

    out = tmp_path / "out.wav"
    res = run([venv / "bin" / "cosyvoice-onnx", "synth", "--model", exported_model, "--backend", "onnx",
               "--prompt-wav", prompt_wav, "--prompt-text", "hello there this is a test",
               "--text", "Hello world, this is a tiny test.", "--seed", "1", "--out", out], timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 24000 and audio.ndim == 1 and len(audio) > 0.5 * rate
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def torch_pin() -> list[str]:
    """pip arguments that keep the venv's torch the build this environment runs (CPU, or whatever run.sh chose),
    rather than the registry's default, which on Linux x86_64 is the multi-GB CUDA build."""
    import torch

    args = []
    if "+cpu" in torch.__version__:
        try:
            urllib.request.urlopen(f"{TORCH_CPU_INDEX}/torch/", timeout=5)
            args = ["--extra-index-url", TORCH_CPU_INDEX]
        except (urllib.error.URLError, OSError):
            pass  # then it must come from the registry or pip's configuration (find-links), as it did here
    return [*args, f"torch=={torch.__version__}"]


def test_studio_extra_serves_the_studio(wheel, tiny_model_dir, tmp_path, free_port):
    venv = fresh_venv(tmp_path / "studio-venv")
    pip_install(venv, f"{wheel}[studio,torch]", *torch_pin(), timeout=900)

    # app.py is the launcher beside the package; run a copy so the installed package, not the checkout, is used.
    shutil.copy(ROOT / "app.py", tmp_path / "app.py")
    port = free_port()
    log = tmp_path / "studio.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen([str(venv / "bin" / "python"), "app.py", "--model", str(tiny_model_dir),
                                 "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data")],
                                cwd=tmp_path, env=clean_env(), stdout=sink, stderr=subprocess.STDOUT)
    try:
        status, deadline = None, time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    status = response.status
                break
            except (urllib.error.URLError, OSError):
                time.sleep(1)
        assert status == 200, f"studio did not answer (exit code {proc.poll()}):\n{log.read_text()[-3000:]}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
