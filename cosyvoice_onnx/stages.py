"""The three neural stages as backend-neutral interfaces (numpy in, numpy out).

Each stage has a PyTorch implementation (`torch_backend`) and an ONNX Runtime one
(`onnx_backend`). The loops around them (sampling, the ODE solver, streaming) are
shared code that only ever calls these methods.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class LanguageModelStage(Protocol):
    """Qwen2-based speech-token LM. Logits are the raw `llm_decoder` outputs over the speech vocabulary."""

    backend: str

    def prefill(self, text_ids: np.ndarray, prompt_speech_ids: np.ndarray) -> tuple[np.ndarray, Any]:
        """Feeds `[sos] + text + [task_id] + prompt speech` and returns (logits [V] float32, cache)."""

    def step(self, token_id: int, cache: Any) -> tuple[np.ndarray, Any]:
        """Feeds one speech token and returns (logits [V] float32, the updated cache)."""


class FlowStage(Protocol):
    """Token-to-mel flow: token encoder plus the CFM velocity estimator.

    A stage whose `resident_solve` is true also offers `solve_resident(mu, mask, spks, cond, noise, n_steps,
    cfg_rate, streaming)`, flow_solver.solve_cfm with its state kept on the stage's device; token_to_mel uses it.
    """

    backend: str

    def embed_speaker(self, embedding: np.ndarray) -> np.ndarray:
        """[1, 192] CAM++ embedding -> [1, 80] (L2-normalise then affine)."""

    def encode_tokens(self, tokens: np.ndarray, finalize: bool, streaming: bool = False) -> np.ndarray:
        """[1, N] prompt+target tokens -> mu [1, 80, T_mel]. Not finalized: the last
        `pre_lookahead_len` tokens are look-ahead context only. `streaming` selects the chunked
        attention of encoders that have attention (CV2)."""

    def estimate(self, x: np.ndarray, mask: np.ndarray, mu: np.ndarray, t: np.ndarray,
                 spks: np.ndarray, cond: np.ndarray, streaming: bool) -> np.ndarray:
        """One velocity evaluation on the CFG batch of two: all [2, 80, T] except mask [2, 1, T],
        t [2], spks [2, 80]. `streaming` selects the chunked attention mask."""


class VocoderStage(Protocol):
    """HiFT vocoder: mel -> 24 kHz waveform; its NSF noise is given explicitly."""

    backend: str

    def vocode(self, mel: np.ndarray, finalize: bool, sine_noise: np.ndarray) -> np.ndarray:
        """mel [1, 80, T] -> speech [1, S]. `sine_noise` [1, L, harmonics+1], L = 480*T: CV3's fixed
        uniform buffer's first L samples, or CV2's fresh standard-normal draw. Not finalized (CV3 only):
        the last frames act as look-ahead and the output is 480*(T-8) samples long."""

    def vocode_with_source(self, mel: np.ndarray, sine_noise: np.ndarray,
                           cache_source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CV2 streaming (finalized): the NSF source's first C samples are replaced by cache_source
        [1, 1, C] (C may be 0). Returns (speech [1, 480*T], the source used [1, 1, 480*T])."""
