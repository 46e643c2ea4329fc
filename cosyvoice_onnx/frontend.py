"""Frontend: prompt audio to speech tokens, speaker embedding and prompt mel; text to LM token ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import audio, features, text as textproc
from .config import ModelConfig
from .errors import InputError, ModelFolderError
from .prompts import Mode, lm_prompt_text, tts_text_prefix
from .tokenizer import TextTokenizer

if TYPE_CHECKING:  # the glossary module imports the voice store, which imports this module
    from .glossary import Glossary

SPEECH_TOKENIZER_RATE = 16000
MAX_PROMPT_SECONDS = 30.0  # the speech tokenizer asserts this


@dataclass
class PromptFeatures:
    """Everything the model needs from a prompt clip; this is what a saved voice stores."""

    speech_tokens: np.ndarray                 # int64 [1, n]
    mel: np.ndarray                           # float32 [1, 2n, 80] (24 kHz prompt mel)
    embedding: np.ndarray                     # float32 [1, 192] CAM++
    transcript: str = ""
    meta: dict = field(default_factory=dict)

    def trimmed(self, ratio: int = 2) -> "PromptFeatures":
        tokens, mel = features.align_prompt(self.speech_tokens, self.mel, ratio)
        return PromptFeatures(tokens, mel, self.embedding, self.transcript, dict(self.meta))


def onnx_session(path: Path, threads: int = 1, providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ModelFolderError(f"{path}: cannot open ONNX model ({str(exc).splitlines()[0][:200]})") from exc


class Frontend:
    """Prompt feature extraction (ONNX speech tokenizer + CAM++) and text processing."""

    def __init__(self, cfg: ModelConfig, tokenizer: TextTokenizer, speech_tokenizer_path: Path, campplus_path: Path):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.speech_tokenizer = onnx_session(speech_tokenizer_path)
        self.campplus = onnx_session(campplus_path)

    # ------------------------------------------------------------------ audio side

    def speech_tokens(self, wav16k: np.ndarray) -> np.ndarray:
        if len(wav16k) / SPEECH_TOKENIZER_RATE > MAX_PROMPT_SECONDS:
            raise InputError(f"audio longer than {MAX_PROMPT_SECONDS:.0f} s cannot be tokenized; trim the clip")
        mel = features.whisper_log_mel(wav16k, n_mels=128)
        inputs = self.speech_tokenizer.get_inputs()
        out = self.speech_tokenizer.run(None, {
            inputs[0].name: mel.astype(np.float32),
            inputs[1].name: np.array([mel.shape[2]], dtype=np.int32),
        })[0]
        return np.asarray(out).reshape(1, -1).astype(np.int64)

    def speaker_embedding(self, wav16k: np.ndarray) -> np.ndarray:
        feat = features.campplus_features(wav16k)[None].astype(np.float32)
        name = self.campplus.get_inputs()[0].name
        out = self.campplus.run(None, {name: feat})[0]
        return np.asarray(out, dtype=np.float32).reshape(1, -1)

    def extract_prompt(self, source, transcript: str = "", trim: bool = True) -> PromptFeatures:
        """Prompt clip (path, bytes or (rate, array)) -> features; the clip is validated first."""
        wav16k = audio.load_audio(source, SPEECH_TOKENIZER_RATE)
        audio.check_prompt_audio(wav16k, SPEECH_TOKENIZER_RATE, max_seconds=MAX_PROMPT_SECONDS)
        wav24k = audio.load_audio(source, self.cfg.features.sample_rate)
        prompt = PromptFeatures(
            speech_tokens=self.speech_tokens(wav16k),
            mel=features.prompt_mel(wav24k, self.cfg.features),
            embedding=self.speaker_embedding(wav16k),
            transcript=transcript or "",
            meta={"seconds": round(len(wav16k) / SPEECH_TOKENIZER_RATE, 3)},
        )
        return prompt.trimmed(self.cfg.flow.token_mel_ratio) if trim else prompt

    # ------------------------------------------------------------------ text side

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text), dtype=np.int64)

    def check_release_tokens(self, text: str) -> None:
        """Refuses tokens this release does not have (e.g. CV3 pinyin/ARPAbet on CV2) instead of reading them out."""
        foreign = self.tokenizer.other_release_tokens(text)
        if foreign:
            raise InputError(
                f"{', '.join(foreign[:8])}: not tokens of this CosyVoice{self.cfg.version} model (they belong to "
                "another CosyVoice release, e.g. CosyVoice3's pinyin/ARPAbet pronunciation tokens); it would read "
                "them as plain characters. Write the words instead, or use a model that has them.")

    def apply_glossary(self, text: str, glossary: Glossary | None) -> str:
        """The text as the model receives it before normalisation: the glossary's readings substituted."""
        if glossary is None or not len(glossary):
            return text
        glossary.check_tokenizer(self.tokenizer.added_tokens)
        return glossary.apply(text)

    def text_segments(self, text: str, split: bool = True, glossary: Glossary | None = None) -> list[str]:
        if not text or not text.strip():
            raise InputError("the text to speak is empty")
        text = self.apply_glossary(text, glossary)
        self.check_release_tokens(text)
        segments = textproc.normalize(text, split=split, tokenizer=self.tokenizer)
        segments = [segments] if isinstance(segments, str) else list(segments)
        segments = [s for s in segments if s.strip()]
        if not segments:
            raise InputError("the text has nothing to speak after normalisation (only punctuation?)")
        return segments

    def lm_inputs(self, mode: Mode, segment: str, transcript: str | None, instruction: str | None):
        """(text ids, prompt text ids) for one segment of one request."""
        prompt = lm_prompt_text(self.cfg, mode, transcript, instruction)
        self.check_release_tokens(prompt)
        text_ids = self.encode(tts_text_prefix(self.cfg, mode, segment) + segment)
        return text_ids, self.encode(prompt) if prompt else np.zeros(0, dtype=np.int64)
