"""Exports a flow as two ONNX graphs: the token encoder and the velocity estimator (CV3 DiT or CV2 UNet)."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..config import ModelConfig
from ..int8 import DEFAULT_WEIGHT_BITS
from .graph_fixes import drop_empty_pad_values
from .quantize import quantize_weight_matmuls
from ..onnx_backend.flow import ENCODER_IO
from ..plan import EXPORT_PRECISIONS, graph_files

OPSET = 17
# onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14 unless told otherwise.
MAX_IR_VERSION = 10
PROTOBUF_LIMIT = 2_000_000_000
ESTIMATOR_INPUTS = ["x", "mask", "mu", "t", "spks", "cond", "streaming"]
ESTIMATOR_OUTPUTS = ["velocity"]
# Kept in fp32 in the fp16 estimator: LayerNorm statistics and softmax sums overflow in fp16, and the time
# sinusoid and RoPE angles reach 1000 rad and T rad, where fp16 keeps no fractional digits. The node groups
# cover the multiplications that produce those angles (DiT: time_embed, rotary_embed; UNet: time_embeddings).
FP16_BLOCKED_OPS = ["LayerNormalization", "Softmax", "Sin", "Cos"]
FP16_BLOCKED_NODE_PREFIXES = ("/time_embed/", "/rotary_embed/", "/time_embeddings/")


class EncoderGraph(nn.Module):
    """Token encoding plus the speaker projection.

    The DiT flow's encoder is exported finalized: its non-final mu is the final one minus the look-ahead frames.
    The conformer attends over all tokens, so its graph takes the look-ahead tokens (none when finalized) and
    the streaming switch as inputs instead.
    """

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def forward(self, tokens, embedding, context=None, streaming=None):
        if context is None:
            mu = self.flow.encode_tokens(tokens, finalize=True)
        else:
            mu = self.flow.encode(tokens, context, streaming)
        return mu, self.flow.embed_speaker(embedding)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    """Writes weights inline, or beside the graph as `<name>.data` when the file would pass protobuf's 2 GB."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if model.ByteSize() >= PROTOBUF_LIMIT:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def _trace(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
           dynamic_axes: dict) -> onnx.ModelProto:
    # The legacy TorchScript exporter: it keeps T dynamic through arange/shape arithmetic with plain
    # dynamic_axes, and its graph matches torch to float rounding (dynamo needs per-input Dim specs for the same).
    # A scratch folder, because above 2 GB the exporter scatters one external file per weight beside the graph.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, torch.no_grad(), warnings.catch_warnings():
        # Expected noise: the legacy exporter's deprecation notice and its unfoldable strided Slice of RoPE pairs.
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        traced = Path(scratch) / path.name
        torch.onnx.export(module, args, str(traced), input_names=inputs, output_names=outputs, opset_version=OPSET,
                          dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
        model = onnx.load(str(traced))
    drop_empty_pad_values(model.graph)  # lets ONNX Runtime fold zero pads into the convs (same output)
    return model


def _set_output_shape(model: onnx.ModelProto, name: str, dims: list) -> None:
    (output,) = (o for o in model.graph.output if o.name == name)
    for dim, value in zip(output.type.tensor_type.shape.dim, dims):
        if isinstance(value, int):
            dim.dim_value = value
        else:
            dim.dim_param = value


def export_encoder(flow: nn.Module, out_dir: Path) -> Path:
    cfg = flow.cfg
    inputs, outputs = ENCODER_IO[cfg.kind]
    args = (torch.randint(0, cfg.vocab_size, (1, 11)), torch.randn(1, cfg.spk_embed_dim))
    dynamic_axes = {"tokens": {1: "n_tokens"}, "mu": {2: "n_frames"}}
    if "context" in inputs:
        args += (torch.randint(0, cfg.vocab_size, (1, cfg.pre_lookahead_len)), torch.tensor([True]))
        dynamic_axes["context"] = {1: "n_context"}
    path = Path(out_dir) / graph_files("flow", "fp32")["flow_encoder"]
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _trace(EncoderGraph(flow).eval(), args, path, inputs, outputs, dynamic_axes)
    # Shape inference loses track of repeat_interleave's batch and channel sizes; state them.
    _set_output_shape(model, "mu", [1, cfg.mel_dim, "n_frames"])
    return _save(model, path)


def export_estimator(flow: nn.Module, out_dir: Path) -> Path:
    cfg = flow.cfg
    # An odd length that is not a chunk multiple, so no shape arithmetic can fold into a constant.
    seq_len = 2 * cfg.static_chunk_size + 7
    x, mu, cond = (torch.randn(2, cfg.mel_dim, seq_len) for _ in range(3))
    mask = torch.ones(2, 1, seq_len)
    t = torch.rand(2)
    spks = torch.randn(2, cfg.mel_dim)
    streaming = torch.tensor([True])
    seq = {2: "seq_len"}
    path = Path(out_dir) / graph_files("flow", "fp32")["flow_estimator"]
    path.parent.mkdir(parents=True, exist_ok=True)
    # The estimators take `streaming` as a flag or as this bool tensor, so one graph serves both modes.
    model = _trace(flow.estimator.eval(), (x, mask, mu, t, spks, cond, streaming), path,
                   ESTIMATOR_INPUTS, ESTIMATOR_OUTPUTS,
                   {"x": seq, "mask": seq, "mu": seq, "cond": seq, "velocity": seq})
    return _save(model, path)


def convert_estimator_fp16(fp32_path: Path) -> Path:
    """fp16 weights and matmuls with fp32 I/O; the blocked ops and node groups above compute in fp32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(fp32_path))
    blocked_nodes = [n.name for n in model.graph.node if n.name.startswith(FP16_BLOCKED_NODE_PREFIXES)]
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_BLOCKED_OPS,
                                    node_block_list=blocked_nodes)
    _skip_fp16_round_trips(half)
    tidy = OnnxModel(half)
    tidy.prune_graph(allow_remove_graph_inputs=False)
    # The converter appends its Casts at the end of the node list; the checker wants topological order.
    tidy.topological_sort()
    _drop_repeated_nodes(tidy.model.graph)
    return _save(tidy.model, fp32_path.with_name(graph_files("flow", "fp16")["flow_estimator"]))


def quantize_estimator_int8(fp32_path: Path, weight_bits: int = DEFAULT_WEIGHT_BITS) -> Path:
    """Dynamic int8 for the estimator's weight MatMuls (per output channel), everything else fp32.

    Those MatMuls are ~90 % of its FLOPs and run ~4x faster on int8 dot-product units. The attention products
    (two activations), the adaLN Gemms (one row per batch item) and the convolutions stay fp32: they are cheap or
    sensitive. Quantization changes the output (the parity report measures by how much), so fp32 stays the
    reference and `flow=onnx:fp32` keeps an int8 LM with the exact flow. weight_bits: see cosyvoice_onnx/int8.py.
    """
    model = onnx.load(str(fp32_path), load_external_data=False)
    weights = {tensor.name for tensor in model.graph.initializer}
    weight_matmuls = [node.name for node in model.graph.node
                      if node.op_type == "MatMul" and any(name in weights for name in node.input)]
    del model
    path = fp32_path.with_name(graph_files("flow", "int8")["flow_estimator"])
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        # quantize_dynamic writes its own IR version; _save caps it for the onnxruntime we ship with.
        raw = Path(scratch) / path.name
        quantize_weight_matmuls(fp32_path, raw, weight_bits, nodes=weight_matmuls)
        return _save(onnx.load(str(raw)), path)


def _cast_to(node: onnx.NodeProto | None, elem_type: int) -> bool:
    return node is not None and node.op_type == "Cast" and node.attribute[0].i == elem_type


def _skip_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Feeds fp32 tensors straight to fp32 consumers.

    The converter casts every blocked node's output to fp16 and back before the next blocked node (and every
    graph input too, `t` included), which would round the 1000*t sinusoid and RoPE angles to fp16 after all.
    """
    float32 = onnx.TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.input]}
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            to_float = producer.get(name)
            if not _cast_to(to_float, float32):
                continue
            to_half = producer.get(to_float.input[0])
            if _cast_to(to_half, onnx.TensorProto.FLOAT16) and types.get(to_half.input[0]) == float32:
                node.input[index] = to_half.input[0]


def _drop_repeated_nodes(graph: onnx.GraphProto) -> None:
    """The converter inserts the same Cast once per blocked consumer; onnxruntime rejects the repeated name."""
    seen: set[bytes] = set()
    kept = []
    for node in graph.node:
        key = node.SerializeToString()
        if key not in seen:
            seen.add(key)
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def export_flow(module: nn.Module, cfg: ModelConfig, out_dir: Path, precision: str = "fp32",
                fp32_paths: list[Path] | None = None, int8_weight_bits: int = DEFAULT_WEIGHT_BITS) -> list[Path]:
    """Writes flow_encoder.onnx and flow_estimator.onnx, plus flow_estimator.fp16.onnx / .int8.onnx for those.

    `module` is a CausalFlow (CV3) or a ConformerUNetFlow (CV2), as torch_backend.loader builds it. `fp32_paths`
    (encoder, estimator) are fp32 graphs of this module already written to out_dir, which are then reused.
    """
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} ({', '.join(EXPORT_PRECISIONS)})")
    if (module.cfg.kind, module.cfg.mel_dim, module.cfg.static_chunk_size) != (
            cfg.flow.kind, cfg.flow.mel_dim, cfg.flow.static_chunk_size):
        raise ValueError("the flow module was built from another config than the one given")
    module = module.float().eval()
    out_dir = Path(out_dir)
    written = list(fp32_paths or (export_encoder(module, out_dir), export_estimator(module, out_dir)))
    if precision == "fp16":
        written.append(convert_estimator_fp16(written[1]))
    elif precision == "int8":
        written.append(quantize_estimator_int8(written[1], int8_weight_bits))
    return written
