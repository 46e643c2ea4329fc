"""`cosyvoice-onnx serve --ray`: the speech API in front of two engine replicas on a local Ray cluster, driven by
httpx and the `openai` client. Both replicas serve, the audio equals the local engine's for the same seed, engine
errors keep their status across Ray, and a replica killed under load costs no request a hang: each one is
answered with its audio (retried on the other replica) or a 5xx JSON error."""

import io
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "ray-key"
VOICE = "alice"
TRANSCRIPT = "hello there this is a test"
TEXT = "Hello world, this is a tiny test."
MAX_LEN = 30
REQUEST_TIMEOUT_S = 120      # every client wait is bounded: a hang fails the test instead of stalling it


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_model_dir, tmp_path_factory, serve_process):
    """`serve --ray ADDRESS --replicas 2` as its own process: base URL and data folder. On SIGTERM the server
    deletes its Serve application; the cluster goes with `ray_cluster`."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'cosyvoice-onnx[ray]')")
    _, address = ray_cluster
    data = tmp_path_factory.mktemp("ray-serve-data")
    with serve_process(["--model", str(tiny_model_dir), "--ray", address, "--replicas", "2", "--concurrency", "1",
                        "--data-dir", str(data), "--api-key", KEY, "--max-queue", "32"], data, start_s=240) as url:
        yield url, data


@pytest.fixture(scope="module")
def api(server, keyed_client):
    with keyed_client(server[0], KEY, REQUEST_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="module")
def voice(api, upload_voice):
    return upload_voice(api, VOICE, TRANSCRIPT)


@pytest.fixture(scope="module")
def reference(tiny_engine, server, voice):
    """reference(seed, stream): the local engine's 16-bit audio for the request the server gets (cached)."""
    saved = tiny_engine.voice_store(server[1] / "voices").load(VOICE)
    made = {}

    def of(seed: int, stream: bool = False) -> np.ndarray:
        if (seed, stream) not in made:
            made[seed, stream] = _engine_pcm(tiny_engine, saved, seed, stream)
        return made[seed, stream]

    return of


def _engine_pcm(engine, voice, seed: int, stream: bool) -> np.ndarray:
    from cosyvoice_onnx.audio import to_int16
    from cosyvoice_onnx.request import SynthesisRequest

    request = SynthesisRequest(text=TEXT, voice=voice, seed=seed, stream=stream, decode_options={"max_len": MAX_LEN})
    audio = np.concatenate(list(engine.stream(request))) if stream else engine.synthesize(request).audio
    return to_int16(audio)


def _speech(api, seed: int, stream: bool = False, **fields):
    body = {"model": "tts-1", "input": TEXT, "voice": VOICE, "seed": seed, "max_len": MAX_LEN, "stream": stream,
            "response_format": "pcm" if stream else "wav", **fields}
    return api.post("/v1/audio/speech", json=body)


def _samples(res, stream: bool) -> np.ndarray:
    if stream:
        return np.frombuffer(res.content, dtype="<i2")
    samples, rate = sf.read(io.BytesIO(res.content), dtype="int16")
    assert rate == 24000
    return samples


def _replicas(api) -> dict:
    res = api.get("/healthz/replicas")
    assert res.status_code == 200, res.text
    return res.json()


def test_requests_spread_over_both_replicas_with_the_local_engines_audio(api, voice, reference):
    before = _replicas(api)["served"]
    seeds = list(range(8))
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda seed: _speech(api, seed), seeds))
    for seed, res in zip(seeds, responses):
        assert res.status_code == 200, res.text
        np.testing.assert_array_equal(_samples(res, stream=False), reference(seed))
    served = _replicas(api)["served"]
    gained = {name: served[name] - before.get(name, 0) for name in served}
    assert sum(gained.values()) == len(seeds)
    assert len([n for n in gained.values() if n > 0]) == 2, f"not both replicas served: {gained}"


def test_openai_client_with_and_without_streaming(server, voice, reference, tiny_model_dir):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=REQUEST_TIMEOUT_S)
    model = tiny_model_dir.resolve().name
    assert [m.id for m in client.models.list().data] == [model]
    res = client.audio.speech.create(model=model, voice=VOICE, input=TEXT, response_format="wav",
                                     extra_body={"seed": 7, "max_len": MAX_LEN})
    samples, _ = sf.read(io.BytesIO(res.content), dtype="int16")
    np.testing.assert_array_equal(samples, reference(7))
    with client.audio.speech.with_streaming_response.create(
            model=model, voice=VOICE, input=TEXT, response_format="pcm",
            extra_body={"seed": 3, "max_len": MAX_LEN, "stream": True}) as streamed:
        data = b"".join(streamed.iter_bytes())
    np.testing.assert_array_equal(np.frombuffer(data, dtype="<i2"), reference(3, stream=True))


def test_engine_errors_keep_their_status_across_ray(api, voice):
    """Raised on a replica, answered as the local server would: the engine's message, never a traceback."""
    slow = _speech(api, 0, max_seconds=1e-6)
    assert slow.status_code == 504, slow.text
    assert "limit" in slow.json()["error"]["message"]
    noise = api.post("/v1/voices", files={"file": ("x.wav", b"not audio at all" * 64, "audio/wav")},
                     data={"name": "noise", "transcript": "x"})
    assert noise.status_code == 400, noise.text
    assert noise.json()["error"]["type"] == "invalid_request_error"
    for res in (slow, noise):
        assert "Traceback" not in res.text and "RayTaskError" not in res.text
    assert _speech(api, 0, model="nope").status_code == 404
    assert _speech(api, 1).status_code == 200


def test_a_replica_killed_under_load_costs_no_request_a_hang(api, voice, reference, ray_cluster):
    ray, _ = ray_cluster
    jobs = [(seed, seed % 3 == 0) for seed in range(12)]     # a third of them streams
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(_speech, api, seed, stream) for seed, stream in jobs]
        deadline = time.monotonic() + 30
        while api.get("/healthz").json()["requests_in_flight"] < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = sorted(_replicas(api)["served"])[0]
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        responses = [f.result(timeout=REQUEST_TIMEOUT_S + 10) for f in futures]
    answered, refused = 0, 0
    for (seed, stream), res in zip(jobs, responses):
        if res.status_code == 200:
            np.testing.assert_array_equal(_samples(res, stream), reference(seed, stream))
            answered += 1
        else:
            assert 500 <= res.status_code < 600, res.text
            assert res.json()["error"]["message"] and "Traceback" not in res.text
            refused += 1
    stats = _replicas(api)
    assert answered + refused == len(jobs)
    assert stats["retried"] >= 1, f"no request was sent again after the kill: {stats}"
    assert _speech(api, 0).status_code == 200         # the survivor (and Serve's replacement) keep serving


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, tiny_model_dir, capsys):
    from cosyvoice_onnx.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)       # `import ray` now fails as if it were not installed
    assert main(["serve", "--model", str(tiny_model_dir), "--ray"]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'cosyvoice-onnx[ray]'" in err and len(err.splitlines()) == 1


def test_an_address_nothing_answers_on_is_one_line_at_once(tiny_model_dir, free_port, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'cosyvoice-onnx[ray]')")
    from cosyvoice_onnx.cli import main

    address = f"127.0.0.1:{free_port()}"
    assert main(["serve", "--model", str(tiny_model_dir), "--ray", address]) == 1
    err = capsys.readouterr().err.strip()
    assert f"nothing answers at the Ray address {address}" in err and len(err.splitlines()) == 1


def test_a_process_already_on_another_cluster_is_refused(ray_cluster, tiny_model_dir, capsys):
    """In a process that is in a Ray cluster already, another address is an error, never silently ignored."""
    from cosyvoice_onnx.cli import main

    with socket.create_server(("127.0.0.1", 0)) as other:        # something answers there, but not this cluster
        address = f"127.0.0.1:{other.getsockname()[1]}"
        assert main(["serve", "--model", str(tiny_model_dir), "--ray", address]) == 1
    err = capsys.readouterr().err.strip()
    assert f"already connected to the Ray cluster at {ray_cluster[1]}, not {address}" in err
    assert len(err.splitlines()) == 1


def test_replicas_without_ray_is_a_usage_error(tiny_model_dir, capsys):
    from cosyvoice_onnx.cli import main

    assert main(["serve", "--model", str(tiny_model_dir), "--replicas", "2"]) == 2
    assert "--replicas needs --ray" in capsys.readouterr().err


# ---------------------------------------------------------------- retry, replay and time bounds, step by step
# The same app and pool over a scripted stand-in for the Serve handle (the replica code runs in this process), so
# each failure happens exactly where the test puts it: a replica lost before the answer, one lost after two
# chunks of a stream, every replica lost, a replica that never answers.

class _Lost(Exception):
    pass


class _FakeHandle:
    def __init__(self, replica, script: list[str]):
        self.replica, self.script, self.calls = replica, script, []

    def options(self, stream: bool = False):
        return self

    def __getattr__(self, method: str):
        handle = self

        class Method:
            def remote(self, *args):
                action = handle.script.pop(0) if handle.script else "ok"
                handle.calls.append((method, action))
                run = getattr(handle.replica, method)
                return _FakeStream(run(*args), action) if method == "stream" else _FakeResponse(run, args, action)

        return Method()


class _FakeResponse:
    def __init__(self, run, args, action: str):
        self.run, self.args, self.action = run, args, action

    def result(self, timeout_s: float):
        import ray.exceptions

        if self.action in ("die", "lost"):
            raise ray.exceptions.ActorDiedError()
        if self.action == "hang":
            time.sleep(timeout_s)
            raise TimeoutError("timed out")
        return self.run(*self.args)

    def cancel(self):
        pass


class _FakeStream:
    def __init__(self, replies, action: str):
        self.replies, self.action, self.given = replies, action, 0

    async def __anext__(self):
        import asyncio

        import ray.exceptions

        if self.action == "hang":
            await asyncio.sleep(3600)
        if self.action == "lost" or (self.action == "die" and self.given == 2):   # a stream's "die" comes late
            raise ray.exceptions.ActorDiedError()
        self.given += 1
        try:
            return next(self.replies)
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self):
        self.replies.close()


@pytest.fixture
def scripted(tiny_engine, prompt_wav, tmp_path, monkeypatch):
    """scripted(actions): a TestClient over the API whose replica calls follow `actions`, and the engine."""
    pytest.importorskip("ray.exceptions", reason="Ray is not installed (pip install 'cosyvoice-onnx[ray]')")
    from fastapi.testclient import TestClient

    from cosyvoice_onnx.scale import remote_engine
    from cosyvoice_onnx.scale.remote_engine import ReplicaEngine, ReplicaPool
    from cosyvoice_onnx.scale.replica import EngineReplica
    from cosyvoice_onnx.scale.serve_ray import add_replica_routes
    from cosyvoice_onnx.server.app import ServerSettings, create_app

    monkeypatch.setattr(remote_engine, "SLACK_S", 0.5)       # the bound a hung replica waits out
    monkeypatch.setattr(remote_engine, "RETRY_PAUSE_S", 0.0)
    replica = EngineReplica.__new__(EngineReplica)
    replica.engine, replica.name = tiny_engine, "fake-replica"
    tiny_engine.voice_store(tmp_path / "voices").save(VOICE, tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT))
    clients = []

    def make(actions: list[str]):
        handle = _FakeHandle(replica, list(actions))
        engine = ReplicaEngine(handle, replica.describe().unwrap())
        settings = ServerSettings(model_id="tiny", voices_dir=tmp_path / "voices", concurrency=2, max_queue=4)
        app = create_app(engine, settings, pool=ReplicaPool(2, 4))
        add_replica_routes(app, engine, serve=None, replicas=2)
        client = TestClient(app)
        clients.append(client)
        return client, engine, handle

    yield make
    for client in clients:
        client.close()


def _body(seed: int, stream: bool = False, **fields) -> dict:
    return {"model": "tts-1", "input": TEXT, "voice": VOICE, "seed": seed, "max_len": MAX_LEN, "stream": stream,
            "response_format": "pcm" if stream else "wav", **fields}


def _local(tiny_engine, client, seed: int, stream: bool) -> np.ndarray:
    voice = client.app.state.engine.voice_store(client.app.state.settings.voices_dir).load(VOICE)
    return _engine_pcm(tiny_engine, voice, seed, stream)


def test_a_lost_replica_is_retried_and_the_answer_is_unchanged(scripted, tiny_engine):
    client, engine, handle = scripted(["die", "ok"])
    res = client.post("/v1/audio/speech", json=_body(4))
    assert res.status_code == 200, res.text
    np.testing.assert_array_equal(_samples(res, stream=False), _local(tiny_engine, client, 4, stream=False))
    assert [action for _, action in handle.calls] == ["die", "ok"]
    assert engine.stats() == {"served": {"fake-replica": 1}, "retried": 1, "unavailable": 0}


def test_a_stream_lost_after_two_chunks_is_replayed_without_repeating_them(scripted, tiny_engine):
    client, engine, handle = scripted(["die", "ok"])
    res = client.post("/v1/audio/speech", json=_body(5, stream=True))
    assert res.status_code == 200, res.text
    expected = _local(tiny_engine, client, 5, stream=True)
    assert len(expected) > 0
    np.testing.assert_array_equal(_samples(res, stream=True), expected)
    assert engine.stats()["retried"] == 1 and handle.calls == [("stream", "die"), ("stream", "ok")]


def test_every_replica_lost_is_a_503_json_error(scripted):
    client, engine, _ = scripted(["lost"] * 6)
    for body in (_body(0), _body(0, stream=True)):
        res = client.post("/v1/audio/speech", json=body)
        assert res.status_code == 503, res.text
        error = res.json()["error"]
        assert error["code"] == "replica_unavailable" and "3 tries" in error["message"]
        assert res.headers["retry-after"]
    assert engine.stats()["unavailable"] == 2
    assert client.get("/healthz").json()["requests_in_flight"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_replica_that_never_answers_is_a_504_not_a_hang(scripted, stream):
    client, _, _ = scripted(["hang"])
    started = time.monotonic()
    res = client.post("/v1/audio/speech", json=_body(0, stream=stream, max_seconds=0.25))
    assert res.status_code == 504, res.text
    assert "time limit" in res.json()["error"]["message"]
    assert time.monotonic() - started < 30
