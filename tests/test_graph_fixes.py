"""Exact graph rewrites for ONNX Runtime speed (export/graph_fixes.py): same outputs, the fusion they unblock."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cosyvoice_onnx.export.graph_fixes import drop_empty_pad_values
from cosyvoice_onnx.releases import RELEASES


def pad_then_conv(empty_value_input: bool) -> onnx.ModelProto:
    """x [1, 4, L] -> causal zero pad of 2 -> Conv k=3, written as the TorchScript exporter writes F.pad."""
    rng = np.random.default_rng(0)
    pads = numpy_helper.from_array(np.array([0, 0, 2, 0, 0, 0], dtype=np.int64), "pads")
    weight = numpy_helper.from_array(rng.standard_normal((4, 4, 3)).astype(np.float32), "w")
    pad_inputs = ["x", "pads", ""] if empty_value_input else ["x", "pads"]
    graph = helper.make_graph(
        [helper.make_node("Pad", pad_inputs, ["padded"], mode="constant"),
         helper.make_node("Conv", ["padded", "w"], ["y"])], "causal_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "L"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "L"])], [pads, weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def optimized_ops(model: onnx.ModelProto, tmp_path) -> tuple[list[str], np.ndarray]:
    """The op types ONNX Runtime keeps after its optimizations, and the output for a fixed input."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 4, 37)).astype(np.float32)
    out = session.run(None, {"x": x})[0]
    return [node.op_type for node in onnx.load(str(tmp_path / "optimized.onnx")).graph.node], out


def test_dropping_the_empty_pad_value_lets_onnx_runtime_fuse_the_pad_into_the_conv(tmp_path):
    exported = pad_then_conv(empty_value_input=True)
    ops_before, before = optimized_ops(exported, tmp_path)
    assert "Pad" in ops_before  # the empty input blocks ONNX Runtime's Pad->Conv fusion

    fixed = pad_then_conv(empty_value_input=True)
    assert drop_empty_pad_values(fixed.graph) == 1
    assert list(fixed.graph.node[0].input) == ["x", "pads"]
    ops_after, after = optimized_ops(fixed, tmp_path)
    assert "Pad" not in ops_after
    np.testing.assert_array_equal(after, before)
    assert drop_empty_pad_values(fixed.graph) == 0  # nothing left to change


def test_a_pad_with_a_real_fill_value_is_left_alone():
    model = pad_then_conv(empty_value_input=True)
    model.graph.node[0].input[2] = "fill"
    assert drop_empty_pad_values(model.graph) == 0
    assert list(model.graph.node[0].input) == ["x", "pads", "fill"]


@pytest.mark.parametrize("version", sorted(RELEASES))
def test_exported_graphs_have_no_empty_pad_values(tiny_export_of, version):
    export_dir = tiny_export_of(version)
    graphs = sorted(export_dir.glob("*.onnx"))
    assert any(p.name.startswith("hift") for p in graphs) and any(p.name.startswith("flow") for p in graphs)
    for path in graphs:
        model = onnx.load(str(path), load_external_data=False)
        empty = [n.name for n in model.graph.node if n.op_type == "Pad" and len(n.input) == 3 and not n.input[2]]
        assert not empty, f"{path.name}: {empty[:3]}"
