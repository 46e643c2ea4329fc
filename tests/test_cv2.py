"""CosyVoice2-0.5B support: the release's config, ids and prompts, its vocoder streaming, and the whole pipeline on a
tiny CV2 folder on both backends."""

import librosa
import numpy as np
import pytest
import torch
from scipy.signal import windows

from cosyvoice_onnx.audio import load_audio
from cosyvoice_onnx.config_readers import load_config
from cosyvoice_onnx.releases import RELEASES, release_config
from cosyvoice_onnx.errors import InputError, ModelFolderError
from cosyvoice_onnx.lm_decode import decode_speech_tokens
from cosyvoice_onnx.model_files import inspect_model_dir
from cosyvoice_onnx.noise import NormalHiftNoise
from cosyvoice_onnx.prompts import MODES, preset_instruction
from cosyvoice_onnx.sampling import GreedySampler
from cosyvoice_onnx.token2wav import Token2Wav
from cosyvoice_onnx.torch_backend.hift import CausalHiFT, TorchVocoder
from cosyvoice_onnx.torch_backend.loader import build_modules

TRANSCRIPT = "hello there this is a test"
TEXT = "Hello world, this is a tiny test."
HOP = 480
OVERLAP = 8 * HOP


@pytest.fixture(scope="module")
def cv2_dir(tiny_model_of):
    return tiny_model_of(2)


@pytest.fixture(scope="module")
def engine(cv2_dir):
    from cosyvoice_onnx import CosyVoice

    return CosyVoice(cv2_dir)


@pytest.fixture(scope="module")
def voice(engine, prompt_wav):
    return engine.prompt_from_audio(prompt_wav, TRANSCRIPT)


# ---------------------------------------------------------------- loading


def test_real_cv2_modules_have_the_official_keys_and_shapes():
    cfg = release_config(2)
    with torch.device("meta"):
        modules = build_modules(cfg)
    lm = modules["lm"].state_dict()
    assert len(lm) == 295, "291 Qwen2 keys + llm_embedding, llm_decoder weight and bias, speech_embedding (the official CV2 llm.pt)"
    assert lm["llm_embedding.weight"].shape == (2, 896)
    assert lm["speech_embedding.weight"].shape == (6564, 896)
    assert lm["llm_decoder.weight"].shape == (6564, 896) and lm["llm_decoder.bias"].shape == (6564,)
    hift = modules["vocoder"].state_dict()
    assert len(hift) == 328
    assert sum(p.numel() for p in modules["vocoder"].parameters()) == 20_821_295  # the official CV2 hift.pt
    assert hift["conv_pre.parametrizations.weight.original1"].shape == (512, 80, 7)
    assert hift["ups.0.parametrizations.weight.original0"].shape == (512, 1, 1)   # ConvTranspose: norm over dim 0
    assert hift["ups.0.parametrizations.weight.original1"].shape == (512, 256, 16)
    assert hift["f0_predictor.condnet.0.parametrizations.weight.original1"].shape == (512, 80, 3)
    assert len(modules["flow"].state_dict()) == 1121  # the official CV2 flow.pt


def test_cv2_release_constants():
    llm = release_config(2).llm
    # The CosyVoice2 special-id layout of its LM.
    assert (llm.speech_vocab_size, llm.eos, llm.fill, llm.sos, llm.task_id) == (6564, 6561, 6563, 0, 1)
    assert llm.stop_token_ids == (6561, 6562, 6563)
    assert llm.decoder_bias and not llm.sos_task_in_speech_embedding
    assert llm.min_len_mask_id == llm.eos == 6561, "the official mask index is CV2's eos itself"
    assert llm.silent_tokens == ()
    assert RELEASES[2].speech_tokenizer_file == "speech_tokenizer_v2.onnx"


def test_tiny_cv2_folder_loads_as_cosyvoice2(cv2_dir):
    cfg = load_config(cv2_dir)
    assert (cfg.version, cfg.yaml_name, cfg.tokenizer_version) == (2, "cosyvoice2.yaml", "cosyvoice2")
    assert cfg.system_prompt is None and not cfg.requires_endofprompt
    assert cfg.features.fmax == 8000
    assert not cfg.hift.causal and cfg.hift.noise == "random_normal"
    assert cfg.streaming.vocoder == "cache_crossfade"
    assert cfg.flow.kind == "conformer_unet"
    assert cfg.llm.eos == 6561 and cfg.llm.speech_vocab_size == 6564
    assert (cv2_dir / "speech_tokenizer_v2.onnx").exists() and not (cv2_dir / "llm.rl.pt").exists()
    with pytest.raises(ModelFolderError, match="CosyVoice2 ships no 'rl' LLM"):
        inspect_model_dir(cv2_dir, "rl")


def test_a_yaml_with_another_releases_classes_is_refused(cv2_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for item in cv2_dir.iterdir():
        (folder / item.name).symlink_to(item)
    (folder / "cosyvoice2.yaml").unlink()
    text = (cv2_dir / "cosyvoice2.yaml").read_text()
    (folder / "cosyvoice2.yaml").write_text(text.replace("llm.llm.Qwen2LM", "llm.llm.CosyVoice3LM"))
    with pytest.raises(ModelFolderError, match="CosyVoice3LM"):
        load_config(folder)


# ---------------------------------------------------------------- text, prompts, LM ids


def test_cv2_tokenizer_has_the_17_tokens(engine):
    tok = engine.tokenizer
    assert tok.vocab_size == 151646 + 17
    assert tok.token_to_id("<|endofprompt|>") == 151646 and tok.token_to_id("[mn]") == 151662


def test_cv2_prompt_strings(engine):
    fe, decode = engine.frontend, engine.tokenizer.decode
    _, prompt_ids = fe.lm_inputs(MODES["zero_shot"], "Hi.", "my transcript", None)
    assert decode(prompt_ids.tolist(), skip_special_tokens=False) == "my transcript"
    text_ids, prompt_ids = fe.lm_inputs(MODES["cross_lingual"], "Hi.", None, None)
    assert prompt_ids.size == 0 and decode(text_ids.tolist(), skip_special_tokens=False) == "Hi."
    _, prompt_ids = fe.lm_inputs(MODES["instruct"], "Hi.", None, "用四川话说这句话")
    assert decode(prompt_ids.tolist(), skip_special_tokens=False) == "用四川话说这句话<|endofprompt|>"
    assert prompt_ids[-1] == 151646


def test_cv2_presets_and_what_cv2_cannot_do(engine, voice):
    assert preset_instruction("dialect:四川", 2) == "用四川话说这句话"
    assert preset_instruction("emotion:happy", 2) == "用开心的语气说这句话"
    assert preset_instruction("dialect:四川", 3) == "请用四川话表达。"
    with pytest.raises(InputError, match="CosyVoice3 instruct preset"):
        preset_instruction("volume:loud", 2)
    with pytest.raises(InputError, match=r"\[j\], \[ǐ\]"):
        engine.synthesize("对报道[j][ǐ]予好评", voice=voice, exact_len=2)
    with pytest.raises(InputError, match="ARPAbet"):
        engine.synthesize("Hi.", voice=voice, instruct="[AA1] style", exact_len=2)


def test_studio_fills_presets_in_the_chosen_models_wording(cv2_dir, tiny_model_dir, tmp_path):
    gr = pytest.importorskip("gradio")
    from cosyvoice_onnx.studio.handlers import Studio
    from cosyvoice_onnx.studio.settings import StudioSettings

    studio = Studio(StudioSettings(model_dir=cv2_dir, data_dir=tmp_path / "data", models_dir=tiny_model_dir.parent,
                                   stream_player=False))
    assert studio.preset_text("dialect:四川", str(cv2_dir)) == "用四川话说这句话"
    assert studio.preset_text("dialect:四川", str(tiny_model_dir)) == "请用四川话表达。"
    with pytest.raises(gr.Error, match="CosyVoice3 instruct preset"):
        studio.preset_text("role:robot", str(cv2_dir))


class PeakedLM:
    """An LM stage whose logits always peak at `peak`, with `runner_up` second (greedy takes it when peak is masked)."""

    backend = "spy"

    def __init__(self, peak: int, runner_up: int, vocab: int = 6564):
        self.logits = np.zeros(vocab, np.float32)
        self.logits[peak], self.logits[runner_up] = 10.0, 5.0

    def prefill(self, text_ids, prompt_speech_ids):
        return self.logits, None

    def step(self, token_id, cache):
        return self.logits, None


def test_cv2_min_len_masks_eos_itself_and_any_stop_id_ends_decoding():
    llm = release_config(2).llm
    text = np.arange(5)  # min_len = 10

    def decode(lm, **options):
        return decode_speech_tokens(lm, text, [], [], llm, GreedySampler(), **options)

    assert decode(PeakedLM(peak=6561, runner_up=7)) == [7] * 10, "eos masked for exactly min_len steps"
    # Only 6561 is masked in the official mode, so the stop id 6562 ends decoding at once; "correct" masks all three.
    assert decode(PeakedLM(peak=6561, runner_up=6562)) == []
    assert len(decode(PeakedLM(peak=6561, runner_up=6562), eos_mask_mode="correct")) == 10


def test_cv2_emits_every_silent_token_and_needs_no_endofprompt(engine):
    llm = engine.cfg.llm
    silent = PeakedLM(peak=1, runner_up=2)  # both are CV3 silent tokens
    tokens = decode_speech_tokens(silent, np.arange(3), [], [], llm, GreedySampler(), max_len=12)
    assert tokens == [1] * 12, "CV3 would drop all but the first 5"
    text_ids = engine.frontend.encode("Hi.")
    assert 151646 not in text_ids
    assert len(engine.generate_tokens(text_ids, [], [], GreedySampler(), max_len=3)) <= 3


# ---------------------------------------------------------------- prompt mel


def test_prompt_mel_uses_fmax_8000_like_librosa(engine, prompt_wav):
    voice = engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    audio = load_audio(prompt_wav, 24000).astype(np.float64)
    pad = (1920 - 480) // 2
    spec = librosa.stft(np.pad(audio, (pad, pad), mode="reflect"), n_fft=1920, hop_length=480, win_length=1920,
                        window="hann", center=False)
    bank = librosa.filters.mel(sr=24000, n_fft=1920, n_mels=80, fmin=0, fmax=8000)
    reference = np.log(np.maximum(bank @ np.sqrt(np.abs(spec) ** 2 + 1e-9), 1e-5)).T
    frames = voice.mel.shape[1]
    assert frames == 2 * voice.speech_tokens.shape[1]
    assert np.abs(voice.mel[0] - reference[:frames]).max() < 1e-4
    # Above 8 kHz the CV2 filterbank has nothing: the top band is not the full-band (CV3) one.
    full_band = librosa.filters.mel(sr=24000, n_fft=1920, n_mels=80, fmin=0, fmax=None)
    assert np.abs(np.log(np.maximum(full_band @ np.sqrt(np.abs(spec) ** 2 + 1e-9), 1e-5)).T[:frames, -1]
                  - voice.mel[0, :, -1]).max() > 0.1


# ---------------------------------------------------------------- HiFT source cache and streaming


@pytest.fixture(scope="module")
def cv2_hift():
    cfg = release_config(2)
    cfg.hift.base_channels = cfg.hift.f0_cond_channels = 32
    torch.manual_seed(0)
    model = CausalHiFT(cfg.hift).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.uniform_(0.3, 3.0)
        model.f0_predictor.classifier.weight.mul_(4000)
        model.f0_predictor.classifier.bias.fill_(-300.0)
    return cfg, model


def test_cache_source_replaces_the_start_of_the_source(cv2_hift):
    cfg, hift = cv2_hift
    mel = torch.randn(1, 80, 20, generator=torch.Generator().manual_seed(1)) * 2 - 5
    noise = torch.from_numpy(NormalHiftNoise(cfg, seed=3).sine_noise(20 * HOP))
    cache = torch.rand(1, 1, OVERLAP, generator=torch.Generator().manual_seed(2)) - 0.5
    with torch.inference_mode():
        plain_speech, plain_source = hift.synthesize(mel, True, noise)
        speech, source = hift.synthesize(mel, True, noise, cache)
        empty_speech, _ = hift.synthesize(mel, True, noise, torch.zeros(1, 1, 0))
    assert torch.equal(source[:, :, :OVERLAP], cache)
    assert torch.equal(source[:, :, OVERLAP:], plain_source[:, :, OVERLAP:])
    assert torch.equal(empty_speech, plain_speech)
    assert not torch.equal(speech[:, :OVERLAP], plain_speech[:, :OVERLAP])
    with pytest.raises(ValueError, match="look-ahead"):
        hift(mel, False, noise)


class ConstantVocoder:
    """A vocoder stage that records its inputs and returns speech = call number, source = a ramp."""

    backend = "spy"

    def __init__(self):
        self.calls = []

    def vocode_with_source(self, mel, sine_noise, cache_source):
        self.calls.append((mel.copy(), cache_source.copy(), sine_noise.shape))
        samples = mel.shape[2] * HOP
        source = np.arange(samples, dtype=np.float32)[None, None] + 1000.0 * len(self.calls)
        return np.full((1, samples), float(len(self.calls)), np.float32), source


def test_cv2_streaming_caches_mel_and_source_and_crossfades_with_hamming():
    cfg = release_config(2)
    vocoder = ConstantVocoder()
    t2w = Token2Wav(cfg, None, vocoder, None, NormalHiftNoise(cfg))

    def mel(tokens, prompt_tokens, prompt_mel, embedding, streaming, finalize):
        """Frame f of the whole utterance holds the value f, so the cached frames can be traced."""
        frames = 2 * (tokens.size - (0 if finalize else 3))
        return np.broadcast_to(np.arange(frames, dtype=np.float32), (1, 80, frames)).copy()

    t2w.mel = mel
    chunks = list(t2w.stream(iter(range(110)), np.zeros(0, np.int64), None, None))
    window = windows.hamming(2 * OVERLAP, sym=True)
    # Hops of 25 and 50 tokens, then the final chunk's 110 - 75 = 35 tokens.
    assert [len(c) for c in chunks] == [HOP * (2 * 25) - OVERLAP, HOP * 2 * 50, HOP * 2 * 35 + OVERLAP]
    assert sum(len(c) for c in chunks) == HOP * 2 * 110
    assert np.all(chunks[0] == 1.0)
    for k in (1, 2):
        expected = (k + 1) * window[:OVERLAP] + k * window[OVERLAP:]
        np.testing.assert_allclose(chunks[k][:OVERLAP], expected, rtol=0, atol=1e-6)
        assert np.all(chunks[k][OVERLAP:len(chunks[k]) - (OVERLAP if k < 2 else 0)] == k + 1)
    (mel1, cache1, _), (mel2, cache2, noise2), (mel3, cache3, _) = vocoder.calls
    assert cache1.shape == (1, 1, 0)
    assert mel2.shape[2] == 8 + 2 * 50 and np.array_equal(mel2[0, 0, :8], np.arange(42, 50))
    assert np.array_equal(mel3[0, 0, :8], np.arange(142, 150))
    np.testing.assert_array_equal(cache2[0, 0], 1000.0 + np.arange(50 * HOP - OVERLAP, 50 * HOP))
    np.testing.assert_array_equal(cache3[0, 0], 2000.0 + np.arange(108 * HOP - OVERLAP, 108 * HOP))
    assert noise2 == (1, 108 * HOP, 9), "fresh normal noise for every sample of every call"


def test_normal_noise_is_seeded_per_request():
    cfg = release_config(2)
    a, b = NormalHiftNoise(cfg, seed=5), NormalHiftNoise(cfg, seed=5)
    first = a.sine_noise(1000)
    np.testing.assert_array_equal(first, b.sine_noise(1000))
    assert not np.array_equal(first, a.sine_noise(1000)), "every call draws afresh"
    assert abs(first.mean()) < 0.05 and abs(first.std() - 1) < 0.05
    a.reseed(5)
    np.testing.assert_array_equal(a.sine_noise(1000), first)


# ---------------------------------------------------------------- end to end on a tiny CV2 folder


def test_cv2_synthesis_whole_and_streamed(engine, voice):
    n = 60
    audio = engine.synthesize(TEXT, voice=voice, seed=3, exact_len=n)
    assert audio.shape == (2 * n * HOP,) and np.isfinite(audio).all() and np.std(audio) > 1e-4
    np.testing.assert_array_equal(audio, engine.synthesize(TEXT, voice=voice, seed=3, exact_len=n))
    chunks = list(engine.synthesize(TEXT, voice=voice, seed=3, stream=True, exact_len=n))
    first_hop = 25 + (-voice.speech_tokens.shape[1]) % 25
    assert len(chunks[0]) == HOP * 2 * first_hop - OVERLAP
    assert sum(len(c) for c in chunks) == 2 * n * HOP


def test_cv2_vocoder_noise_follows_the_seed(engine, voice):
    mel = engine.tokens_to_mel(list(range(0, 600, 20)), voice.speech_tokens, voice.mel, voice.embedding)
    a = engine.mel_to_audio(mel, seed=1)
    np.testing.assert_array_equal(a, engine.mel_to_audio(mel, seed=1))
    assert not np.array_equal(a, engine.mel_to_audio(mel, seed=2))


def test_cli_make_tiny_model_version_2_and_a_cv3_preset(tmp_path, prompt_wav, capsys):
    from cosyvoice_onnx.cli import main

    model = tmp_path / "cli-cv2"
    assert main(["make-tiny-model", str(model), "--version", "2"]) == 0
    assert load_config(model).version == 2
    code = main(["synth", "--model", str(model), "--prompt-wav", str(prompt_wav), "--text", "你好。",
                 "--instruct-preset", "role:robot", "--out", str(tmp_path / "x.wav")])
    assert code != 0 and "CosyVoice3 instruct preset" in capsys.readouterr().err


# ---------------------------------------------------------------- ONNX export and parity


@pytest.fixture(scope="module")
def exported(tiny_export_of):
    return tiny_export_of(2)


def test_onnx_vocoder_takes_the_source_cache(exported, cv2_dir):
    from cosyvoice_onnx.onnx_backend.hift import OnnxVocoder
    from cosyvoice_onnx.torch_backend.loader import load_module

    files = inspect_model_dir(cv2_dir)
    torch_vocoder = TorchVocoder(load_module(files, "vocoder"))
    onnx_vocoder = OnnxVocoder(exported, files.config, threads=1)
    assert sorted(p.name for p in exported.glob("hift*.onnx")) == ["hift_cached.onnx"]
    mel = (torch.randn(1, 80, 30, generator=torch.Generator().manual_seed(4)) - 5).numpy()
    noise = NormalHiftNoise(files.config, seed=0).sine_noise(30 * HOP)
    for cache in (np.zeros((1, 1, 0), np.float32), np.random.default_rng(1).random((1, 1, OVERLAP), np.float32) - .5):
        ref_speech, ref_source = torch_vocoder.vocode_with_source(mel, noise, cache)
        speech, source = onnx_vocoder.vocode_with_source(mel, noise, cache)
        np.testing.assert_array_equal(source[:, :, :cache.shape[2]], cache)
        assert np.abs(source - ref_source).max() < 1e-4
        assert np.abs(speech - ref_speech).max() < 1e-4
    with pytest.raises(ValueError, match="look-ahead"):
        onnx_vocoder.vocode(mel, False, noise)


def test_onnx_parity_meets_the_fp32_targets(exported, engine, cv2_dir, voice):
    from cosyvoice_onnx import CosyVoice
    from cosyvoice_onnx.tools.parity import compare_engines, targets_met

    test = CosyVoice(exported.parent, backend="onnx")
    report = compare_engines(engine, test, voice, text=TEXT, seed=0, max_tokens=40)
    assert all(targets_met(report).values()), report
    assert report["end_to_end"]["snr_db"] >= 40
    streamed = np.concatenate(list(test.synthesize(TEXT, voice=voice, seed=2, stream=True, exact_len=40)))
    reference = np.concatenate(list(engine.synthesize(TEXT, voice=voice, seed=2, stream=True, exact_len=40)))
    assert streamed.shape == reference.shape
    assert np.abs(streamed - reference).max() < 1e-3


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_cv2_streaming_skips_a_segment_without_speech_tokens(exported, cv2_dir, voice, backend):
    from cosyvoice_onnx import CosyVoice

    tts = CosyVoice(cv2_dir if backend == "torch" else exported.parent, backend=backend)
    assert tts.synthesize(TEXT, voice=voice, seed=1, max_len=0).size == 0
    assert sum(len(c) for c in tts.synthesize(TEXT, voice=voice, seed=1, max_len=0, stream=True)) == 0

