"""The one fixed request every backend is timed on (sizes of each stage's inputs)."""

from __future__ import annotations

from dataclasses import dataclass

from ...config import ModelConfig
from ...token2wav import StreamSchedule

SIZES = ("tiny", "real")


@dataclass(frozen=True)
class Workload:
    """The one request every backend is timed on."""

    lm_prompt_speech_tokens: int = 150
    lm_text_tokens: int = 30
    decode_tokens: int = 100
    flow_tokens: int = 250               # 10 s at 25 tokens/s
    flow_prompt_tokens: int = 75         # 3 s
    vocoder_frames: int = 500            # 10 s at 50 frames/s
    seed: int = 0
    first_chunk_tokens: int = 10         # the smaller-first-chunk option's row (request.first_chunk_tokens)

    @property
    def prefill_len(self) -> int:
        return 1 + self.lm_text_tokens + 1 + self.lm_prompt_speech_tokens  # sos, text, task id, prompt speech

    @classmethod
    def quick(cls) -> Workload:
        """A 2 s request: checks that every stage runs on every backend in seconds, at any size."""
        return cls(lm_prompt_speech_tokens=15, lm_text_tokens=5, decode_tokens=10, flow_tokens=50,
                   flow_prompt_tokens=25, vocoder_frames=100)

    def stream_calls(self, cfg: ModelConfig, first_hop: int | None = None) -> list[tuple[int, bool]]:
        """The flow calls of the streamed request: (tokens so far, finalize) per chunk."""
        return StreamSchedule.of(cfg.streaming, first_hop).calls(self.flow_prompt_tokens, self.flow_tokens)

    def stream_first_tokens(self, cfg: ModelConfig, first_hop: int | None = None) -> int:
        """Speech tokens the first streaming chunk waits for: the first hop (official: aligned) plus the look-ahead
        (or the whole request when it is shorter, and the first chunk is then the last)."""
        return self.stream_calls(cfg, first_hop)[0][0]

    def stream_first_frames(self, cfg: ModelConfig, first_hop: int | None = None) -> int:
        first, final = self.stream_calls(cfg, first_hop)[0]
        return (first - (0 if final else cfg.streaming.pre_lookahead_len)) * cfg.flow.token_mel_ratio
