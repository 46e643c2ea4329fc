"""Export of the causal HiFT vocoder to two ONNX graphs: `hift_final` (finalize) and `hift_stream` (look-ahead)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..config import ModelConfig
from ..torch_backend.hift import F0_LOOK_RIGHT, CausalHiFT, F0Predictor, PaddedConv1d

OPSET = 17
GRAPH_NAMES = {True: "hift_final", False: "hift_stream"}
# Frames the example input has while tracing; every length is dynamic, this only has to be valid in both modes.
TRACE_FRAMES = 24


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


class HiftGraph(nn.Module):
    """mel [1, 80, T] + sine_noise [1, L, 9] -> speech [1, S] for one fixed `finalize`."""

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


def _export_graph(graph: HiftGraph, frames: int, path: Path) -> None:
    samples = graph.hift.source_samples(frames, graph.finalize)
    harmonics = graph.hift.cfg.nb_harmonics + 1
    mel = torch.randn(1, graph.hift.cfg.in_channels, frames) - 5.0
    noise = torch.rand(1, samples, harmonics)
    # The TorchScript exporter: dynamo=True gives bit-identical outputs at every length but takes ~20 s per
    # graph instead of ~1 s, which the tests (and every re-export) would pay.
    with warnings.catch_warnings():
        # The exporter leaves F.pad's reversed pad lists unfolded; ONNX Runtime folds them when it loads the graph.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # The legacy exporter is chosen on purpose (see above); its deprecation notices are no news.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="You are using the legacy TorchScript")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="The feature will be removed")
        torch.onnx.export(
            graph, (mel, noise), str(path), dynamo=False, opset_version=OPSET, do_constant_folding=True,
            input_names=["mel", "sine_noise"], output_names=["speech"],
            dynamic_axes={"mel": {2: "frames"}, "sine_noise": {1: "samples"}, "speech": {1: "speech_samples"}})


def export_hift(module: CausalHiFT, cfg: ModelConfig, out_dir: Path, precision: str = "fp32") -> list[Path]:
    """Writes `hift_final.onnx` and `hift_stream.onnx` into `out_dir` and returns their paths.

    Every precision gets the fp32 graphs: the f0 predictor overflows fp16 and the waveform is fragile to it.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r}")
    if module.cfg != cfg.hift:
        raise ValueError("the vocoder module was built for another HiFT config than `cfg.hift`")
    if not cfg.hift.causal:
        raise ValueError("only the causal (CosyVoice3) HiFT is exported; it is the one with a look-ahead graph")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with torch.no_grad():
        for finalize, name in GRAPH_NAMES.items():
            path = out_dir / f"{name}.onnx"
            _export_graph(HiftGraph(module, finalize), TRACE_FRAMES, path)
            paths.append(path)
    return paths
