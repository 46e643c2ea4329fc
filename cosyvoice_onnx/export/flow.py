"""Exports the CosyVoice3 flow as two ONNX graphs: the token encoder and the DiT velocity estimator."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch
from torch import nn

from ..config import ModelConfig
from ..torch_backend.flow import CausalFlow, DiT, layer_norm

OPSET = 17
# onnxruntime 1.31 reads IR versions up to 13; onnx 1.23 writes 14 unless told otherwise.
MAX_IR_VERSION = 10
FULL_ATTENTION_CHUNK = 1 << 30
PROTOBUF_LIMIT = 2_000_000_000
ENCODER_BASE = "flow_encoder"
ESTIMATOR_BASE = "flow_estimator"
ENCODER_INPUTS = ["tokens", "embedding"]
ENCODER_OUTPUTS = ["mu", "spks"]
ESTIMATOR_INPUTS = ["x", "mask", "mu", "t", "spks", "cond", "streaming"]
ESTIMATOR_OUTPUTS = ["velocity"]
# Ops kept in fp32 in the fp16 estimator: LayerNorm statistics and softmax overflow in fp16, and the
# sinusoid/RoPE angles reach 1000 rad (time) or T rad (positions), where fp16 keeps no fractional digits.
FP16_BLOCKED_OPS = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Softmax", "Sin", "Cos", "Exp", "Range"]
FP16_BLOCKED_NODE_PREFIXES = ("/time_embed/", "/rotary_embed/")


def precision_files(precision: str) -> dict[str, str]:
    """File name per graph for a precision; int8 quantizes the LM only, so the flow then stays fp32."""
    if precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"unknown precision {precision!r} (fp32, fp16 or int8)")
    estimator = f"{ESTIMATOR_BASE}.fp16.onnx" if precision == "fp16" else f"{ESTIMATOR_BASE}.onnx"
    return {"encoder": f"{ENCODER_BASE}.onnx", "estimator": estimator}


def switchable_attention_mask(valid: torch.Tensor, chunk_size: int, streaming: torch.Tensor) -> torch.Tensor:
    """torch_backend.flow.attention_mask with the streaming switch as a tensor, so one graph serves both modes.

    Off, the chunk outgrows any sequence, so j < (i // chunk + 1) * chunk holds for every key and only the
    padding mask is left.
    """
    pos = torch.arange(valid.shape[-1], device=valid.device)
    chunk = torch.where(streaming.reshape(()), torch.tensor(chunk_size), torch.tensor(FULL_ATTENTION_CHUNK))
    visible_end = (torch.div(pos, chunk, rounding_mode="floor") + 1) * chunk
    mask = valid.unsqueeze(1) & (pos.unsqueeze(0) < visible_end.unsqueeze(1)).unsqueeze(0)
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask.unsqueeze(1)


class EstimatorGraph(nn.Module):
    """DiT.forward with `streaming` as a bool tensor input instead of a Python flag."""

    def __init__(self, dit: DiT):
        super().__init__()
        self.time_embed = dit.time_embed
        self.input_embed = dit.input_embed
        self.rotary_embed = dit.rotary_embed
        self.transformer_blocks = dit.transformer_blocks
        self.norm_out = dit.norm_out
        self.proj_out = dit.proj_out
        self.dim = dit.dim
        self.static_chunk_size = dit.static_chunk_size

    def forward(self, x, mask, mu, t, spks, cond, streaming):
        temb = self.time_embed(t)
        h = self.input_embed(x.transpose(1, 2), cond.transpose(1, 2), mu.transpose(1, 2), spks)
        angles = self.rotary_embed(x.shape[2])
        attn_mask = switchable_attention_mask(mask[:, 0].bool(), self.static_chunk_size, streaming)
        query_valid = attn_mask[:, 0, -1].unsqueeze(-1)
        for block in self.transformer_blocks:
            h = block(h, temb, attn_mask, query_valid, angles)
        scale, shift = self.norm_out(temb)
        h = layer_norm(h, self.dim) * (1 + scale)[:, None, :] + shift[:, None, :]
        return self.proj_out(h).transpose(1, 2)


class EncoderGraph(nn.Module):
    """Finalized token encoding plus the speaker projection; non-final mu is this mu minus its last frames."""

    def __init__(self, flow: CausalFlow):
        super().__init__()
        self.flow = flow

    def forward(self, tokens, embedding):
        return self.flow.encode_tokens(tokens, finalize=True), self.flow.embed_speaker(embedding)


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
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, torch.no_grad():
        traced = Path(scratch) / path.name
        torch.onnx.export(module, args, str(traced), input_names=inputs, output_names=outputs, opset_version=OPSET,
                          dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
        return onnx.load(str(traced))


def export_encoder(flow: CausalFlow, out_dir: Path) -> Path:
    cfg = flow.cfg
    tokens = torch.randint(0, cfg.vocab_size, (1, 11))
    embedding = torch.randn(1, cfg.spk_embed_dim)
    path = Path(out_dir) / f"{ENCODER_BASE}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _trace(EncoderGraph(flow).eval(), (tokens, embedding), path, ENCODER_INPUTS, ENCODER_OUTPUTS,
                   {"tokens": {1: "n_tokens"}, "mu": {2: "n_frames"}})
    return _save(model, path)


def export_estimator(flow: CausalFlow, out_dir: Path) -> Path:
    cfg = flow.cfg
    # An odd length that is not a chunk multiple, so no shape arithmetic can fold into a constant.
    seq_len = 2 * cfg.static_chunk_size + 7
    x, mu, cond = (torch.randn(2, cfg.mel_dim, seq_len) for _ in range(3))
    mask = torch.ones(2, 1, seq_len)
    t = torch.rand(2)
    spks = torch.randn(2, cfg.mel_dim)
    streaming = torch.tensor([True])
    seq = {2: "seq_len"}
    path = Path(out_dir) / f"{ESTIMATOR_BASE}.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    model = _trace(EstimatorGraph(flow.estimator).eval(), (x, mask, mu, t, spks, cond, streaming), path,
                   ESTIMATOR_INPUTS, ESTIMATOR_OUTPUTS,
                   {"x": seq, "mask": seq, "mu": seq, "cond": seq, "velocity": seq})
    return _save(model, path)


def convert_estimator_fp16(fp32_path: Path) -> Path:
    """fp16 weights and matmuls with fp32 I/O; the blocked ops above run in fp32 between casts."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(fp32_path))
    blocked_nodes = [n.name for n in model.graph.node if n.name.startswith(FP16_BLOCKED_NODE_PREFIXES)]
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_BLOCKED_OPS,
                                    node_block_list=blocked_nodes)
    return _save(half, fp32_path.with_name(f"{ESTIMATOR_BASE}.fp16.onnx"))


def export_flow(module: CausalFlow, cfg: ModelConfig, out_dir: Path, precision: str = "fp32") -> list[Path]:
    """Writes flow_encoder.onnx and flow_estimator.onnx (plus flow_estimator.fp16.onnx for fp16)."""
    names = precision_files(precision)
    if module.cfg.mel_dim != cfg.flow.mel_dim or module.cfg.static_chunk_size != cfg.flow.static_chunk_size:
        raise ValueError("the flow module was built from another config than the one given")
    module = module.float().eval()
    out_dir = Path(out_dir)
    written = [export_encoder(module, out_dir), export_estimator(module, out_dir)]
    if names["estimator"] != written[1].name:
        written.append(convert_estimator_fp16(written[1]))
    return written
