"""The studio served on 127.0.0.1 and driven through gradio_client: every tab's endpoint, bad input, restarts."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

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
             "/make_tiny_model", "/convert",
             "/save_voice", "/delete_voice", "/voices", "/history", "/history_clip", "/delete_clip", "/replay_clip", "/apply_pinyin"}


def launch(model_dir, data_dir, port, **settings):
    from cosyvoice_onnx.studio import Studio, StudioSettings, build_app, launch_options

    # The models' parent is allowed explicitly: the studio opens only --model, its folders and --allow-dir.
    studio = Studio(StudioSettings(model_dir=model_dir, data_dir=data_dir, stream_player=None,
                                   models_dir=data_dir / "models", allow_dirs=[model_dir.parent], **settings))
    demo = build_app(studio)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
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
def server(models, tmp_path_factory, free_port):
    data_dir = tmp_path_factory.mktemp("studio-data")
    demo, url, studio = launch(models["main"], data_dir, free_port())
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


def test_streaming_with_a_smaller_first_chunk_plays_the_engines_stream_with_it(client, tiny_engine, prompt_wav):
    _, result, summary = zero_shot(client, prompt_wav, seed=5, stream=True, first_chunk_tokens=5)
    chunks = list(tiny_engine.synthesize(TEXT, prompt_wav=prompt_wav, prompt_text=TRANSCRIPT, seed=5, stream=True,
                                         first_chunk_tokens=5))
    assert len(chunks[0]) == 480 * (2 * 5 - 8)
    assert np.max(np.abs(read(result)[1].astype(np.int32) - to_int16(np.concatenate(chunks)))) <= 1
    assert f"{len(chunks)} chunks" in summary
    with pytest.raises(AppError, match="first_chunk_tokens must be at least 5 for this model"):
        zero_shot(client, prompt_wav, stream=True, first_chunk_tokens=2)


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


def test_voice_conversion_plays_what_the_engine_made_and_compares_backends(client, tiny_engine, prompt_wav, clips,
                                                                         exported, server):
    source = clips["emotion"]
    a, b, report = client.predict(handle_file(str(source)), handle_file(str(prompt_wav)), "", 2, api_name="/convert")
    assert b is None and "voice conversion" in report and "| A | `torch` |" in report
    expected = to_int16(tiny_engine.convert(source, prompt_wav=prompt_wav, seed=2).audio)
    assert np.max(np.abs(read(a)[1].astype(np.int32) - expected)) <= 1
    assert server[1].history.clips()[0].mode == "vc"
    a, b, report = client.predict(handle_file(str(source)), handle_file(str(prompt_wav)), "", 2, "torch", "fp32", "",
                                  str(exported), "onnx", api_name="/convert")
    audio_a, audio_b = read(a)[1].astype(np.float64), read(b)[1].astype(np.float64)
    assert audio_a.shape == audio_b.shape and "| B | `onnx` |" in report
    assert 10 * np.log10(np.sum(audio_a ** 2) / max(np.sum((audio_a - audio_b) ** 2), 1e-9)) > 30
    for source, expected in ((clips["silent"], "source audio is silent"), (clips["corrupt"], "cannot read"),
                             (None, "no source audio")):
        with pytest.raises(AppError, match=expected):
            client.predict(handle_file(str(source)) if source else None, handle_file(str(prompt_wav)), "", 0,
                           api_name="/convert")
    with pytest.raises(AppError, match="no target voice"):
        client.predict(handle_file(str(clips["emotion"])), None, "", 0, api_name="/convert")


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


def test_voices_and_history_survive_a_restart(client, server, models, prompt_wav, free_port):
    client.predict("keeper", handle_file(str(prompt_wav)), TRANSCRIPT, api_name="/save_voice")
    zero_shot(client, prompt_wav, text="Remember me.")
    demo, url, _ = launch(models["main"], server[2], free_port())
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


def test_malformed_input_names_what_was_wrong(client, clips, prompt_wav, server):
    cases = [
        ({"stages": "lm=onnx,,flow"}, "per-stage box's 'lm=onnx,,flow' is not a backend spec.*lm=onnx:int8"),
        ({"stages": "lm=onnx:int9"}, "per-stage box's.*unknown precision 'int9'"),
        ({"seed": "NaN"}, "seed 'NaN' is not a whole number from 0 to"),
        ({"seed": None}, "seed None is not a whole number"),
        ({"seed": "abc"}, "seed 'abc' is not a whole number"),
        ({"seed": -1}, "seed -1 is not a whole number"),
        ({"seed": 2.5}, "seed 2.5 is not a whole number"),
        ({"prompt": clips["corrupt"]}, r"prompt audio 'corrupt\.wav': cannot read"),
    ]
    for change, message in cases:
        kwargs = {"prompt": prompt_wav, **change}
        with pytest.raises(AppError, match=message) as caught:
            zero_shot(client, kwargs.pop("prompt"), **kwargs)
        assert "BytesIO" not in str(caught.value) and "Errno" not in str(caught.value)
    with pytest.raises(AppError, match="backend B 'lm=onnx,,flow' is not a backend spec"):
        client.predict(TEXT, handle_file(str(prompt_wav)), TRANSCRIPT, "", 1, "torch", "lm=onnx,,flow", False,
                       api_name="/ab")
    # The mix tab says which of its two clips could not be read.
    with pytest.raises(AppError, match=r"emotion clip 'notes\.txt': cannot read"):
        client.predict(TEXT, handle_file(str(prompt_wav)), TRANSCRIPT, "", handle_file(str(clips["not_audio"])),
                       "An emotional clip.", "", 0.5, 7, api_name="/mix")
    with pytest.raises(AppError, match=r"timbre clip \(the voice panel\) 'corrupt\.wav'"):
        client.predict(TEXT, handle_file(str(clips["corrupt"])), TRANSCRIPT, "", handle_file(str(prompt_wav)),
                       "An emotional clip.", "", 0.5, 7, api_name="/mix")
    # Refused folders do not tell a remote client where the server keeps its files.
    with pytest.raises(AppError, match="outside the folders this studio may open.*--allow-dir") as caught:
        zero_shot(client, prompt_wav, model_dir="/etc")
    assert str(server[2]) not in str(caught.value) and str(server[1].settings.models_dir) not in str(caught.value)


def test_server_failures_become_one_clear_line(client, server, exported, prompt_wav, monkeypatch):
    import cosyvoice_onnx.export.exporter as exporter
    from cosyvoice_onnx.studio.handlers import Studio

    def read_only(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted", "/srv/secret/models/main/onnx")

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(exporter, "export_model", read_only)
    with pytest.raises(AppError, match="cannot write the ONNX export.*read-only.*--out") as caught:
        client.predict(str(exported), ["fp32"], False, api_name="/export")
    assert "/srv/secret" not in str(caught.value) and "Errno" not in str(caught.value)
    monkeypatch.setattr(Studio, "_synthesize", out_of_memory)
    with pytest.raises(AppError, match="ran out of memory.*shorter text"):
        zero_shot(client, prompt_wav)
    monkeypatch.undo()
    _, result, _ = zero_shot(client, prompt_wav, text="Still here.")
    assert_speech(result)


def test_the_tiny_model_button_works_offline(client, server):
    message, folder = client.predict(api_name="/make_tiny_model")
    assert "random weights" in message and "noise" in message
    assert folder == str(server[1].settings.models_dir / "tiny-test-model")
    assert "CosyVoice3" in client.predict(folder, api_name="/model_status")


def test_fifty_waiting_clients_are_queued_and_told_their_place(client, server, monkeypatch):
    from gradio_client.utils import Status

    gate, history = threading.Event(), server[1].history
    real_clips = history.clips
    monkeypatch.setattr(history, "clips", lambda: gate.wait(120) and real_clips())  # the first request holds
    jobs = [client.submit(api_name="/history") for _ in range(50)]
    ranks = []
    for _ in range(600):
        # Each waiting client learns how many requests are ahead of it (the page shows it as "queue: 31/49").
        ranks = [state.rank for state in (job.status() for job in jobs)
                 if state.code == Status.IN_QUEUE and state.rank is not None]
        if max(ranks, default=0) >= 30:
            break
        time.sleep(0.1)
    gate.set()
    assert max(ranks, default=0) >= 30, ranks
    for job in jobs:
        assert "data" in job.result(timeout=120)   # none refused with "Queue is full"


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


def test_allowed_folders_are_exactly_model_models_data_and_allow_dir(tmp_path, monkeypatch):
    from cosyvoice_onnx.errors import InputError
    from cosyvoice_onnx.studio.settings import StudioSettings, check_model_folder

    for name in ("model", "sibling", "extra", "work"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "work")
    settings = StudioSettings(model_dir=tmp_path / "model", data_dir=tmp_path / "data",
                              models_dir=tmp_path / "models")
    assert check_model_folder(str(tmp_path / "model"), settings) == tmp_path / "model"
    # Neither the --model folder's parent (for --model /model that is "/") nor the working directory.
    for refused in ("sibling", "work", "."):
        with pytest.raises(InputError, match="outside the folders"):
            check_model_folder(str(tmp_path / refused), settings)
    with pytest.raises(InputError, match="outside the folders"):
        check_model_folder("/", StudioSettings(model_dir=Path("/model"), data_dir=tmp_path, models_dir=tmp_path))
    allowed = StudioSettings(model_dir=tmp_path / "model", data_dir=tmp_path / "data", models_dir=tmp_path / "m",
                             allow_dirs=[tmp_path / "extra"])
    assert check_model_folder(str(tmp_path / "extra"), allowed) == tmp_path / "extra"


@pytest.mark.parametrize("exposure", [["--host", "0.0.0.0"], ["--share"]])
def test_exposed_without_auth_is_refused_unless_insecure(exposure, tmp_path):
    from cosyvoice_onnx.studio.options import add_studio_arguments, check_exposure

    parser = add_studio_arguments(argparse.ArgumentParser())
    with pytest.raises(SystemExit, match="without --auth.*--insecure"):
        check_exposure(parser.parse_args(exposure))
    check_exposure(parser.parse_args([*exposure, "--auth", "me:secret"]))
    check_exposure(parser.parse_args([*exposure, "--insecure"]))
    run = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "studio", *exposure, "--data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "--insecure" in run.stderr and "Traceback" not in run.stderr


def test_studio_command_parses_without_importing_gradio():
    code = ("import sys; from cosyvoice_onnx.cli import build_parser; "
            "a = build_parser().parse_args(['studio', '--concurrency', '3', '--max-queue', '9', '--allow-dir', 'x']);"
            "assert (a.concurrency, a.max_queue, a.allow_dir[0].name) == (3, 9, 'x'), a;"
            "assert 'gradio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_queue_and_concurrency_come_from_the_settings(tiny_model_dir, tmp_path):
    from cosyvoice_onnx.studio import Studio, StudioSettings, build_app
    from cosyvoice_onnx.studio.settings import default_concurrency

    studio = Studio(StudioSettings(model_dir=tiny_model_dir, data_dir=tmp_path, concurrency=3, max_queue=9))
    demo = build_app(studio)
    assert (demo._queue.max_size, demo._queue.default_concurrency_limit) == (9, 3)
    settings = StudioSettings(data_dir=tmp_path)
    assert settings.concurrency == default_concurrency() >= 1 and settings.max_queue >= 64


@pytest.mark.parametrize("lock", [True, False])
def test_engine_lock_is_a_setting(tmp_path, lock):
    from cosyvoice_onnx.studio.state import EngineCache

    cache = EngineCache(loader=lambda model, spec: object(), lock=lock)
    inside = threading.Barrier(2, timeout=10)
    outcomes = []

    def request():
        with cache.use(tmp_path, "torch"):
            try:
                inside.wait()   # both requests inside one engine at once: only without the lock
                outcomes.append("together")
            except threading.BrokenBarrierError:
                outcomes.append("alone")

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(outcomes) == ({"alone"} if lock else {"together"})


def test_ffmpeg_from_pip_is_put_where_gradio_finds_it(tmp_path, monkeypatch):
    pytest.importorskip("imageio_ffmpeg")
    from cosyvoice_onnx.studio.media import ffmpeg_available, provide_ffmpeg

    monkeypatch.setenv("PATH", str(tmp_path))   # no system ffmpeg
    assert not ffmpeg_available()
    found = provide_ffmpeg()
    assert found and Path(found).name == "ffmpeg" and ffmpeg_available()
    assert "ffmpeg version" in subprocess.run([found, "-version"], capture_output=True, text=True).stdout


def test_pinyin_positions_count_from_zero():
    from cosyvoice_onnx.pronunciation import polyphones
    from cosyvoice_onnx.studio.text_tools import polyphone_choices

    text = "对报道给予好评"
    choices = dict((value, label) for label, value in polyphone_choices(text))
    index = next(p.index for p in polyphones(text) if p.char == "给")
    assert index == 3 and choices["3"].startswith("给 at position 3")


def test_engine_cache_shares_equivalent_specs_and_drops_the_oldest(tmp_path):
    from cosyvoice_onnx.studio.state import EngineCache

    loads = []
    cache = EngineCache(capacity=2, loader=lambda model, plan: loads.append(str(plan)) or object())
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


def test_a_history_entry_replays_its_clip_bit_exactly(tiny_model_dir, tmp_path, prompt_wav):
    import soundfile

    from cosyvoice_onnx.studio import Studio, StudioSettings
    from cosyvoice_onnx.studio.media import to_output

    studio = Studio(StudioSettings(model_dir=tiny_model_dir, data_dir=tmp_path, stream_player=False))
    studio.save_voice("anna", str(prompt_wav), TRANSCRIPT)
    list(studio.zero_shot("One sentence. And a second one.", None, TRANSCRIPT, saved_voice="anna", seed=123,
                          join="crossfade", join_ms=30, progress=lambda *a, **k: None))
    clip = studio.history.clips()[0]
    assert (clip.voice_name, clip.sampler, clip.seed, clip.backend) == ("anna", "torch", 123, "torch")
    plan, request = studio.replay_request(clip.id)
    with studio.cache.use(tiny_model_dir, plan) as engine:
        replayed = engine.synthesize(request)
    stored, rate = soundfile.read(studio.history.wav_path(clip.id), dtype="int16")
    assert request.join == "crossfade" and request.join_ms == 30 and replayed.plan == clip.backend
    np.testing.assert_array_equal(to_output(replayed.audio, rate)[1], stored)


def test_an_uploaded_clip_replays_after_the_upload_voice_and_glossary_change(tiny_model_dir, tmp_path, prompt_wav):
    """The history keeps the prompt features and the glossary: the upload deleted, a saved voice of the same
    name overwritten and the glossary edited, "Make again" still gives the clip back sample for sample."""
    import gradio as gr

    from cosyvoice_onnx.glossary import Glossary, GlossaryEntry, glossary_path
    from cosyvoice_onnx.studio import Studio, StudioSettings

    studio = Studio(StudioSettings(model_dir=tiny_model_dir, data_dir=tmp_path / "data", stream_player=False))
    Glossary((GlossaryEntry("Zork", "zorch"),)).save(glossary_path(studio.settings.data_dir))
    upload = tmp_path / "upload.wav"
    shutil.copy(prompt_wav, upload)
    quiet = {"progress": lambda *a, **k: None}
    list(studio.zero_shot("Zork speaks twice. Zork again.", str(upload), TRANSCRIPT, seed=5, **quiet))
    studio.instruct("Zork whispers.", "speak softly", str(upload), seed=6, **quiet)
    studio.mix("A mixed line.", str(upload), TRANSCRIPT, "", str(upload), TRANSCRIPT, "", 0.5, 1, **quiet)
    mixed, instructed, zero_shot = studio.history.clips()
    assert zero_shot.prompt_kept and instructed.prompt_kept and not mixed.prompt_kept
    assert json.loads(zero_shot.glossary)["entries"][0]["term"] == "Zork"

    upload.unlink()
    Glossary((GlossaryEntry("Zork", "blorp"),)).save(glossary_path(studio.settings.data_dir))
    for clip in (zero_shot, instructed):
        again, summary = studio.replay_clip(clip.id, **quiet)
        stored, _ = sf.read(studio.history.wav_path(clip.id), dtype="int16")
        np.testing.assert_array_equal(again[1], stored)
        assert "identical to the stored clip" in summary

    with pytest.raises(gr.Error, match="cannot be made again: only zero-shot, instruct and duration"):
        studio.replay_clip(mixed.id, **quiet)
    with pytest.raises(gr.Error, match="no clip 'nope' in the history"):
        studio.replay_clip("nope", **quiet)

    # Deleting (or pruning) a clip removes the prompt it kept.
    kept = studio.history.root / "prompts"
    assert {p.stem for p in kept.glob("*.npz")} == {zero_shot.id, instructed.id}
    studio.delete_clip(zero_shot.id)
    studio.history.keep = 1
    studio.history._prune()
    assert not list(kept.glob("*.npz")) and not list(kept.glob("*.json"))
