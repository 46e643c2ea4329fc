"""Export of the speech-token LM as two ONNX graphs, `lm_prefill` and `lm_decode`, in fp32, fp16 or int8.

prefill: text_ids int64 [n], prompt_speech_ids int64 [p] (p may be 0)
         -> logits float32 [V], present_kv float32 [layers, 2, kv_heads, 1 + n + 1 + p, head_dim]
decode:  token_id int64 [1], past_kv float32 [layers, 2, kv_heads, S, head_dim]
         -> logits float32 [V], present_kv [layers, 2, kv_heads, S + 1, head_dim]; the new token's position is S,
         read from the past_kv shape inside the graph.
Speech embedding, sos/task_id and llm_decoder are inside the graphs; Qwen's text head is not (never evaluated).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..config import ModelConfig
from ..onnx_backend.lm import DECODE, PREFILL, PRECISIONS, graph_path
from ..torch_backend.llm import CosyVoice3LM, KVCache

# The legacy TorchScript exporter: same parity and runtime speed as dynamo=True here, correct dynamic n/p/S
# (p = 0 included), and ~25x faster to export, which keeps the tests quick.
OPSET = 17
# Protobuf cannot hold 2 GiB; the real prefill graph is ~2.0 GB, so switch to one `.onnx.data` file well before.
EXTERNAL_DATA_BYTES = 1 << 30
# Kept in fp32 by the fp16 conversion: RMSNorm statistics (Qwen2's mean square overflows fp16 on its large
# activations), softmax, and RoPE angles (position * inv_freq loses the phase in fp16).
FP16_KEEP_OPS = ("Pow", "ReduceMean", "Sqrt", "Div", "Softmax", "Cos", "Sin")


def stack_cache(kv: KVCache) -> torch.Tensor:
    """Layer list of ([1, H, S, D], [1, H, S, D]) -> [layers, 2, H, S, D]."""
    return torch.stack([torch.cat((keys, values)) for keys, values in kv])


class LMPrefill(nn.Module):
    def __init__(self, lm: CosyVoice3LM):
        super().__init__()
        self.lm = lm

    def forward(self, text_ids: torch.Tensor, prompt_speech_ids: torch.Tensor):
        hidden, kv = self.lm.forward_hidden(self.lm.build_prefix(text_ids, prompt_speech_ids))
        return self.lm.logits(hidden[:, -1]), stack_cache(kv)


class LMDecodeStep(nn.Module):
    def __init__(self, lm: CosyVoice3LM):
        super().__init__()
        self.lm = lm

    def forward(self, token_id: torch.Tensor, past_kv: torch.Tensor):
        past = [(past_kv[i, 0:1], past_kv[i, 1:2]) for i in range(self.lm.cfg.num_layers)]
        hidden, kv = self.lm.forward_hidden(self.lm.embed_speech(token_id), past)
        return self.lm.logits(hidden[:, -1]), stack_cache(kv)


def save_graph(model: onnx.ModelProto, path: Path) -> Path:
    """Weights inline when small, else in `<name>.onnx.data` next to it; ORT finds either from the path."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


def _export_fp32(lm: CosyVoice3LM, cfg: ModelConfig, out_dir: Path) -> list[Path]:
    c = cfg.llm
    example_text = torch.tensor([1, 2, 3], dtype=torch.int64)
    example_prompt = torch.tensor([4, 5], dtype=torch.int64)
    example_cache = torch.zeros(c.num_layers, 2, c.num_kv_heads, 7, c.head_dim)
    jobs = [
        (PREFILL, LMPrefill(lm), (example_text, example_prompt), ["text_ids", "prompt_speech_ids"],
         {"text_ids": {0: "n"}, "prompt_speech_ids": {0: "p"}, "present_kv": {3: "prefix_len"}}),
        (DECODE, LMDecodeStep(lm), (torch.tensor([6], dtype=torch.int64), example_cache), ["token_id", "past_kv"],
         {"past_kv": {3: "past_len"}, "present_kv": {3: "past_len_plus_1"}}),
    ]
    written = []
    for base, wrapper, args, input_names, dynamic_axes in jobs:
        # The exporter writes one file per tensor above 2 GB, so export into scratch and save tidily from there.
        with tempfile.TemporaryDirectory(dir=out_dir) as scratch, warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (see OPSET); its deprecation notices are noise here.
            warnings.simplefilter("ignore", DeprecationWarning)
            raw = Path(scratch) / f"{base}.onnx"
            with torch.no_grad():
                torch.onnx.export(wrapper, args, str(raw), dynamo=False, opset_version=OPSET,
                                  input_names=input_names, output_names=["logits", "present_kv"],
                                  dynamic_axes=dynamic_axes, do_constant_folding=True)
            written.append(save_graph(onnx.load(str(raw)), graph_path(out_dir, base)))
    return written


def _fp16_keep_nodes(graph: onnx.GraphProto) -> list[str]:
    """FP16_KEEP_OPS nodes, the RoPE angle computation feeding Cos/Sin, and any node that only carries a value
    between kept nodes (the `+ eps` of RMSNorm), so no fragile value is ever rounded to fp16."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep = {node.name for node in graph.node if node.op_type in FP16_KEEP_OPS}
    pending = [node for node in graph.node if node.op_type in ("Cos", "Sin")]
    while pending:
        node = pending.pop()
        for name in node.input:
            parent = producer.get(name)
            # Shape only reads dims: the walk stops there instead of keeping the whole embedding path in fp32.
            if parent is not None and parent.name not in keep and parent.op_type not in ("Shape", "Size"):
                keep.add(parent.name)
                pending.append(parent)
    changed = True
    while changed:
        changed = False
        for node in graph.node:
            if node.name in keep:
                continue
            fed_by_kept = any(name in producer and producer[name].name in keep for name in node.input)
            users = [user for out in node.output for user in consumers.get(out, [])]
            if fed_by_kept and users and all(user.name in keep for user in users):
                keep.add(node.name)
                changed = True
    return sorted(keep)


def _constants_to_initializers(graph: onnx.GraphProto) -> None:
    """Float Constant nodes become initializers, which the converter leaves in fp32 when only kept nodes read
    them (it rounds every Constant node, e.g. RoPE's inverse frequencies, to fp16 otherwise)."""
    for node in list(graph.node):
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name != "value":
            continue
        tensor = node.attribute[0].t
        if tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        initializer = onnx.TensorProto()
        initializer.CopyFrom(tensor)
        initializer.name = node.output[0]
        graph.initializer.append(initializer)
        graph.node.remove(node)


def _drop_fp16_round_trips(graph: onnx.GraphProto, kept: set[str]) -> None:
    """The converter wraps every kept node in casts, so a value passed from one kept node to the next goes
    fp32 -> fp16 -> fp32 (rounding it, and emitting duplicate cast names when a value has two such readers).
    Reads of those round trips are pointed back at the fp32 value and the casts dropped."""
    producer = {out: node for node in graph.node for out in node.output}
    fp32_source = {}  # fp16 value made by a to-fp16 cast of a kept node's output -> that fp32 output
    for node in graph.node:
        if node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT16:
            parent = producer.get(node.input[0])
            if parent is not None and parent.name in kept:
                fp32_source[node.output[0]] = node.input[0]
    rename = {}
    for node in list(graph.node):
        if node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT and node.input[0] in fp32_source:
            rename[node.output[0]] = fp32_source[node.input[0]]
            graph.node.remove(node)
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for node in list(graph.node):
        if node.op_type == "Cast" and node.output[0] in fp32_source and node.output[0] not in used:
            graph.node.remove(node)
    produced = {out for node in graph.node for out in node.output}
    for info in list(graph.value_info):
        if info.name not in produced:
            graph.value_info.remove(info)


def _convert_fp16(src: Path, dst: Path) -> Path:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    _constants_to_initializers(model.graph)
    keep = _fp16_keep_nodes(model.graph)
    op_block_list = DEFAULT_OP_BLOCK_LIST + list(FP16_KEEP_OPS)
    blocked = set(keep) | {node.name for node in model.graph.node if node.op_type in op_block_list}
    half = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep, op_block_list=op_block_list)
    _drop_fp16_round_trips(half.graph, blocked)
    return save_graph(half, dst)


def _quantize_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Per-channel weight scales; the int8 real LM is ~0.5 GB, so it is always saved inline.
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     use_external_data_format=False)
    return dst


def export_lm(module: CosyVoice3LM, cfg: ModelConfig, out_dir: Path, precision: str = "fp32") -> list[Path]:
    """Writes `lm_prefill` and `lm_decode` in one precision and returns their paths.

    fp16 and int8 are derived from an fp32 export made in a scratch folder, so each call writes only the files
    of the precision asked for.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm = module.eval()
    if precision == "fp32":
        return _export_fp32(lm, cfg, out_dir)
    convert = _quantize_int8 if precision == "int8" else _convert_fp16
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        return [convert(fp32, graph_path(out_dir, base, precision))
                for base, fp32 in zip((PREFILL, DECODE), _export_fp32(lm, cfg, Path(scratch)))]
