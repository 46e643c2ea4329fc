"""The speech API (`cosyvoice-onnx serve`) started as its own process on the tiny model, driven by httpx and by
the official `openai` client: audio equal to the engine's own, bad input refused with the right status in
OpenAI's error shape while the server keeps serving, and many requests at once."""

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

KEY = "test-key"
VOICE = "alice"
TRANSCRIPT = "hello there this is a test"
TEXT = "Hello world, this is a tiny test."
MAX_LEN = 30


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory, serve_process):
    """The server process, its base URL and its data folder."""
    data = tmp_path_factory.mktemp("serve-data")
    with serve_process(["--model", str(tiny_model_dir), "--data-dir", str(data), "--api-key", KEY,
                        "--concurrency", "2", "--max-queue", "32"], data) as url:
        yield url, data


@pytest.fixture(scope="module")
def api(server):
    url, _ = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def voice(api, upload_voice):
    return upload_voice(api, VOICE, TRANSCRIPT)


@pytest.fixture(scope="module")
def model_id(tiny_model_dir):
    return tiny_model_dir.resolve().name


@pytest.fixture(scope="module")
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=300)


def _engine_pcm(engine, data_dir, seed: int, stream: bool = False, **options) -> np.ndarray:
    """What the engine itself makes for the request the server gets: 16-bit samples."""
    from cosyvoice_onnx.audio import to_int16
    from cosyvoice_onnx.request import SynthesisRequest

    saved = engine.voice_store(data_dir / "voices").load(VOICE)
    request = SynthesisRequest(text=TEXT, voice=saved, seed=seed, stream=stream, decode_options={"max_len": MAX_LEN},
                               **options)
    audio = np.concatenate(list(engine.stream(request))) if stream else engine.synthesize(request).audio
    return to_int16(audio)


def _speech(api, **fields):
    body = {"model": "tts-1", "input": TEXT, "voice": VOICE, "response_format": "wav", "max_len": MAX_LEN, **fields}
    return api.post("/v1/audio/speech", json=body)


def test_openai_client_gets_the_engines_own_audio(openai_client, voice, model_id, server, tiny_engine):
    res = openai_client.audio.speech.create(model=model_id, voice=voice, input=TEXT, response_format="wav",
                                            extra_body={"seed": 7, "max_len": MAX_LEN})
    samples, rate = sf.read(io.BytesIO(res.content), dtype="int16")
    assert rate == 24000 and len(samples) > 0
    np.testing.assert_array_equal(samples, _engine_pcm(tiny_engine, server[1], seed=7))


def test_openai_client_streams_the_engines_chunks(openai_client, voice, model_id, server, tiny_engine):
    with openai_client.audio.speech.with_streaming_response.create(
            model=model_id, voice=voice, input=TEXT, response_format="pcm",
            extra_body={"seed": 3, "max_len": MAX_LEN, "stream": True}) as res:
        assert res.headers["content-type"] == "audio/pcm"
        data = b"".join(res.iter_bytes())
    samples = np.frombuffer(data, dtype="<i2")
    assert len(samples) > 0
    np.testing.assert_array_equal(samples, _engine_pcm(tiny_engine, server[1], seed=3, stream=True))


def test_a_smaller_first_chunk_streams_what_the_engine_makes_with_it(api, voice, server, tiny_engine):
    res = _speech(api, stream=True, seed=3, response_format="pcm", first_chunk_tokens=5)
    assert res.status_code == 200, res.text
    samples = np.frombuffer(res.content, dtype="<i2")
    np.testing.assert_array_equal(samples, _engine_pcm(tiny_engine, server[1], seed=3, stream=True,
                                                       first_chunk_tokens=5))


def test_streamed_wav_has_an_open_ended_header(api, voice):
    res = _speech(api, stream=True, seed=3)
    assert res.status_code == 200, res.text
    head, pcm = res.content[:44], res.content[44:]
    assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and head[36:40] == b"data"
    assert head[40:44] == b"\xff\xff\xff\xff"
    plain = _speech(api, stream=True, seed=3, response_format="pcm")
    assert pcm == plain.content


@pytest.mark.parametrize("fmt", ["flac", "mp3", "opus", "aac"])
def test_other_formats_decode_to_audio(api, voice, fmt):
    formats = api.get("/v1/models").json()["data"][0]["response_formats"]
    if fmt not in formats:
        res = _speech(api, response_format=fmt)
        assert res.status_code == 400 and "ffmpeg" in res.json()["error"]["message"]
        return
    res = _speech(api, response_format=fmt, seed=1)
    assert res.status_code == 200, res.text
    assert len(res.content) > 100
    if fmt == "flac":
        wav, _ = sf.read(io.BytesIO(_speech(api, seed=1).content), dtype="int16")
        flac, _ = sf.read(io.BytesIO(res.content), dtype="int16")
        np.testing.assert_array_equal(flac, wav)


BAD_SPEECH = [
    ({"input": ""}, 400, "input"),
    ({"input": "x" * 6000}, 400, "5000"),
    ({"voice": "bob"}, 404, "bob"),
    ({"voice": "../etc"}, 400, "invalid voice name"),
    ({"response_format": "ogg"}, 400, "response_format"),
    ({"speed": 0}, 400, "speed"),
    ({"speed": 3.5}, 400, "speed"),
    ({"model": "whisper-1"}, 404, "unknown model"),
    ({"stream": True, "response_format": "flac"}, 400, "stream"),
    ({"stream": True, "speed": 1.5}, 400, "speed"),
    ({"max_seconds": 10 ** 6}, 400, "max_seconds"),
    ({"seed": -1}, 400, "seed"),
    ({"colour": "blue"}, 400, "colour"),
    ({"stream": True, "first_chunk_tokens": 0}, 400, "first_chunk_tokens"),
    ({"stream": True, "first_chunk_tokens": 101}, 400, "first_chunk_tokens"),
    ({"first_chunk_tokens": 10}, 400, "only when streaming"),
]


@pytest.mark.parametrize("fields,status,named", BAD_SPEECH, ids=[str(f)[:40] for f, _, _ in BAD_SPEECH])
def test_bad_speech_request_is_refused_and_the_server_keeps_serving(api, voice, fields, status, named):
    res = _speech(api, **fields)
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert named in error["message"] and error["type"] and "Traceback" not in res.text
    assert api.get("/healthz").status_code == 200


@pytest.mark.parametrize("body,status,named", [
    (b'{"model": "tts-1", "input": "hi", "voice": "alice", "speed": NaN}', 400, "speed"),
    (b'{"model": "tts-1", "input": ', 400, "JSON"),
    (b"x" * (2 << 20), 413, "bytes"),
])
def test_malformed_bodies_are_refused(api, voice, body, status, named):
    res = api.post("/v1/audio/speech", content=body, headers={"Content-Type": "application/json"})
    assert res.status_code == status, res.text
    assert named in res.json()["error"]["message"]
    assert _speech(api, seed=0).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}])
def test_missing_or_wrong_key_is_401(server, voice, headers):
    res = httpx.post(server[0] + "/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": VOICE},
                     headers=headers)
    assert res.status_code == 401
    assert res.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server[0] + "/v1/voices", headers={"X-API-Key": KEY}).status_code == 200


def test_request_time_limit_is_a_504(api, voice):
    res = _speech(api, max_seconds=1e-6)
    assert res.status_code == 504, res.text
    assert "limit" in res.json()["error"]["message"]


def test_voices_save_list_and_delete(api, voice, prompt_wav):
    names = [v["name"] for v in api.get("/v1/voices").json()["data"]]
    assert VOICE in names
    clip = prompt_wav.read_bytes()
    res = api.post("/v1/voices", files={"file": ("b.wav", clip)}, data={"name": "bob", "transcript": TRANSCRIPT})
    assert res.status_code == 201, res.text
    again = api.post("/v1/voices", files={"file": ("b.wav", clip)}, data={"name": "bob", "transcript": TRANSCRIPT})
    assert again.status_code == 400 and "exists" in again.json()["error"]["message"]
    assert api.delete("/v1/voices/bob").status_code == 200
    assert api.delete("/v1/voices/bob").status_code == 404
    assert "bob" not in [v["name"] for v in api.get("/v1/voices").json()["data"]]


@pytest.mark.parametrize("files,data,named", [
    ({"file": ("notes.wav", b"this is not audio at all", "audio/wav")}, {"name": "carol"}, "audio"),
    ({"file": ("c.wav", b"RIFF")}, {"name": "../../x"}, "invalid voice name"),
    ({}, {"name": "carol"}, "file"),
])
def test_bad_voice_upload_is_400(api, files, data, named):
    res = api.post("/v1/voices", files=files or {"unused": ("u", b"")}, data=data)
    assert res.status_code == 400, res.text
    assert named in res.json()["error"]["message"]
    assert "carol" not in [v["name"] for v in api.get("/v1/voices").json()["data"]]


def test_twenty_requests_at_once_all_succeed_and_each_seed_gives_its_audio(api, voice):
    def one(i):
        return i, _speech(api, seed=i % 4, input=f"Request {i % 4}, short.", max_len=12)

    with ThreadPoolExecutor(20) as workers:
        results = list(workers.map(one, range(20)))
    assert [r.status_code for _, r in results] == [200] * 20, [r.text for _, r in results if r.status_code != 200]
    by_seed = {}
    for i, res in results:
        by_seed.setdefault(i % 4, set()).add(res.content)
    assert all(len(clips) == 1 for clips in by_seed.values()), "the same request must give the same audio"
    assert len({next(iter(c)) for c in by_seed.values()}) == 4


def test_models_health_and_studio(api, server, model_id):
    model = api.get("/v1/models").json()["data"][0]
    assert model["id"] == model_id and {"wav", "pcm", "flac"} <= set(model["response_formats"])
    health = httpx.get(server[0] + "/healthz").json()
    assert health["status"] == "ok" and health["concurrency"] == 2
    studio = httpx.get(server[0] + "/studio/", follow_redirects=True, timeout=60)
    assert studio.status_code == 200 and "<html" in studio.text.lower()
    assert api.get("/v1/nothing").json()["error"]["message"]


def test_a_full_queue_refuses_at_once():
    from cosyvoice_onnx.server.pool import QueueFull, SynthesisPool

    pool = SynthesisPool(concurrency=1, max_queue=1)
    release = threading.Event()

    async def scenario():
        running = asyncio.ensure_future(pool.run(release.wait, 30))
        waiting = asyncio.ensure_future(pool.run(lambda: "done"))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="busy"):
            await pool.run(lambda: "refused")
        with pytest.raises(QueueFull):
            await pool.stream(lambda: iter([1])).__anext__()
        release.set()
        assert await running is True and await waiting == "done"
        assert [x async for x in pool.stream(lambda: iter([1, 2]))] == [1, 2]
        assert pool.admitted == 0

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        pool.shutdown()


@pytest.mark.parametrize("argv,named", [
    (["--host", "0.0.0.0"], "--api-key"),
    (["--concurrency", "0"], "--concurrency"),
    (["--max-seconds", "nan"], "--max-seconds"),
])
def test_serve_refuses_unsafe_or_bad_options_before_loading(tmp_path, argv, named, monkeypatch):
    from cosyvoice_onnx.cli import main

    monkeypatch.delenv("COSYVOICE_API_KEY", raising=False)
    with pytest.raises(SystemExit, match=named):
        main(["serve", "--model", str(tmp_path / "absent"), *argv])
