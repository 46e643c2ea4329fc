"""FlowStage on ONNX Runtime: the exported token encoder and velocity estimator, CV3 or CV2 (numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..devices import CPU, Device
from ..errors import ExportError, InputError
from ..plan import EXPORT_PRECISIONS, graph_files
from .session import make_session

# embed_speaker feeds the encoder one placeholder token: the graph computes spks from the embedding alone.
PLACEHOLDER_TOKENS = np.zeros((1, 1), dtype=np.int64)
# Per FlowConfig.kind. The conformer (CV2) attends over all tokens, so a non-final mu is not a slice of the final
# one: its graph takes the look-ahead tokens ([1, 0] when finalized) and the streaming switch as inputs.
ENCODER_IO = {"dit": (["tokens", "embedding"], ["mu", "spks"]),
              "conformer_unet": (["tokens", "embedding", "context", "streaming"], ["mu", "spks"])}
ESTIMATOR_IO = (["x", "mask", "mu", "t", "spks", "cond", "streaming"], ["velocity"])


def _check_io(session, path: Path, io: tuple[list[str], list[str]], mel_dim: int) -> None:
    """A graph from another export version or another model is refused here, not mid-synthesis."""
    got = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if got != io:
        raise ExportError(f"{path}: inputs/outputs {got}, expected {io}; the export is from another version: "
                          "re-export")
    graph_mel_dim = session.get_outputs()[0].shape[1]
    if graph_mel_dim != mel_dim:
        raise ExportError(f"{path}: made for {graph_mel_dim} mel bins but the model has {mel_dim}: re-export")


class OnnxFlow:
    """flow_encoder.onnx gives mu and spks; flow_estimator[.fp16|.int8].onnx gives the velocity."""

    backend = "onnx"

    def __init__(self, export_dir: Path, cfg: ModelConfig, precision: str = "fp32", threads: int | None = None, *,
                 graphs: dict[str, str] | None = None, device: Device = CPU):
        """`graphs`: file names by role (flow_encoder, flow_estimator), as the export's manifest lists them."""
        if precision not in EXPORT_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} ({', '.join(EXPORT_PRECISIONS)})")
        export_dir = Path(export_dir)
        self.cfg = cfg.flow
        self.precision = precision
        self.device = device
        graphs = graphs or graph_files("flow", precision)
        encoder_path, estimator_path = export_dir / graphs["flow_encoder"], export_dir / graphs["flow_estimator"]
        self.encoder = make_session(encoder_path, threads=threads, device=device)
        self.estimator = make_session(estimator_path, threads=threads, device=device)
        self.encoder_inputs = ENCODER_IO[self.cfg.kind][0]
        _check_io(self.encoder, encoder_path, ENCODER_IO[self.cfg.kind], self.cfg.mel_dim)
        _check_io(self.estimator, estimator_path, ESTIMATOR_IO, self.cfg.mel_dim)

    def _run_encoder(self, output: str, tokens: np.ndarray, embedding: np.ndarray | None = None,
                     n_context: int = 0, streaming: bool = False) -> np.ndarray:
        """Runs the encoder graph; the last `n_context` tokens are look-ahead, for graphs that take them apart."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if embedding is None:
            embedding = np.zeros((1, self.cfg.spk_embed_dim), dtype=np.float32)
        feeds = {"tokens": tokens, "embedding": np.ascontiguousarray(embedding, dtype=np.float32)}
        if "context" in self.encoder_inputs:
            split = tokens.shape[1] - n_context
            feeds.update(tokens=np.ascontiguousarray(tokens[:, :split]),
                         context=np.ascontiguousarray(tokens[:, split:]), streaming=np.array([bool(streaming)]))
        return self.encoder.run([output], feeds)[0]

    def embed_speaker(self, embedding: np.ndarray) -> np.ndarray:
        return self._run_encoder("spks", PLACEHOLDER_TOKENS, embedding)

    def encode_tokens(self, tokens: np.ndarray, finalize: bool, streaming: bool = False) -> np.ndarray:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        lookahead = self.cfg.pre_lookahead_len
        if not finalize and tokens.shape[1] <= lookahead:
            raise InputError(f"a non-final flow chunk needs more than {lookahead} tokens, got {tokens.shape[1]}")
        if "context" in self.encoder_inputs:
            return self._run_encoder("mu", tokens, n_context=0 if finalize else lookahead, streaming=streaming)
        mu = self._run_encoder("mu", tokens)
        if finalize:
            return mu
        # The look-ahead conv sees at most pre_lookahead_len tokens to the right, so every earlier frame is the
        # same with or without the final zero padding; only the look-ahead tokens' own frames go.
        return mu[:, :, : mu.shape[2] - self.cfg.pre_lookahead_len * self.cfg.token_mel_ratio]

    def estimate(self, x, mask, mu, t, spks, cond, streaming: bool) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(value, dtype=np.float32)
                 for name, value in (("x", x), ("mask", mask), ("mu", mu), ("t", t), ("spks", spks), ("cond", cond))}
        feeds["streaming"] = np.array([bool(streaming)])
        return self.estimator.run(["velocity"], feeds)[0]
