"""Speech tokens to waveform through the flow and vocoder stages, whole or streamed (shared by every backend)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig, StreamingConfig
from .flow_solver import token_to_mel
from .noise import F0_LOOK_RIGHT, VocoderNoise
from .stages import FlowStage, VocoderStage


def interpolate_linear(mel: np.ndarray, size: int) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='linear', align_corners=False) over the last axis, in float32."""
    n_in = mel.shape[-1]
    scale = np.float32(n_in) / np.float32(size)
    src = scale * (np.arange(size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    w0 = np.float32(1.0) - w1
    return (w0 * mel[..., i0] + w1 * mel[..., i1]).astype(np.float32)


@dataclass
class StreamSchedule:
    """The official chunking: a first hop aligned to 25-token boundaries of prompt+target, then growing hops.

    `first_hop` (None: official) replaces the first hop by that many tokens, unaligned: the first audio comes
    sooner, and the mel frames of the flow's attention chunk the cut falls in differ from the official stream's
    (`bench` reports by how much). The hops after it follow the official growth."""

    token_hop_len: int = 25
    token_max_hop_len: int = 100
    scale_factor: int = 2
    lookahead: int = 3
    first_hop: int | None = None

    @property
    def longest_chunk(self) -> int:
        """The most tokens one chunk waits for (its hop and look-ahead): how far ahead decoding needs to run."""
        return max(self.token_max_hop_len, self.first_hop or 0) + self.lookahead

    @classmethod
    def of(cls, streaming: StreamingConfig, first_hop: int | None = None) -> StreamSchedule:
        """The schedule a model's streaming config sets; `first_hop` as above."""
        return cls(streaming.token_hop_len, streaming.token_max_hop_len, streaming.stream_scale_factor,
                   streaming.pre_lookahead_len, first_hop)

    def calls(self, prompt_tokens: int, tokens: int) -> list[tuple[int, bool]]:
        """The flow calls a stream of `tokens` makes: (tokens so far, finalize) per chunk, as `Token2Wav.stream`
        runs them once every token has arrived."""
        out, offset, hops = [], 0, self.hops(prompt_tokens)
        hop = next(hops)
        while tokens - offset >= hop + self.lookahead:
            out.append((offset + hop + self.lookahead, False))
            offset += hop
            hop = next(hops)
        if tokens:
            out.append((tokens, True))
        return out

    def hops(self, prompt_tokens: int) -> Iterator[int]:
        pad = int(np.ceil(prompt_tokens / self.token_hop_len) * self.token_hop_len - prompt_tokens)
        hop = self.token_hop_len
        yield hop + pad if self.first_hop is None else self.first_hop
        while True:
            hop = min(self.token_max_hop_len, hop * self.scale_factor)
            yield hop


def fade_in_out(head: np.ndarray, tail: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The official `fade_in_out`: head's first n = len(window)/2 samples become head·window[:n] + the last n of
    tail·window[n:]. The float64 window makes the sum float64; it is stored back in head's float32."""
    n = len(window) // 2
    out = head.copy()
    out[:n] = head[:n] * window[:n] + tail[-n:] * window[n:]
    return out


class AccumulatedMelStream:
    """CV3 vocoder streaming: the causal vocoder runs over all mel so far and only the samples not
    yet emitted are returned; with its fixed noise the earlier samples come out exactly as before."""

    def __init__(self, token2wav: Token2Wav, noise: VocoderNoise):
        self._token2wav = token2wav
        self._noise = noise
        self._mel = np.zeros((1, token2wav.cfg.flow.mel_dim, 0), dtype=np.float32)
        self._emitted = 0

    def push(self, mel: np.ndarray, finalize: bool) -> np.ndarray:
        self._mel = np.concatenate([self._mel, mel], axis=2)
        new = self._token2wav.vocode(self._mel, finalize=finalize, noise=self._noise)[0][self._emitted:]
        self._emitted += len(new)
        return new


class CachedSourceStream:
    """CV2 vocoder streaming: a chunk is vocoded with the previous chunk's last mel frames in front
    and their NSF source forced at its start; that overlap is cross-faded with a Hamming window, and the last
    overlap of every non-final chunk is held back for the next one."""

    def __init__(self, token2wav: Token2Wav, noise: VocoderNoise):
        self._token2wav = token2wav
        self._noise = noise
        self._cache_frames = token2wav.cfg.streaming.vocoder_cache_frames
        self._overlap = self._cache_frames * token2wav.cfg.hift.hop_samples
        # Symmetric, like the official np.hamming window.
        self._window = np.hamming(2 * self._overlap)
        self._mel: np.ndarray | None = None
        self._source = np.zeros((1, 1, 0), dtype=np.float32)
        self._speech: np.ndarray | None = None

    def push(self, mel: np.ndarray, finalize: bool) -> np.ndarray:
        if self._mel is not None:
            mel = np.concatenate([self._mel, mel], axis=2)
        speech, source = self._token2wav.vocode_with_source(mel, self._source, self._noise)
        speech = speech[0]
        if self._speech is not None:
            speech = fade_in_out(speech, self._speech, self._window)
        if finalize:
            return speech
        self._mel = mel[:, :, -self._cache_frames:]
        self._source = source[:, :, -self._overlap:]
        self._speech = speech[-self._overlap:]
        return speech[:-self._overlap]


# StreamingConfig.vocoder -> how the vocoder follows the streamed mel chunks.
VOCODER_STREAMS = {"accumulate": AccumulatedMelStream, "cache_crossfade": CachedSourceStream}


class Token2Wav:
    """Flow + vocoder over speech tokens, with the noise the official model uses (fixed buffers for the flow and
    the CV3 vocoder, per-call draws for the CV2 vocoder).

    Holds no per-request state: the vocoder noise of a request comes in as `noise` (from `request_noise(seed)`),
    so one object serves concurrent requests. Without `noise`, a call draws from seed 0.
    """

    def __init__(self, cfg: ModelConfig, flow: FlowStage, vocoder: VocoderStage, flow_noise: np.ndarray,
                 hift_noise: VocoderNoise):
        self.cfg = cfg
        self.flow = flow
        self.vocoder = vocoder
        self.flow_noise = flow_noise
        self.hift_noise = hift_noise

    def mel(self, tokens: np.ndarray, prompt_tokens: np.ndarray, prompt_mel: np.ndarray, embedding: np.ndarray,
            streaming: bool, finalize: bool) -> np.ndarray:
        return token_to_mel(self.flow, tokens.reshape(1, -1), prompt_tokens.reshape(1, -1), prompt_mel, embedding,
                            self.flow_noise, streaming=streaming, finalize=finalize, cfg=self.cfg.flow)

    def with_stages(self, flow: FlowStage, vocoder: VocoderStage) -> Token2Wav:
        """The same noise over other stage objects (e.g. a request's timed views of these)."""
        return Token2Wav(self.cfg, flow, vocoder, self.flow_noise, self.hift_noise)

    def request_noise(self, seed: int) -> VocoderNoise:
        """The vocoder noise of one request: CV3's shared fixed buffer, or CV2's normal draws from `seed`."""
        return self.hift_noise.for_request(seed)

    def vocode(self, mel: np.ndarray, finalize: bool, noise: VocoderNoise | None = None) -> np.ndarray:
        return self.vocoder.vocode(mel, finalize, self._sine_noise(mel, noise))

    def vocode_with_source(self, mel: np.ndarray, cache_source: np.ndarray,
                           noise: VocoderNoise | None = None) -> tuple[np.ndarray, np.ndarray]:
        """CV2: (speech, source) with the source's start forced to `cache_source` (see VocoderStage)."""
        return self.vocoder.vocode_with_source(mel, self._sine_noise(mel, noise), cache_source)

    def _sine_noise(self, mel: np.ndarray, noise: VocoderNoise | None) -> np.ndarray:
        noise = self.request_noise(0) if noise is None else noise
        return noise.sine_noise(mel.shape[2] * self.cfg.hift.hop_samples)

    def whole(self, tokens, prompt_tokens, prompt_mel, embedding, speed: float = 1.0,
              noise: VocoderNoise | None = None) -> np.ndarray:
        """Non-streaming: full attention, finalize, optional speed change by mel interpolation."""
        mel = self.mel(np.asarray(tokens, dtype=np.int64), prompt_tokens, prompt_mel, embedding,
                       streaming=False, finalize=True)
        if speed != 1.0:
            mel = interpolate_linear(mel, int(mel.shape[2] / speed))
        return self.vocode(mel, finalize=True, noise=noise)[0]

    def min_first_hop(self) -> int:
        """The fewest tokens a first chunk can have and still make audio: the streamed vocoder keeps some mel frames
        back until the next chunk (CV3: what its causal f0 predictor and conv_pre read ahead; CV2: the frames it
        carries into the next call), so the first chunk must bring more than those."""
        if self.cfg.streaming.vocoder == "accumulate":
            held_back = F0_LOOK_RIGHT + self.cfg.hift.conv_pre_look_right + 1
        else:
            held_back = self.cfg.streaming.vocoder_cache_frames
        return held_back // self.cfg.flow.token_mel_ratio + 1

    def schedule(self, first_hop: int | None = None) -> StreamSchedule:
        """The model's streaming chunk schedule; `first_hop` as in StreamSchedule."""
        return StreamSchedule.of(self.cfg.streaming, first_hop)

    def stream(self, token_source: Iterable[int], prompt_tokens, prompt_mel, embedding,
               schedule: StreamSchedule | None = None, noise: VocoderNoise | None = None) -> Iterator[np.ndarray]:
        """Yields audio chunks as tokens arrive; the chunks concatenate to the official streaming output.

        Each flow call recomputes prompt+all tokens so far with chunk masks; the new mel goes to
        the vocoder stream `cfg.streaming.vocoder` names (VOCODER_STREAMS).
        """
        schedule = schedule or self.schedule()
        ratio = self.cfg.flow.token_mel_ratio
        tokens: list[int] = []
        offset = 0
        hops = schedule.hops(int(np.asarray(prompt_tokens).size))
        hop = next(hops)
        noise = self.request_noise(0) if noise is None else noise
        vocoder_stream = VOCODER_STREAMS[self.cfg.streaming.vocoder](self, noise)

        def run(upto: int, finalize: bool) -> np.ndarray:
            chunk = np.asarray(tokens[:upto], dtype=np.int64)
            mel = self.mel(chunk, prompt_tokens, prompt_mel, embedding, streaming=not finalize, finalize=finalize)
            return vocoder_stream.push(mel[:, :, offset * ratio:], finalize)

        for token in token_source:
            tokens.append(int(token))
            if len(tokens) - offset >= hop + schedule.lookahead:
                yield run(offset + hop + schedule.lookahead, finalize=False)
                offset += hop
                hop = next(hops)
        # A segment whose LM stopped before its first token has no speech: it adds no audio, as in `whole`
        # callers (the vocoder cannot run on zero mel frames).
        if tokens:
            yield run(len(tokens), finalize=True)
