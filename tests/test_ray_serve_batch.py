"""`serve --ray --batch N`: a replica on a local Ray cluster batches the LM decode steps of its concurrent requests,
and each request still gets the audio the local engine makes for it alone."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "ray-batch-key"
VOICE = "alice"
TRANSCRIPT = "hello there this is a test"
TEXT = "Hello world, this is a tiny test."
MAX_LEN = 30
REQUEST_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_model_dir, tmp_path_factory, serve_process):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'cosyvoice-onnx[ray]')")
    _, address = ray_cluster
    data = tmp_path_factory.mktemp("ray-batch-data")
    with serve_process(["--model", str(tiny_model_dir), "--ray", address, "--replicas", "1", "--batch", "2",
                        "--data-dir", str(data), "--api-key", KEY], data, start_s=240) as url:
        yield url, data


@pytest.fixture(scope="module")
def api(server, keyed_client):
    with keyed_client(server[0], KEY, REQUEST_TIMEOUT_S) as client:
        yield client


def _batched_steps() -> int:
    """The replica's own count of LM steps that ran with more than one request in them."""
    from ray import serve

    from cosyvoice_onnx.scale.serve_ray import APP_NAME

    return serve.get_app_handle(APP_NAME).describe.remote().result(timeout_s=60).unwrap()["batched_steps"]


def test_a_replica_batches_concurrent_requests_and_each_gets_its_solo_audio(api, server, upload_voice,
                                                                             tiny_engine):
    from cosyvoice_onnx.audio import to_int16
    from cosyvoice_onnx.request import SynthesisRequest

    upload_voice(api, VOICE, TRANSCRIPT)
    saved = tiny_engine.voice_store(server[1] / "voices").load(VOICE)
    seeds = [1, 2, 3, 4]
    solo = [to_int16(tiny_engine.synthesize(SynthesisRequest(text=TEXT, voice=saved, seed=seed,
                                                             decode_options={"max_len": MAX_LEN})).audio)
            for seed in seeds]
    before = _batched_steps()

    def speak(seed: int):
        return api.post("/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": VOICE, "seed": seed,
                                                  "max_len": MAX_LEN, "response_format": "pcm"})

    with ThreadPoolExecutor(len(seeds)) as pool:
        replies = list(pool.map(speak, seeds))
    for seed, reply, want in zip(seeds, replies, solo):
        assert reply.status_code == 200, reply.text
        got = np.frombuffer(reply.content, dtype="<i2")
        # A batched product may round the last float32 bit differently: at most one step of 16-bit audio.
        assert len(got) == len(want) and np.abs(got.astype(int) - want).max(initial=0) <= 1, f"seed {seed}"
    assert _batched_steps() > before, "no decode step of the replica ran batched"
