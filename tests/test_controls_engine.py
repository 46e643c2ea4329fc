"""Engine controls end to end on the tiny model: exact duration, emotion/timbre mixing, presets, joins, voices, CLI."""

import math

import numpy as np
import pytest
import soundfile as sf

from cosyvoice_onnx import cli, engine as engine_module
from cosyvoice_onnx.audio import write_wav
from cosyvoice_onnx.cli_controls import synth_controls
from cosyvoice_onnx.duration import DURATION_RANGE, estimate_tokens
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.longtext import Joiner
from cosyvoice_onnx.mixing import mix_prompts
from cosyvoice_onnx.prompts import CV3_INSTRUCT_PRESETS, MODES, lm_prompt_text, preset_instruction
from cosyvoice_onnx.sampling import make_sampler
from cosyvoice_onnx.tools.tiny import synthetic_voice
from cosyvoice_onnx.tokenizer import TextTokenizer
from cosyvoice_onnx.token2wav import interpolate_linear

TEXT = "Hello there."
SEGMENTS = ["Hello there.", "It is a good day."]


@pytest.fixture(scope="module")
def clips(tiny_engine):
    a = tiny_engine.prompt_from_audio((24000, synthetic_voice(2.0, 24000, seed=0)), "hello world, it is a good day")
    b = tiny_engine.prompt_from_audio((24000, synthetic_voice(2.4, 24000, seed=5)), "we can't stop now, my friend")
    return a, b


@pytest.fixture()
def two_segments(tiny_engine, monkeypatch):
    """Two short segments without a text long enough for the splitter (which test_text covers)."""
    monkeypatch.setattr(tiny_engine.frontend, "text_segments", lambda text, split=True, glossary=None: list(SEGMENTS))


@pytest.fixture()
def lm_calls(monkeypatch):
    """Records the arguments of every LM decoding run and how many tokens it yielded."""
    calls = []
    original = engine_module.iter_speech_tokens

    def spy(lm, text_ids, prompt_text_ids, prompt_speech_ids, cfg, sampler, **options):
        call = {"text": list(text_ids), "prompt_text": list(prompt_text_ids),
                "prompt_speech": list(prompt_speech_ids), "options": options, "yielded": 0}
        calls.append(call)
        for token in original(lm, text_ids, prompt_text_ids, prompt_speech_ids, cfg, sampler, **options):
            call["yielded"] += 1
            yield token

    monkeypatch.setattr(engine_module, "iter_speech_tokens", spy)
    return calls


def text_token_count(tts, text):
    return len(tts.frontend.encode(text))


# ---------------------------------------------------------------- exact duration


def test_duration_gives_exact_tokens_and_samples(tiny_engine, clips, lm_calls):
    seconds = 1.01                                     # 25.25 tokens, 50.5 mel frames: both need rounding
    estimated = estimate_tokens([text_token_count(tiny_engine, TEXT)]) / 25
    assert DURATION_RANGE[0] * estimated <= seconds <= DURATION_RANGE[1] * estimated
    audio, info = tiny_engine.synthesize(TEXT, voice=clips[0], seed=2, duration=seconds, return_info=True)
    assert len(audio) == round(seconds * 24000) == info.samples
    assert [c["options"]["exact_len"] for c in lm_calls] == [round(seconds * 25)] == info.tokens
    assert lm_calls[0]["yielded"] == 25
    assert info.segment_samples == [math.ceil(seconds * 24000 / 480) * 480]   # 51 frames, trimmed to 24240
    assert info.seconds == pytest.approx(seconds) and info.target_seconds == seconds


def test_duration_audio_is_the_flow_mel_fitted_to_the_frame_budget(tiny_engine, clips, lm_calls):
    a = clips[0]
    audio = tiny_engine.synthesize(TEXT, voice=a, seed=2, duration=1.01)
    tokens = tiny_engine.generate_tokens(lm_calls[0]["text"], lm_calls[0]["prompt_text"],
                                         lm_calls[0]["prompt_speech"], make_sampler("auto", 2, tiny_engine.cfg.llm),
                                         exact_len=25)
    mel = tiny_engine.tokens_to_mel(tokens, a.speech_tokens, a.mel, a.embedding)
    assert mel.shape[2] == 50
    reference = tiny_engine.mel_to_audio(interpolate_linear(mel, 51))[0][:24240]
    np.testing.assert_array_equal(audio, reference)


def test_duration_is_shared_over_segments_by_text_length(tiny_engine, clips, two_segments, lm_calls):
    seconds = 2.02
    counts = [text_token_count(tiny_engine, s) for s in SEGMENTS]
    audio, info = tiny_engine.synthesize("ignored", voice=clips[0], seed=1, duration=seconds, return_info=True)
    total = round(seconds * 25)
    assert sum(info.tokens) == total and [c["yielded"] for c in lm_calls] == info.tokens
    for tokens, count in zip(info.tokens, counts):
        assert abs(tokens - total * count / sum(counts)) < 1
    assert len(audio) == round(seconds * 24000)
    assert sum(info.segment_samples) == math.ceil(seconds * 24000 / 480) * 480


def test_duration_with_crossfade_still_hits_the_length(tiny_engine, clips, two_segments):
    audio, info = tiny_engine.synthesize("x", voice=clips[0], seed=1, duration=2.0, join="crossfade", join_ms=40,
                                         return_info=True)
    assert len(audio) == 48000
    assert sum(info.tokens) == round((48000 + 960) / 24000 * 25)     # the overlap is spoken too


def test_stretch_method_keeps_the_natural_tokens(tiny_engine, clips):
    natural = 30                                                        # min_len = max_len pins the LM length
    audio, info = tiny_engine.synthesize(TEXT, voice=clips[0], seed=2, duration=1.5, duration_method="stretch",
                                         return_info=True, min_len=natural, max_len=natural,
                                         eos_mask_mode="correct")
    assert info.tokens == [natural] and len(audio) == 36000 and info.segment_samples == [75 * 480]


@pytest.mark.parametrize("options, message", [
    ({"duration": 0.1}, "outside the range"),
    ({"duration": 60.0}, "outside the range"),
    ({"duration": 1.0, "stream": True}, "without streaming"),
    ({"duration": 1.0, "speed": 1.5}, "either a duration or a speed"),
    ({"duration": 1.0, "duration_method": "warp"}, "unknown duration method"),
    ({"duration": 3.5, "duration_method": "stretch", "max_len": 20}, "speed of"),
])
def test_duration_errors(tiny_engine, clips, options, message):
    with pytest.raises(InputError, match=message):
        tiny_engine.synthesize(TEXT, voice=clips[0], **options)


# ---------------------------------------------------------------- emotion / timbre mixing


def test_mix_zero_is_the_single_clip_result_bit_for_bit(tiny_engine, clips):
    a, b = clips
    single = tiny_engine.synthesize(TEXT, voice=a, seed=4)
    np.testing.assert_array_equal(tiny_engine.synthesize(TEXT, timbre=a, emotion=b, mix=0.0, seed=4), single)
    for weight in (0.4, 1.0):
        np.testing.assert_array_equal(tiny_engine.synthesize(TEXT, timbre=a, emotion=a, mix=weight, seed=4), single)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_mix_matches_the_stage_level_composition(tiny_engine, clips, weight):
    """LM from the spliced prompt, flow and speaker embedding from the timbre clip, rebuilt by hand."""
    a, b = clips
    plan = mix_prompts(a, b, weight)
    if weight == 1.0:
        assert plan.transcript == b.transcript and np.array_equal(plan.lm_tokens, b.speech_tokens[0])
    text_ids, prompt_ids = tiny_engine.frontend.lm_inputs(MODES["zero_shot"], TEXT, plan.transcript, None)
    tokens = tiny_engine.generate_tokens(text_ids, prompt_ids, plan.lm_tokens,
                                         make_sampler("auto", 6, tiny_engine.cfg.llm))
    mel = tiny_engine.tokens_to_mel(tokens, a.speech_tokens, a.mel, a.embedding)
    expected = tiny_engine.mel_to_audio(mel)[0]
    np.testing.assert_array_equal(tiny_engine.synthesize(TEXT, timbre=a, emotion=b, mix=weight, seed=6), expected)


def test_mix_refuses_instruct(tiny_engine, clips):
    with pytest.raises(InputError, match="instruct"):
        tiny_engine.synthesize(TEXT, timbre=clips[0], emotion=clips[1], instruct="请非常开心地说一句话。")


# ---------------------------------------------------------------- instruct presets


OFFICIAL_INSTRUCT_LIST = (  # cosyvoice/utils/common.py instruct_list, as the official code spells it
    [f"请用{d}话表达。" for d in "广东 东北 甘肃 贵州 河南 湖北 湖南 江西 闽南 宁夏 山西 陕西 山东 上海 四川 天津 云南".split()]
    + ["Please say a sentence as loudly as possible.", "Please say a sentence in a very soft voice.",
       "请用尽可能慢地语速说一句话。", "请用尽可能快地语速说一句话。", "请非常开心地说一句话。", "请非常伤心地说一句话。",
       "请非常生气地说一句话。", "我想体验一下小猪佩奇风格，可以吗？", "你可以尝试用机器人的方式解答吗？"])


def test_presets_are_the_official_instruction_list(tiny_engine):
    names = [f"{group}:{key}" for group, items in CV3_INSTRUCT_PRESETS.items() for key in items]
    assert sorted(preset_instruction(n) for n in names) == sorted(OFFICIAL_INSTRUCT_LIST)
    assert preset_instruction("dialect:四川") == "请用四川话表达。"
    assert lm_prompt_text(tiny_engine.cfg, MODES["instruct"], None, preset_instruction("dialect:四川")) == \
        "You are a helpful assistant. 请用四川话表达。<|endofprompt|>"
    for name in names:
        expected = f"You are a helpful assistant. {preset_instruction(name)}<|endofprompt|>"
        _, prompt_ids = tiny_engine.frontend.lm_inputs(MODES["instruct"], "你好。", None, preset_instruction(name))
        assert prompt_ids.tolist() == tiny_engine.tokenizer.encode(expected)


def test_instruct_preset_with_a_timbre_clip_from_the_cli(tiny_model_dir, tmp_path, lm_calls, capsys):
    clip, out = tmp_path / "timbre.wav", tmp_path / "out.wav"
    write_wav(clip, synthetic_voice(2.0, 24000, seed=0), 24000)
    code = cli.main(["synth", "--model", str(tiny_model_dir), "--timbre-wav", str(clip), "--instruct-preset",
                     "emotion:happy", "--text", TEXT, "--duration", "1.2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (call,) = lm_calls
    assert call["prompt_speech"] == []                      # instruct mode: no LM speech prompt
    tokenizer = TextTokenizer.from_dir(tiny_model_dir / "CosyVoice-BlankEN")
    assert call["prompt_text"] == tokenizer.encode("You are a helpful assistant. 请非常开心地说一句话。<|endofprompt|>")
    audio, rate = sf.read(out)
    assert rate == 24000 and len(audio) == 28800
    assert "target 1.200 s" in capsys.readouterr().err


def test_cli_maps_mixing_and_reading_options(tiny_engine, tiny_model_dir, tmp_path):
    a_wav, b_wav = tmp_path / "a.wav", tmp_path / "b.wav"
    write_wav(a_wav, synthetic_voice(2.0, 24000, seed=0), 24000)
    write_wav(b_wav, synthetic_voice(2.4, 24000, seed=5), 24000)
    args = cli.build_parser().parse_args([
        "synth", "--model", str(tiny_model_dir), "--timbre-wav", str(a_wav), "--timbre-text", "hello world",
        "--emotion-wav", str(b_wav), "--emotion-text", "we can't stop now", "--mix", "0.25",
        "--text", "对报道给予好评", "--reading", "3=ji3", "--out", str(tmp_path / "o.wav")])
    controls = synth_controls(args, tiny_engine)
    assert args.prompt_wav == a_wav and args.prompt_text == "hello world"
    assert controls["text"] == "对报道[j][ǐ]予好评" and controls["mix"] == 0.25
    expected = tiny_engine.prompt_from_audio(b_wav, "we can't stop now")
    assert np.array_equal(controls["emotion"].speech_tokens, expected.speech_tokens)
    assert controls["emotion"].transcript == "we can't stop now"


# ---------------------------------------------------------------- long text joins


def test_joins_between_segments(tiny_engine, clips, two_segments):
    plain, info = tiny_engine.synthesize("x", voice=clips[0], seed=3, return_info=True)
    cut = info.segment_samples[0]
    pieces = [plain[:cut], plain[cut:]]
    assert len(plain) == sum(info.segment_samples)
    for join in ("crossfade", "silence"):
        joined = tiny_engine.synthesize("x", voice=clips[0], seed=3, join=join, join_ms=30)
        joiner = Joiner.create(join, 30, 24000)
        assert len(joined) == len(plain) + joiner.overhead(2)
        np.testing.assert_array_equal(joined, joiner.join(pieces))


def test_streamed_joins_and_progress(tiny_engine, clips, two_segments):
    progress = []
    plain = np.concatenate(list(tiny_engine.synthesize("x", voice=clips[0], seed=3, stream=True,
                                                       on_progress=lambda i, n: progress.append((i, n)))))
    assert progress == [(1, 2), (2, 2)]
    gapped = np.concatenate(list(tiny_engine.synthesize("x", voice=clips[0], seed=3, stream=True, join="silence",
                                                        join_ms=25)))
    assert len(gapped) == len(plain) + 600
    silent = np.flatnonzero(np.convolve(gapped == 0, np.ones(600), "valid") == 600)
    assert silent.size and np.array_equal(np.delete(gapped, np.arange(silent[0], silent[0] + 600)), plain)


# ---------------------------------------------------------------- saved voices and the CLI


def test_saved_voice_synthesizes_like_the_clip(tiny_engine, clips, tmp_path):
    store = tiny_engine.voice_store(tmp_path)
    store.save("anna", clips[0])
    assert store.list()[0].compatible is True
    np.testing.assert_array_equal(tiny_engine.synthesize(TEXT, voice=store.load("anna"), seed=5),
                                  tiny_engine.synthesize(TEXT, voice=clips[0], seed=5))


def test_voices_and_pronounce_commands(tiny_model_dir, tmp_path, capsys):
    clip, voices = tmp_path / "me.wav", tmp_path / "voices"
    write_wav(clip, synthetic_voice(2.0, 24000, seed=0), 24000)
    base = ["--voices-dir", str(voices)]
    assert cli.main(["voices", "save", "me", "--model", str(tiny_model_dir), "--prompt-wav", str(clip),
                     "--prompt-text", "hello world", *base]) == 0
    assert cli.main(["voices", "list", "--model", str(tiny_model_dir), *base]) == 0
    assert "me\t2.0 s\thello world" in capsys.readouterr().out
    out = tmp_path / "out.wav"
    assert cli.main(["synth", "--model", str(tiny_model_dir), "--voice", "me", *base, "--text", TEXT,
                     "--join", "crossfade", "--out", str(out)]) == 0
    assert sf.read(out)[0].size > 0
    assert cli.main(["voices", "save", "../evil", "--model", str(tiny_model_dir), "--prompt-wav", str(clip),
                     *base]) == 2
    assert "invalid voice name" in capsys.readouterr().err
    assert cli.main(["voices", "delete", "me", *base]) == 0 and not any(voices.iterdir())
    capsys.readouterr()
    assert cli.main(["pronounce", "--text", "对报道给予好评", "--pinyin", "ji3", "--arpabet", "HH AH0 L OW1"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["[j][ǐ]", "[HH][AH0][L][OW1]"]
    assert any(line.startswith("3\t给\t") and "jǐ [j][ǐ]" in line for line in printed)
