"""The studio served on 127.0.0.1 and driven through gradio_client: every tab's endpoint, bad input, restarts."""

import os
import shutil
import socket

import numpy as np
import pytest
import soundfile as sf

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from cosyvoice_onnx.audio import to_int16, write_wav  # noqa: E402
from cosyvoice_onnx.tools.tiny import synthetic_voice  # noqa: E402

TRANSCRIPT = "This is the prompt clip."
TEXT = "Hello there, this is the studio speaking."
# gradio's queue builds a pandas frame with options pandas 3 deprecates; not ours to fix.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
ENDPOINTS = {"/zero_shot", "/instruct", "/mix", "/duration", "/ab", "/model_status", "/download", "/export",
             "/save_voice", "/delete_voice", "/voices", "/history", "/history_clip", "/delete_clip", "/apply_pinyin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(model_dir, data_dir, **settings):
    from cosyvoice_onnx.studio import Studio, StudioSettings, build_app, launch_options

    # The models' parent is allowed explicitly: the studio opens only --model, its folders and --allow-dir.
    studio = Studio(StudioSettings(model_dir=model_dir, data_dir=data_dir, stream_player=None,
                                   allow_dirs=[model_dir.parent], **settings))
    demo = build_app(studio)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                            **launch_options(studio))
    return demo, url, studio


def read(path):
    audio, rate = sf.read(path, dtype="int16")
    return rate, audio


def assert_speech(path):
    rate, audio = read(path)
    assert rate == 24000
    assert audio.size > 2400
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) > 30  # -60 dBFS: not silent


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    """Copies of the tiny model in one parent folder (allowed with allow_dirs, as `--allow-dir` would)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("studio-models")
    out = {name: shutil.copytree(tiny_model_dir, root / name) for name in ("main", "plain")}
    (root / "empty").mkdir()
    out["empty"] = root / "empty"
    return out


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("studio-data")
    demo, url, studio = launch(models["main"], data_dir)
    yield url, studio, data_dir
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[0], verbose=False)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio-clips")
    files = {
        "silent": (np.zeros(3 * 24000, np.float32), 24000),
        "short": (synthetic_voice(0.5, 24000, seed=2), 24000),
        "long": (synthetic_voice(31.0, 16000, seed=3), 16000),
        "emotion": (synthetic_voice(3.0, 24000, seed=4), 24000),
    }
    out = {}
    for name, (audio, rate) in files.items():
        out[name] = root / f"{name}.wav"
        write_wav(out[name], audio, rate)
    out["corrupt"] = root / "corrupt.wav"
    out["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8)
    out["not_audio"] = root / "notes.txt"
    out["not_audio"].write_text("this is not audio\n" * 50)
    return out


@pytest.fixture(scope="module")
def exported(client, models):
    """The main model exported to ONNX through the Models tab's endpoint (parity skipped: A/B measures it)."""
    log = client.predict(str(models["main"]), ["fp32"], False, api_name="/export")
    assert "Export written" in log and "[vocoder]" in log
    return models["main"]


def zero_shot(client, prompt, **kwargs):
    args = {"text": TEXT, "prompt_audio": handle_file(str(prompt)) if prompt else None, "transcript": TRANSCRIPT,
            **kwargs}
    return client.predict(api_name="/zero_shot", **args)


def test_every_tab_is_a_named_endpoint(client):
    assert ENDPOINTS <= set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])


def test_zero_shot_plays_exactly_what_the_engine_made(client, tiny_engine, prompt_wav, server):
    _, result, summary = zero_shot(client, prompt_wav, seed=3)
    assert_speech(result)
    expected = to_int16(tiny_engine.synthesize(TEXT, prompt_wav=prompt_wav, prompt_text=TRANSCRIPT, seed=3))
    rate, audio = read(result)
    # Identical up to int16 rounding: no peak normalisation, no resampling, no trimming on the way out.
    assert audio.shape == expected.shape
    assert np.max(np.abs(audio.astype(np.int32) - expected)) <= 1
    assert "zero-shot" in summary and "seed 3" in summary
    assert server[1].history.clips()[0].seed == 3


def test_streaming_returns_the_streamed_clip(client, tiny_engine, prompt_wav):
    _, result, summary = zero_shot(client, prompt_wav, seed=5, stream=True)
    chunks = list(tiny_engine.synthesize(TEXT, prompt_wav=prompt_wav, prompt_text=TRANSCRIPT, seed=5, stream=True))
    expected = to_int16(np.concatenate(chunks))
    assert np.max(np.abs(read(result)[1].astype(np.int32) - expected)) <= 1
    assert f"{len(chunks)} chunks" in summary


def test_empty_transcript_is_cross_lingual(client, prompt_wav):
    _, result, summary = zero_shot(client, prompt_wav, transcript="")
    assert_speech(result)
    assert "cross-lingual" in summary


def test_instruct(client, prompt_wav):
    instruction = "请用四川话说这句话。"
    result, summary = client.predict(TEXT, instruction, handle_file(str(prompt_wav)), api_name="/instruct")
    assert_speech(result)
    assert instruction in summary


def test_mix_weight_zero_is_the_timbre_clip_alone(client, prompt_wav, clips):
    _, plain, _ = zero_shot(client, prompt_wav, seed=7)
    emotion = handle_file(str(clips["emotion"]))
    mixed, summary = client.predict(TEXT, handle_file(str(prompt_wav)), TRANSCRIPT, "", emotion, "An emotional clip.",
                                    "", 0.0, 7, api_name="/mix")
    assert np.array_equal(read(mixed)[1], read(plain)[1])
    half, _ = client.predict(TEXT, handle_file(str(prompt_wav)), TRANSCRIPT, "", emotion, "An emotional clip.", "",
                             0.5, 7, api_name="/mix")
    assert_speech(half)
    assert "weight 0.00" in summary


def test_duration_hits_the_target_exactly(client, prompt_wav):
    result, achieved, summary = client.predict(
        TEXT, handle_file(str(prompt_wav)), TRANSCRIPT, "", "seconds", 2.5, 1.0, "tokens", 0, api_name="/duration")
    assert read(result)[1].size == 60000 and achieved == pytest.approx(2.5)
    assert "achieved **2.500 s**" in summary
    result, achieved, _ = client.predict(
        TEXT, handle_file(str(prompt_wav)), TRANSCRIPT, "", "speed", 5.0, 1.5, "tokens", 0, api_name="/duration")
    assert achieved == pytest.approx(read(result)[1].size / 24000, abs=1e-3)


def test_ab_torch_against_onnx_with_parity(client, exported, prompt_wav):
    status = client.predict(str(exported), api_name="/model_status")
    assert "fp32: ready" in status
    a, b, report = client.predict(TEXT, handle_file(str(prompt_wav)), TRANSCRIPT, "", 11, "torch", "onnx", True,
                                  str(exported), api_name="/ab")
    audio_a, audio_b = read(a)[1].astype(np.float64), read(b)[1].astype(np.float64)
    assert audio_a.shape == audio_b.shape
    snr = 10 * np.log10(np.sum(audio_a ** 2) / max(np.sum((audio_a - audio_b) ** 2), 1e-9))
    assert snr > 30
    assert "| A | `torch` |" in report and "| B | `onnx` |" in report
    assert "logits max|mean abs diff" in report and "waveform SNR" in report


def test_saved_voice_replaces_the_upload(client, prompt_wav, server):
    data_dir = server[2]
    message = client.predict("narrator", handle_file(str(prompt_wav)), TRANSCRIPT, api_name="/save_voice")
    assert "narrator" in message
    assert "narrator" in client.predict(api_name="/voices")
    _, from_clip, _ = zero_shot(client, prompt_wav, seed=2)
    _, from_voice, summary = zero_shot(client, None, seed=2, saved_voice="narrator")
    assert np.array_equal(read(from_clip)[1], read(from_voice)[1])
    assert "voice: narrator" in summary
    for hostile in ("../evil", "a/b", "CON", ".hidden", "x" * 65, ""):
        with pytest.raises(AppError, match="voice name|empty"):
            client.predict(hostile, handle_file(str(prompt_wav)), TRANSCRIPT, api_name="/save_voice")
    assert sorted(p.name for p in (data_dir / "voices").iterdir()) == ["narrator.json", "narrator.npz"]
    assert not (data_dir / "evil.npz").exists() and not (data_dir.parent / "evil.npz").exists()


def test_voices_and_history_survive_a_restart(client, server, models, prompt_wav):
    client.predict("keeper", handle_file(str(prompt_wav)), TRANSCRIPT, api_name="/save_voice")
    zero_shot(client, prompt_wav, text="Remember me.")
    demo, url, _ = launch(models["main"], server[2])
    try:
        again = Client(url, verbose=False)
        assert "keeper" in again.predict(api_name="/voices")
        rows = again.predict(api_name="/history")["data"]
        assert any(row[4] == "Remember me." for row in rows)
        player, download = again.predict(rows[0][0], api_name="/history_clip")
        assert_speech(player)
        assert download.endswith(".wav")
        again.predict("keeper", api_name="/delete_voice")
        assert "keeper" not in again.predict(api_name="/voices")
        with pytest.raises(AppError, match="no clip"):
            again.predict("../../etc/passwd", api_name="/history_clip")
    finally:
        demo.close()


def test_bad_input_gives_a_clear_message_and_the_server_keeps_serving(client, clips, models, prompt_wav, exported):
    stale = shutil.copytree(exported, exported.parent / "stale")
    with open(stale / "flow.pt", "ab") as f:
        f.write(b"\0" * 16)   # the checkpoint changed after the export was made
    cases = [
        ({"prompt": None}, "no prompt audio"),
        ({"prompt": clips["silent"]}, "silent"),
        ({"prompt": clips["corrupt"]}, "cannot read"),
        ({"prompt": clips["not_audio"]}, "cannot read"),
        ({"prompt": clips["short"]}, "at least"),
        ({"prompt": clips["long"]}, "at most"),
        ({"text": "   "}, "empty"),
        ({"text": "a" * 5001}, "limit is 5000"),
        ({"model_dir": str(models["empty"])}, "not a CosyVoice model folder"),
        ({"model_dir": "/etc"}, "outside the folders"),
        ({"model_dir": str(models["plain"]), "backend": "onnx"}, "no ONNX export"),
        ({"model_dir": str(stale), "backend": "onnx"}, "stale export"),
        ({"backend": "torch", "precision": "int8"}, "fp32"),
        ({"saved_voice": "../../etc/passwd"}, "invalid voice name"),
        ({"text": "Hello [not_a_tag] there."}, "unknown tag"),
    ]
    for change, message in cases:
        kwargs = {"prompt": prompt_wav, **change}
        with pytest.raises(AppError, match=message):
            zero_shot(client, kwargs.pop("prompt"), **kwargs)
        _, result, _ = zero_shot(client, prompt_wav, text="Still here.")
        assert_speech(result)


def test_download_offline_says_so(client):
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("HF_HUB_OFFLINE is not set: this test must never start a real download")
    with pytest.raises(AppError, match="could not download|not installed"):
        client.predict("Fun-CosyVoice3-0.5B-2512", "huggingface", api_name="/download")


def test_pinyin_helper_writes_cv3_tokens(client):
    # The official CV3 example spells 给 in 给予 as [j][ǐ].
    assert client.predict("对报道给予好评", "3", "jǐ", api_name="/apply_pinyin") == "对报道[j][ǐ]予好评"
    with pytest.raises(AppError, match="not a reading"):
        client.predict("对报道给予好评", "3", "hǎo", api_name="/apply_pinyin")


# ---------------------------------------------------------------- plain handlers, no server


def test_engine_cache_shares_equivalent_specs_and_drops_the_oldest(tmp_path):
    from cosyvoice_onnx.studio.state import EngineCache

    loads = []
    cache = EngineCache(capacity=2, loader=lambda model, spec: loads.append(spec) or object())
    first, _ = cache.get(tmp_path, "onnx:int8")
    # A global int8 choice is int8 for the LM and the flow (the vocoder has no int8 graph): the same engine as
    # this per-stage spelling, and not the same as the int8 LM with the fp32 flow.
    assert cache.get(tmp_path, "lm=onnx:int8,flow=onnx:int8,vocoder=onnx")[0] is first
    assert cache.get(tmp_path, "lm=onnx:int8,flow=onnx,vocoder=onnx")[0] is not first
    cache.get(tmp_path, "torch")
    cache.get(tmp_path, "onnx")
    assert loads == ["onnx:int8", "lm=onnx:int8,flow=onnx,vocoder=onnx", "torch", "onnx"]
    assert cache.get(tmp_path, "onnx:int8")[0] is not first  # evicted as least recently used, loaded again
    assert len(cache.loaded()) == 2


def test_without_ffmpeg_the_live_player_gets_the_clip_so_far(tiny_model_dir, tmp_path, prompt_wav):
    from cosyvoice_onnx.studio import Studio, StudioSettings

    studio = Studio(StudioSettings(model_dir=tiny_model_dir, data_dir=tmp_path, stream_player=False))
    steps = list(studio.zero_shot("One. Two words here. And three.", str(prompt_wav), TRANSCRIPT, seed=1,
                                  stream=True, progress=lambda *a, **k: None))
    lives = [live[1] for live, _, _ in steps[:-1]]
    final = steps[-1][1][1]
    assert len(lives) >= 2
    for shorter, longer in zip(lives, lives[1:]):
        assert np.array_equal(longer[: shorter.size], shorter) and longer.size > shorter.size
    assert np.array_equal(lives[-1], final)
    assert final.dtype == np.int16 and steps[-1][1][0] == 24000
    assert [c.mode for c in studio.history.clips()] == ["zero-shot (stream)"]
