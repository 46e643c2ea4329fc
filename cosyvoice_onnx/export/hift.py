"""Export of the HiFT vocoder: CV3's causal one as `hift_final` + `hift_stream` (look-ahead), CV2's as `hift_cached`."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import ModelConfig
from .graph_fixes import drop_empty_pad_values
from ..onnx_backend.hift import GRAPHS
from ..plan import EXPORT_PRECISIONS, graph_files
from ..torch_backend.hift import F0_LOOK_RIGHT, CausalHiFT, F0Predictor, PaddedConv1d, splice_source

OPSET = 17
# Frames the example input has while tracing; every length is dynamic, this only has to be valid in both modes.
TRACE_FRAMES = 24
# CV2's example source cache while tracing (its length is dynamic too, zero included).
TRACE_CACHE_FRAMES = 8


def _frozen_copy(hift: CausalHiFT) -> CausalHiFT:
    """A copy with weight norm folded into plain weights and the DFT-conv STFT selected (no torch.stft in the graph)."""
    # A fresh instance, not a deepcopy: a copy shares its parametrized classes with the original, and removing
    # the parametrization from one deletes the `weight` property of both.
    module = CausalHiFT(hift.cfg).eval()
    module.load_state_dict(hift.state_dict())
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    module.stft.use_torch_fft = False
    return module


class DoubleF0Graph(nn.Module):
    """The f0 predictor in float64, with each convolution written as shifted slices and one MatMul.

    The official runs this predictor in float64; ONNX Runtime's CPU Conv and Elu have no float64 kernels,
    but Slice/Concat/MatMul/Exp/Where do, so this form keeps the precision in the graph.
    """

    def __init__(self, predictor: F0Predictor):
        super().__init__()
        convs = [layer for layer in predictor.condnet if isinstance(layer, PaddedConv1d)]
        self.pads = [(conv.left, conv.right) for conv in convs]
        self.kernel_sizes = [conv.kernel_size[0] for conv in convs]
        for index, conv in enumerate(convs):
            if conv.stride[0] != 1 or conv.dilation[0] != 1:
                raise ValueError("the f0 predictor's convolutions are expected to be plain stride-1 convs")
            weight = conv.weight.detach().double()  # [out, in, k] -> [out, k*in], matching the slice order
            self.register_buffer(f"weight{index}", weight.permute(0, 2, 1).reshape(weight.shape[0], -1))
            self.register_buffer(f"bias{index}", conv.bias.detach().double().unsqueeze(-1))
        self.register_buffer("head_weight", predictor.classifier.weight.detach().double())  # [1, C]
        self.register_buffer("head_bias", predictor.classifier.bias.detach().double())

    def forward(self, mel: torch.Tensor, finalize: bool) -> torch.Tensor:
        """mel [1, C, T] float64 -> f0 [1, T] (finalize) or [1, T-3] float64."""
        x = mel
        for index, ((left, right), kernel) in enumerate(zip(self.pads, self.kernel_sizes)):
            if index == 0 and not finalize:
                right = 0  # the last frames are real look-ahead instead of zeros
            x = nn.functional.pad(x, (left, right))
            frames = x.shape[2] - kernel + 1
            columns = torch.cat([x[:, :, shift:shift + frames] for shift in range(kernel)], dim=1)
            x = torch.matmul(getattr(self, f"weight{index}"), columns) + getattr(self, f"bias{index}")
            x = torch.where(x > 0, x, torch.exp(x) - 1.0)  # ELU(alpha=1)
        return torch.abs(torch.matmul(self.head_weight, x) + self.head_bias.unsqueeze(-1)).squeeze(1)


def _example(hift: CausalHiFT, finalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    samples = hift.source_samples(TRACE_FRAMES, finalize)
    mel = torch.randn(1, hift.cfg.in_channels, TRACE_FRAMES) - 5.0
    return mel, torch.rand(1, samples, hift.cfg.nb_harmonics + 1)


class HiftGraph(nn.Module):
    """Causal (CV3): mel [1, 80, T] + sine_noise [1, L, 9] -> speech [1, S] for one fixed `finalize`."""

    input_names = ["mel", "sine_noise"]
    output_names = ["speech"]
    dynamic_axes = {"mel": {2: "frames"}, "sine_noise": {1: "samples"}, "speech": {1: "speech_samples"}}

    def __init__(self, hift: CausalHiFT, finalize: bool):
        super().__init__()
        self.hift = _frozen_copy(hift)
        self.f0 = DoubleF0Graph(self.hift.f0_predictor)
        del self.hift.f0_predictor
        self.finalize = finalize

    def forward(self, mel: torch.Tensor, sine_noise: torch.Tensor) -> torch.Tensor:
        f0 = self.f0(mel.double(), self.finalize).float()
        source = self.hift.m_source(f0, sine_noise)
        if not self.finalize:
            mel = mel[:, :, :-F0_LOOK_RIGHT]
        return self.hift.decode(mel, source, self.finalize)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return _example(self.hift, self.finalize)


class CachedHiftGraph(nn.Module):
    """Non-causal (CV2), always finalized: mel [1, 80, T] + sine_noise [1, L, 9] + cache_source [1, 1, C]
    -> speech [1, 480*T] and the source used [1, 1, L], whose first C samples are cache_source (C may be 0).

    The official runs this f0 predictor in float32, so it stays an ordinary float32 conv stack here.
    """

    input_names = ["mel", "sine_noise", "cache_source"]
    output_names = ["speech", "source"]
    dynamic_axes = {"mel": {2: "frames"}, "sine_noise": {1: "samples"}, "cache_source": {2: "cache_samples"},
                    "speech": {1: "speech_samples"}, "source": {2: "samples"}}

    def __init__(self, hift: CausalHiFT, finalize: bool = True):
        super().__init__()
        if not finalize:
            raise ValueError("the non-causal HiFT is always finalized")
        self.hift = _frozen_copy(hift)

    def forward(self, mel: torch.Tensor, sine_noise: torch.Tensor,
                cache_source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source = splice_source(self.hift.m_source(self.hift.predict_f0(mel, True), sine_noise), cache_source)
        return self.hift.decode(mel, source, True), source

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        mel, noise = _example(self.hift, True)
        return mel, noise, torch.rand(1, 1, TRACE_CACHE_FRAMES * self.hift.cfg.hop_samples) - 0.5


# HiFTConfig.causal -> the graph wrapper of that vocoder.
GRAPH_WRAPPERS = {True: HiftGraph, False: CachedHiftGraph}


def _export_graph(graph: HiftGraph | CachedHiftGraph, path: Path) -> None:
    # The TorchScript exporter: dynamo=True gives bit-identical outputs at every length but takes ~20 s per
    # graph instead of ~1 s, which the tests (and every re-export) would pay.
    with warnings.catch_warnings():
        # The exporter leaves F.pad's reversed pad lists unfolded; ONNX Runtime folds them when it loads the graph.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # The legacy exporter is chosen on purpose (see above); its deprecation notices are no news.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="The feature will be removed")
        torch.onnx.export(
            graph, graph.example_inputs(), str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=graph.input_names, output_names=graph.output_names, dynamic_axes=graph.dynamic_axes)
    model = onnx.load(str(path))
    drop_empty_pad_values(model.graph)  # lets ONNX Runtime fold the causal pads into the convs (same output)
    onnx.save(model, str(path))


def export_hift(module: CausalHiFT, cfg: ModelConfig, out_dir: Path, precision: str = "fp32",
                fp32_paths: list[Path] | None = None) -> list[Path]:
    """Writes the graphs of `onnx_backend.hift.GRAPHS` for this HiFT into `out_dir` and returns their paths.

    Every precision gets the fp32 graphs: the f0 predictor overflows fp16 and the waveform is fragile to it.
    `fp32_paths`, graphs of this module already written to out_dir, are returned as they are.
    """
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}")
    if module.cfg != cfg.hift:
        raise ValueError("the vocoder module was built for another HiFT config than `cfg.hift`")
    if fp32_paths:
        return list(fp32_paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with torch.no_grad():
        for finalize, name in GRAPHS[cfg.hift.causal].items():
            path = out_dir / graph_files("vocoder", "fp32", cfg.hift.causal)[name]
            _export_graph(GRAPH_WRAPPERS[cfg.hift.causal](module, finalize), path)
            paths.append(path)
    return paths
