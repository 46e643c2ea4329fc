"""The hand-built LM graphs: a few fused nodes per layer, and fp16/int8 derived from the fp32 files of the run."""

from collections import Counter
from pathlib import Path

import numpy as np

from cosyvoice_onnx.export import exporter, lm as export_module
from cosyvoice_onnx.export import flow as flow_export, hift as hift_export
from cosyvoice_onnx.export.lm import export_lm
from cosyvoice_onnx.export.lm_graph import LAYOUT, LAYOUT_KEY, build_decode
from cosyvoice_onnx.onnx_backend.lm import OnnxLanguageModel
from cosyvoice_onnx.torch_backend.llm import TorchLanguageModel
from test_onnx_lm import ids, random_lm, tiny_config


def test_decode_graph_has_eleven_fused_nodes_per_layer():
    cfg = tiny_config(num_layers=3)
    model = build_decode(random_lm(cfg), max_positions=64)
    ops = Counter(node.op_type for node in model.graph.node)
    per_layer = {"MatMul": 4, "Add": 1, "GroupQueryAttention": 1, "SkipSimplifiedLayerNormalization": 2,
                 "Split": 1, "QuickGelu": 1, "Mul": 1}
    # Embedding lookup, batch axis, the first layer's input norm, llm_decoder, flatten to [V].
    edges = {"Gather": 1, "Unsqueeze": 1, "SimplifiedLayerNormalization": 1, "MatMul": 1, "Reshape": 1}
    assert ops == Counter({op: 3 * n for op, n in per_layer.items()}) + Counter(edges)
    assert {p.key: p.value for p in model.metadata_props}[LAYOUT_KEY] == LAYOUT
    attention = next(node for node in model.graph.node if node.op_type == "GroupQueryAttention")
    # Packed QKV in, the cache buffers of its own layer both read and written.
    assert list(attention.input[1:5]) == ["", "", "past_key.0", "past_value.0"]
    assert list(attention.output[1:]) == ["present_key.0", "present_value.0"]


def test_fp16_and_int8_are_converted_from_the_given_fp32_files(tmp_path, monkeypatch):
    cfg = tiny_config()
    model = random_lm(cfg)
    fp32_paths = export_lm(model, cfg, tmp_path)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the fp32 graphs were built again")

    monkeypatch.setattr(export_module, "build_prefill", no_rebuild)
    monkeypatch.setattr(export_module, "build_decode", no_rebuild)
    text, prompt = ids(8, 6, 4, cfg)
    expected, _ = TorchLanguageModel(model).prefill(text, prompt)
    for precision in ("fp16", "int8"):
        paths = export_lm(model, cfg, tmp_path, precision=precision, fp32_paths=fp32_paths)
        assert [p.name for p in paths] == [f"lm_prefill.{precision}.onnx", f"lm_decode.{precision}.onnx"]
        logits, _ = OnnxLanguageModel(tmp_path, cfg, precision=precision, threads=1).prefill(text, prompt)
        assert np.abs(logits - expected).max() <= 0.1 * np.ptp(expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"lm_{graph}{suffix}.onnx" for graph in ("prefill", "decode") for suffix in ("", ".fp16", ".int8"))


def test_export_run_hands_its_fp32_graphs_to_the_other_precisions(tiny_model_dir, tmp_path, monkeypatch):
    calls = []

    def recorder(stage):
        def export(module, cfg, out, precision="fp32", fp32_paths=None, **options):
            calls.append((stage, precision, fp32_paths, options))
            path = Path(out) / f"{stage}_{precision}.onnx"
            path.write_bytes(b"graph")
            return [path]
        return export

    monkeypatch.setattr(export_module, "export_lm", recorder("lm"))
    monkeypatch.setattr(flow_export, "export_flow", recorder("flow"))
    monkeypatch.setattr(hift_export, "export_hift", recorder("vocoder"))
    exporter.export_model(tiny_model_dir, tmp_path, precisions="int8,fp16", parity=False, progress=lambda m: None,
                          int8_weight_bits=8)
    expected = []
    for stage in ("lm", "flow", "vocoder"):
        fp32_written = [tmp_path / f"{stage}_fp32.onnx"]
        # The weight width goes to the stages with dynamically quantized graphs only.
        options = {} if stage == "vocoder" else {"int8_weight_bits": 8}
        expected += [(stage, "fp32", None, options), (stage, "fp16", fp32_written, options),
                     (stage, "int8", fp32_written, options)]
    assert calls == expected
