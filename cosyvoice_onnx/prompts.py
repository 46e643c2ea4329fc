"""Synthesis modes as data, the LM prompt strings each mode builds, and the instruct presets."""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .errors import InputError

END_OF_PROMPT = "<|endofprompt|>"


@dataclass(frozen=True)
class Mode:
    """What one synthesis mode feeds to the LM and the flow."""

    name: str
    lm_prompt_speech: bool      # prompt speech tokens go to the LM (carry prosody/emotion)
    needs_transcript: bool
    needs_instruction: bool
    trim_prompt: bool = True    # 2:1 token/mel alignment; the official vc path skips it


MODES = {
    "zero_shot": Mode("zero_shot", lm_prompt_speech=True, needs_transcript=True, needs_instruction=False),
    "cross_lingual": Mode("cross_lingual", lm_prompt_speech=False, needs_transcript=False, needs_instruction=False),
    "instruct": Mode("instruct", lm_prompt_speech=False, needs_transcript=False, needs_instruction=True),
    # Voice conversion has no LM: the source's speech tokens go straight to the flow (conversion.py).
    "vc": Mode("vc", lm_prompt_speech=False, needs_transcript=False, needs_instruction=False, trim_prompt=False),
}


def choose_mode(prompt_text: str | None, instruction: str | None) -> Mode:
    """An instruction selects instruct; a transcript selects zero-shot; neither means cross-lingual."""
    if instruction and instruction.strip():
        return MODES["instruct"]
    if prompt_text and prompt_text.strip():
        return MODES["zero_shot"]
    return MODES["cross_lingual"]


def lm_prompt_text(cfg: ModelConfig, mode: Mode, transcript: str | None, instruction: str | None) -> str:
    """The LM prompt text exactly as the official examples spell it (the official example scripts).

    CV3: `You are a helpful assistant.<|endofprompt|>transcript` and `You are a helpful assistant. <instruction>
    <|endofprompt|>`; CV2 (no system prompt, <|endofprompt|> optional): the transcript as is and
    `<instruction><|endofprompt|>`. Strings that already contain <|endofprompt|> are used as given, like the
    official API.
    """
    system = cfg.system_prompt
    if mode.needs_instruction:
        instruction = (instruction or "").strip()
        if not instruction:
            raise InputError("instruct mode needs an instruction, e.g. 请用四川话说这句话。")
        if END_OF_PROMPT in instruction:
            return instruction
        # The official instruct format puts a space between the system sentence and the instruction.
        return f"{system} {instruction}{END_OF_PROMPT}" if system else f"{instruction}{END_OF_PROMPT}"
    if mode.needs_transcript:
        transcript = (transcript or "").strip()
        if END_OF_PROMPT in transcript or not cfg.requires_endofprompt:
            return transcript
        return f"{system}{END_OF_PROMPT}{transcript}"
    return ""


def tts_text_prefix(cfg: ModelConfig, mode: Mode, text: str) -> str:
    """CV3 cross-lingual puts the system prompt in front of the text to speak (official example.py); CV2 nothing."""
    if mode.name == "cross_lingual" and cfg.requires_endofprompt and END_OF_PROMPT not in text:
        return f"{cfg.system_prompt}{END_OF_PROMPT}"
    return ""


# Instruct presets shipped with CV3 (cosyvoice/utils/common.py instruct_list), grouped for the UI.
CV3_DIALECTS = ("广东", "东北", "甘肃", "贵州", "河南", "湖北", "湖南", "江西", "闽南", "宁夏",
                "山西", "陕西", "山东", "上海", "四川", "天津", "云南")
CV3_INSTRUCT_PRESETS: dict[str, dict[str, str]] = {
    "dialect": {d: f"请用{d}话表达。" for d in CV3_DIALECTS},
    "volume": {"loud": "Please say a sentence as loudly as possible.",
               "soft": "Please say a sentence in a very soft voice."},
    "speed": {"slow": "请用尽可能慢地语速说一句话。", "fast": "请用尽可能快地语速说一句话。"},
    "emotion": {"happy": "请非常开心地说一句话。", "sad": "请非常伤心地说一句话。", "angry": "请非常生气地说一句话。"},
    "role": {"peppa_pig": "我想体验一下小猪佩奇风格，可以吗？", "robot": "你可以尝试用机器人的方式解答吗？"},
}

# CosyVoice2 ships no preset list. For dialect, speed and emotion we offer instructions in the phrasing of its one
# official instruct example (`用四川话说这句话<|endofprompt|>`, example.py): our wording, not a shipped list.
# Volume and role stay CV3-only.
CV2_INSTRUCT_PRESETS: dict[str, dict[str, str]] = {
    "dialect": {d: f"用{d}话说这句话" for d in CV3_DIALECTS},
    "speed": {"slow": "用很慢的语速说这句话", "fast": "用很快的语速说这句话"},
    "emotion": {"happy": "用开心的语气说这句话", "sad": "用伤心的语气说这句话", "angry": "用生气的语气说这句话"},
}
INSTRUCT_PRESETS = {3: CV3_INSTRUCT_PRESETS, 2: CV2_INSTRUCT_PRESETS}


def preset_names(version: int = 3) -> list[str]:
    """`group:key` of every preset of that release."""
    return [f"{g}:{k}" for g, items in INSTRUCT_PRESETS[version].items() for k in items]


def preset_instruction(name: str, version: int = 3) -> str:
    """Looks up a preset of the CosyVoice`version` model as `group:key` (e.g. `dialect:四川`, `emotion:happy`)
    or a bare unique key. A CV3 preset asked of CV2 names the release that has it."""
    presets = INSTRUCT_PRESETS[version]
    group, _, key = name.partition(":")
    if key:
        if key in presets.get(group, {}):
            return presets[group][key]
    else:
        hits = [v for g in presets.values() for k, v in g.items() if k == name]
        if len(hits) == 1:
            return hits[0]
    choices = ", ".join(preset_names(version))
    owners = [f"CosyVoice{v}" for v in sorted(INSTRUCT_PRESETS) if v != version and name in _lookup_names(v)]
    if owners:
        raise InputError(f"{name!r} is a {'/'.join(owners)} instruct preset; this CosyVoice{version} model has: "
                         f"{choices}")
    raise InputError(f"unknown instruct preset {name!r}; choose one of: {choices}")


def _lookup_names(version: int) -> set[str]:
    """Every spelling preset_instruction accepts for that release: `group:key` and the bare keys."""
    return set(preset_names(version)) | {k for items in INSTRUCT_PRESETS[version].values() for k in items}
