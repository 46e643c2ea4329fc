"""The HiFT vocoder on ONNX Runtime (numpy in, numpy out; never imports torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..devices import CPU, Device
from ..noise import vocoder_source_samples
from ..plan import EXPORT_PRECISIONS, graph_files
from .session import make_session

# HiFTConfig.causal -> {finalize: graph role} (plan.graph_files names the files). The causal (CV3) vocoder has a look-ahead graph for streaming; the
# non-causal (CV2) one is always finalized and takes the previous chunk's source instead (`cache_source`).
GRAPHS = {True: {True: "hift_final", False: "hift_stream"}, False: {True: "hift_cached"}}
# Future frames the f0 predictor's first conv reads (torch_backend.hift.F0_LOOK_RIGHT; that module imports torch).
F0_LOOK_RIGHT = 3


class OnnxVocoder:
    """VocoderStage on the exported HiFT graphs (`GRAPHS`).

    Every precision runs the fp32 graphs: the f0 predictor overflows fp16 and int8 audibly degrades a vocoder.
    """

    backend = "onnx"

    def __init__(self, export_dir: Path, cfg: ModelConfig, precision: str = "fp32", threads: int | None = None, *,
                 graphs: dict[str, str] | None = None, device: Device = CPU):
        """`graphs`: file names by role (GRAPHS), as the export's manifest lists them."""
        if precision not in EXPORT_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(EXPORT_PRECISIONS)}")
        self.cfg = cfg.hift
        self.precision = precision
        self.device = device
        export_dir = Path(export_dir)
        graphs = graphs or graph_files("vocoder", "fp32", self.cfg.causal)
        self.sessions = {finalize: make_session(export_dir / graphs[role], threads=threads, device=device)
                         for finalize, role in GRAPHS[self.cfg.causal].items()}

    def source_samples(self, frames: int, finalize: bool) -> int:
        """Noise samples the graph consumes for `frames` mel frames."""
        return self.cfg.hop_samples * (frames if finalize else frames - F0_LOOK_RIGHT)

    def _feeds(self, mel: np.ndarray, finalize: bool, sine_noise: np.ndarray) -> dict[str, np.ndarray]:
        needed = vocoder_source_samples(self.cfg, mel.shape[2], finalize, sine_noise.shape[1])
        return {
            "mel": np.ascontiguousarray(mel, dtype=np.float32),
            # Exactly the samples this length uses: callers hand over 480*T, more than the look-ahead graph needs.
            "sine_noise": np.ascontiguousarray(sine_noise[:, :needed], dtype=np.float32),
        }

    def vocode(self, mel: np.ndarray, finalize: bool, sine_noise: np.ndarray) -> np.ndarray:
        finalize = bool(finalize)
        if finalize not in self.sessions:
            raise ValueError("the non-causal (CosyVoice2) HiFT has no look-ahead mode; call it with finalize=True")
        if not self.cfg.causal:
            # Its one graph always takes a source cache; without streaming that cache is empty.
            return self.vocode_with_source(mel, sine_noise, np.zeros((1, 1, 0), dtype=np.float32))[0]
        return self.sessions[finalize].run(["speech"], self._feeds(mel, finalize, sine_noise))[0]

    def vocode_with_source(self, mel: np.ndarray, sine_noise: np.ndarray,
                           cache_source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.cfg.causal:
            raise ValueError("only the non-causal (CosyVoice2) HiFT takes a source cache")
        feeds = self._feeds(mel, True, sine_noise)
        cache = np.ascontiguousarray(np.asarray(cache_source, dtype=np.float32).reshape(1, 1, -1))
        if cache.shape[2] > feeds["sine_noise"].shape[1]:
            raise ValueError(f"cache_source has {cache.shape[2]} samples; {mel.shape[2]} frames make only "
                             f"{feeds['sine_noise'].shape[1]}")
        speech, source = self.sessions[True].run(["speech", "source"], {**feeds, "cache_source": cache})
        return speech, source
