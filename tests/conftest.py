"""Shared fixtures: tiny synthetic model folders (CV3 by default, any release on request) and a voice-like prompt
clip, once per test session."""

import contextlib
import functools
import os
import shutil
import socket
import subprocess
import sys
import time

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
def tiny_model_of(tmp_path_factory):
    """tiny_model_of(version): the tiny model folder of that release, made on first use, once per session."""
    from cosyvoice_onnx.tools.tiny import make_tiny_model

    @functools.cache
    def of(version: int):
        return make_tiny_model(tmp_path_factory.mktemp("models") / f"tiny-cv{version}", version=version, seed=0)

    return of


@pytest.fixture(scope="session")
def tiny_export_of(tiny_model_of, tmp_path_factory):
    """tiny_export_of(version): the fp32 ONNX export (no parity run) of that release's tiny model, made once, in a
    copy of the model folder: the shared tiny folders stay without an export whatever order the tests run in."""
    from cosyvoice_onnx.export.exporter import export_model

    @functools.cache
    def of(version: int):
        model = shutil.copytree(tiny_model_of(version), tmp_path_factory.mktemp("exported") / f"tiny-cv{version}")
        return export_model(model, precisions="fp32", parity=False, progress=lambda _: None)

    return of


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_of):
    return tiny_model_of(3)


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


@pytest.fixture(scope="session")
def free_port():
    """free_port(): a port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    def find() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return find


@pytest.fixture(scope="session")
def serve_process(free_port):
    """serve_process(args, data_dir, start_s): `cosyvoice-onnx serve ARGS --port P` as its own process, as a
    context manager giving its base URL once /healthz answers; its log is DATA_DIR/server.log; stopped by its own
    handle (SIGTERM, then SIGKILL after 60 s)."""
    @contextlib.contextmanager
    def run(args: list[str], data_dir, start_s: float = 300):
        import httpx

        port = free_port()
        with open(data_dir / "server.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cosyvoice_onnx", "serve", *args, "--port", str(port)],
                                    stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            url = f"http://127.0.0.1:{port}"
            try:
                deadline = time.monotonic() + start_s
                while True:
                    assert proc.poll() is None, (data_dir / "server.log").read_text(errors="replace")[-3000:]
                    try:
                        if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert time.monotonic() < deadline, f"the server did not start within {start_s:g} s"
                    time.sleep(0.5)
                yield url
            finally:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return run


@pytest.fixture(scope="session")
def keyed_client():
    """keyed_client(url, key, timeout_s): an httpx client of the speech API that sends the key with every request
    (every wait bounded by timeout_s, so a hang fails the test instead of stalling it)."""
    def make(url: str, key: str, timeout_s: float):
        import httpx

        return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)
    return make


@pytest.fixture(scope="session")
def upload_voice(prompt_wav):
    """upload_voice(api, name, transcript): the prompt clip saved as voice NAME through the speech API's
    POST /v1/voices (201 checked); returns the name."""
    def upload(api, name: str, transcript: str) -> str:
        res = api.post("/v1/voices", files={"file": ("me.wav", prompt_wav.read_bytes(), "audio/wav")},
                       data={"name": name, "transcript": transcript})
        assert res.status_code == 201, res.text
        assert res.json()["name"] == name
        return name
    return upload


@pytest.fixture(scope="module")
def ray_cluster():
    """A private two-CPU Ray on this machine for one test module: (ray, its GCS address); shut down afterwards."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'cosyvoice-onnx[ray]')")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 << 20,
             log_to_driver=False)
    try:
        yield ray, ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
