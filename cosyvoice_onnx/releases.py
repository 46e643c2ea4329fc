"""The per-release table: everything that tells CosyVoice3 and CosyVoice2 apart, and which one a folder holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import LLMConfig, ModelConfig
from .errors import ModelFolderError


@dataclass(frozen=True)
class SpeechIdLayout:
    """Where a release keeps its special speech-LM ids, relative to speech_token_size n."""

    extra_rows: int                        # speech_embedding / llm_decoder rows beyond the n codes
    eos_offset: int                        # eos = n + eos_offset
    fill_offset: int                       # fill = n + fill_offset (bistream)
    stop_count: int                        # stop ids are n .. n + stop_count - 1
    sos_task_rows: tuple[int, int]         # rows of sos and task_id in their table
    sos_task_in_speech_embedding: bool     # True: rows n + row of speech_embedding; False: rows of llm_embedding
    decoder_bias: bool
    silent_tokens: tuple[int, ...]         # emitted-token filter (empty: none)


@dataclass(frozen=True)
class Release:
    """Everything that tells the two releases apart beyond the dimensions their yaml gives."""

    yaml_name: str
    speech_tokenizer_file: str
    tokenizer_version: str                 # tokenizer.ADDED_TOKENS_BY_VERSION key
    classes: tuple[str, str, str]          # official (llm, flow, hift) classes, checked like get_model_type
    requires_endofprompt: bool
    system_prompt: str | None
    speech_ids: SpeechIdLayout
    prompt_mel_fmax: float | None          # the released yaml's feat_extractor fmax (a folder's yaml overrides it)
    flow_kind: str                         # FlowConfig.kind, which also picks the yaml reader
    hift_causal: bool
    hift_noise: str                        # HiFTConfig.noise
    vocoder_streaming: str                 # StreamingConfig.vocoder
    llm_variants: tuple[str, ...]          # model_files.LLM_VARIANTS the release ships


RELEASES: dict[int, Release] = {
    3: Release(
        yaml_name="cosyvoice3.yaml", speech_tokenizer_file="speech_tokenizer_v3.onnx", tokenizer_version="cosyvoice3",
        classes=("CosyVoice3LM", "CausalMaskedDiffWithDiT", "CausalHiFTGenerator"),
        requires_endofprompt=True, system_prompt="You are a helpful assistant.",
        speech_ids=SpeechIdLayout(extra_rows=200, eos_offset=1, fill_offset=3, stop_count=200, sos_task_rows=(0, 2),
                                  sos_task_in_speech_embedding=True, decoder_bias=False,
                                  silent_tokens=(1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323)),
        prompt_mel_fmax=None, flow_kind="dit", hift_causal=True, hift_noise="fixed_uniform",
        vocoder_streaming="accumulate", llm_variants=("base", "rl")),
    2: Release(
        yaml_name="cosyvoice2.yaml", speech_tokenizer_file="speech_tokenizer_v2.onnx", tokenizer_version="cosyvoice2",
        classes=("Qwen2LM", "CausalMaskedDiffWithXvec", "HiFTGenerator"),
        requires_endofprompt=False, system_prompt=None,
        speech_ids=SpeechIdLayout(extra_rows=3, eos_offset=0, fill_offset=2, stop_count=3, sos_task_rows=(0, 1),
                                  sos_task_in_speech_embedding=False, decoder_bias=True, silent_tokens=()),
        prompt_mel_fmax=8000.0, flow_kind="conformer_unet", hift_causal=False, hift_noise="random_normal",
        vocoder_streaming="cache_crossfade", llm_variants=("base",)),
}
# The yaml whose presence selects the version, checked in this order.
VERSION_YAML = {version: release.yaml_name for version, release in RELEASES.items()}


def apply_speech_ids(llm: LLMConfig, speech_token_size: int, layout: SpeechIdLayout) -> None:
    """Sets every special speech id of `llm` from the release's layout."""
    n = speech_token_size
    first_row = n if layout.sos_task_in_speech_embedding else 0
    llm.speech_token_size = n
    llm.speech_vocab_size = n + layout.extra_rows
    llm.sos, llm.task_id = (first_row + row for row in layout.sos_task_rows)
    llm.eos, llm.fill = n + layout.eos_offset, n + layout.fill_offset
    llm.stop_token_ids = tuple(range(n, n + layout.stop_count))
    llm.sos_task_in_speech_embedding = layout.sos_task_in_speech_embedding
    llm.decoder_bias = layout.decoder_bias
    llm.silent_tokens = layout.silent_tokens
    # Official quirk in both releases: below min_len the sampler masks id n, which is CV2's eos but CV3's sos.
    llm.min_len_mask_id = n


def release_config(version: int) -> ModelConfig:
    """The released model's configuration for `version` (the real dimensions), without reading a folder."""
    if version not in RELEASES:
        raise ModelFolderError(f"CosyVoice{version} is not supported; supported: "
                               f"{', '.join(f'CosyVoice{v}' for v in sorted(RELEASES))}")
    r = RELEASES[version]
    cfg = ModelConfig(version=version, yaml_name=r.yaml_name, speech_tokenizer_file=r.speech_tokenizer_file,
                      requires_endofprompt=r.requires_endofprompt, system_prompt=r.system_prompt,
                      tokenizer_version=r.tokenizer_version)
    apply_speech_ids(cfg.llm, cfg.llm.speech_token_size, r.speech_ids)
    cfg.flow.kind = r.flow_kind  # FlowConfig's defaults are the released sizes of both flows
    cfg.hift.causal, cfg.hift.noise = r.hift_causal, r.hift_noise
    cfg.streaming.vocoder = r.vocoder_streaming
    cfg.features.fmax = r.prompt_mel_fmax
    return cfg


def detect_version(model_dir: Path) -> int:
    model_dir = Path(model_dir)
    if model_dir.exists() and not model_dir.is_dir():
        raise ModelFolderError(f"{model_dir}: is a file; --model takes the model folder (the one holding the yaml)")
    if not model_dir.is_dir():
        raise ModelFolderError(f"{model_dir}: model folder not found")
    if (model_dir / "cosyvoice.yaml").exists() and not any((model_dir / y).exists() for y in VERSION_YAML.values()):
        raise ModelFolderError(f"{model_dir}: CosyVoice 1 (cosyvoice.yaml) is not supported; use Fun-CosyVoice3 or CosyVoice2")
    for version, name in VERSION_YAML.items():
        if (model_dir / name).exists():
            return version
    raise ModelFolderError(
        f"{model_dir}: not a CosyVoice model folder (no {' or '.join(VERSION_YAML.values())}). "
        "Point --model at the folder downloaded from HuggingFace/ModelScope, e.g. Fun-CosyVoice3-0.5B-2512."
    )
