"""The causal HiFT vocoder on ONNX Runtime (numpy in, numpy out; never imports torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelConfig
from .session import make_session

GRAPH_NAMES = {True: "hift_final", False: "hift_stream"}
PRECISIONS = ("fp32", "fp16", "int8")
# Future frames the f0 predictor's first conv reads (torch_backend.hift.F0_LOOK_RIGHT; that module imports torch).
F0_LOOK_RIGHT = 3


class OnnxVocoder:
    """VocoderStage on the exported `hift_final` / `hift_stream` graphs.

    Every precision runs the fp32 graphs: the f0 predictor overflows fp16 and int8 audibly degrades a vocoder.
    """

    backend = "onnx"

    def __init__(self, export_dir: Path, cfg: ModelConfig, precision: str = "fp32", threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        self.cfg = cfg.hift
        self.precision = precision
        export_dir = Path(export_dir)
        self.sessions = {finalize: make_session(export_dir / f"{name}.onnx", threads=threads)
                         for finalize, name in GRAPH_NAMES.items()}

    def source_samples(self, frames: int, finalize: bool) -> int:
        """Noise samples the graph consumes for `frames` mel frames."""
        return self.cfg.hop_samples * (frames if finalize else frames - F0_LOOK_RIGHT)

    def vocode(self, mel: np.ndarray, finalize: bool, sine_noise: np.ndarray) -> np.ndarray:
        frames = mel.shape[2]
        min_frames = 1 if finalize else F0_LOOK_RIGHT + self.cfg.conv_pre_look_right + 1
        if frames < min_frames:
            raise ValueError(f"the vocoder needs at least {min_frames} mel frames here, got {frames}")
        needed = self.source_samples(frames, finalize)
        if sine_noise.shape[1] < needed:
            raise ValueError(f"sine_noise has {sine_noise.shape[1]} samples; {needed} are needed for {frames} frames")
        feeds = {
            "mel": np.ascontiguousarray(mel, dtype=np.float32),
            # Exactly the samples this length uses: callers hand over 480*T, more than the look-ahead graph needs.
            "sine_noise": np.ascontiguousarray(sine_noise[:, :needed], dtype=np.float32),
        }
        return self.sessions[bool(finalize)].run(["speech"], feeds)[0]
