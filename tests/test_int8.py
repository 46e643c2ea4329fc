"""int8 weight width: 7-bit weights compute exactly on every CPU, 8-bit ones saturate where the CPU has no VNNI
unit; the export records the width, and loading a full-width export on such a CPU warns."""

import json
import shutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cosyvoice_onnx import cli, int8
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.export.quantize import quantize_weight_matmuls
from cosyvoice_onnx.studio.state import EngineCache

AVX2_FLAGS = "fpu sse sse2 ssse3 fma avx avx2 f16c"


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return path


@pytest.mark.parametrize("machine,flags,expected", [
    ("x86_64", AVX2_FLAGS, True),
    ("x86_64", AVX2_FLAGS + " avx512f avx512_vnni", False),
    ("x86_64", AVX2_FLAGS + " avx_vnni", False),
    ("AMD64", AVX2_FLAGS + " amx_int8 amx_tile", False),
    ("aarch64", "fp asimd asimddp", False),
])
def test_cpu_flags_decide_whether_full_range_weights_saturate(tmp_path, machine, flags, expected):
    assert int8.cpu_saturates_full_range(machine, _cpuinfo(tmp_path, flags)) is expected


def test_an_unreadable_cpuinfo_leaves_it_unknown(tmp_path):
    assert int8.cpu_saturates_full_range("x86_64", tmp_path / "absent") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert int8.cpu_saturates_full_range("x86_64", tmp_path / "noflags") is None


def test_weight_bits_are_seven_or_eight():
    assert int8.parse_weight_bits("7") == 7 and int8.parse_weight_bits(8) == 8
    for bad in (6, "9", "eight", None, 7.5):
        with pytest.raises(InputError, match="choose 7"):
            int8.parse_weight_bits(bad)


def _one_matmul(tmp_path, weights: np.ndarray):
    k, n = weights.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")], "one_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "matmul.onnx"
    onnx.save(model, str(path))
    return path


def test_seven_bit_weights_are_exact_where_eight_bit_ones_saturate_on_this_cpu(tmp_path, caplog):
    # Activations at 255 and weights at the top of their range: each pair of products reaches 255 * 127 * 2 with
    # 8 bits, past int16; with 7 bits 255 * 64 * 2 stays below it.
    weights = np.ones((256, 8), np.float32)
    weights[:, 1::2] = -1
    x = np.ones((1, 256), np.float32)
    fp32 = _one_matmul(tmp_path, weights)
    errors = {}
    for bits in (7, 8):
        path = quantize_weight_matmuls(fp32, tmp_path / f"int8_{bits}.onnx", bits)
        quantized = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
                     if t.data_type == TensorProto.INT8 and len(t.dims) == 2]
        assert len(quantized) == 1 and np.abs(quantized[0].astype(int)).max() == {7: 64, 8: 127}[bits]
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        errors[bits] = np.abs(y - x @ weights).max() / 256
    assert errors[7] < 1e-3
    assert "pre-processing" not in caplog.text  # the quantizer's advice does not apply to these graphs
    saturates = int8.cpu_saturates_full_range()
    if saturates is not None:
        # The flags this check reads predict what onnxruntime's kernel does on this very CPU.
        assert bool(errors[8] > 0.3) is saturates, errors


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    """The tiny model with an fp32 + int8 export at the default weight width (no parity run)."""
    from cosyvoice_onnx.export.exporter import export_model

    model = tmp_path_factory.mktemp("int8") / "tiny"
    shutil.copytree(tiny_model_dir, model)
    export_model(model, precisions="fp32,int8", parity=False, progress=lambda _: None)
    return model


@pytest.fixture()
def copy(exported, tmp_path):
    return shutil.copytree(exported, tmp_path / "model")


def _manifest(model) -> dict:
    return json.loads((model / "onnx" / "manifest.json").read_text())


def _weight_range(graph_path) -> int:
    graph = onnx.load(str(graph_path)).graph
    return max(int(np.abs(numpy_helper.to_array(t).astype(int)).max())
               for t in graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 2)


def test_export_records_the_width_and_keeps_it_with_the_int8_graphs(copy):
    from cosyvoice_onnx.export.exporter import export_model

    assert _manifest(copy)[int8.MANIFEST_KEY] == 7
    assert _weight_range(copy / "onnx" / "flow_estimator.int8.onnx") <= 64
    assert _weight_range(copy / "onnx" / "lm_prefill.int8.onnx") <= 64
    export_model(copy, precisions="fp32", parity=False, progress=lambda _: None)
    assert _manifest(copy)[int8.MANIFEST_KEY] == 7  # the int8 graphs were kept, so is what they are
    export_model(copy, precisions="int8", parity=False, progress=lambda _: None, int8_weight_bits=8)
    assert _manifest(copy)[int8.MANIFEST_KEY] == 8
    assert _weight_range(copy / "onnx" / "flow_estimator.int8.onnx") == 127


def _load_warnings(model, backend: str) -> list[str]:
    from cosyvoice_onnx.engine import CosyVoice

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CosyVoice(model, backend=backend)
    return [str(w.message) for w in caught]


def test_loading_a_full_width_export_on_a_saturating_cpu_warns(copy, monkeypatch):
    monkeypatch.setattr(int8, "cpu_saturates_full_range", lambda: True)
    assert not any("8-bit weights" in m for m in _load_warnings(copy, "onnx:int8"))
    manifest = _manifest(copy)
    del manifest[int8.MANIFEST_KEY]  # as an export made before the option was
    (copy / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    messages = [m for m in _load_warnings(copy, "onnx:int8") if "8-bit weights" in m]
    assert len(messages) == 1 and "cosyvoice-onnx export --model DIR --precision int8" in messages[0]
    # Only the stages with int8 graphs of their own concern it: an int8 vocoder runs fp32 graphs.
    assert not any("8-bit weights" in m for m in _load_warnings(copy, "lm=onnx:fp32,flow=torch,vocoder=onnx:int8"))
    monkeypatch.setattr(int8, "cpu_saturates_full_range", lambda: False)
    assert not any("8-bit weights" in m for m in _load_warnings(copy, "onnx:int8"))


def _cli_info(model, capsys) -> str:
    assert cli.main(["info", "--model", str(model)]) == 0
    return capsys.readouterr().out


def _models_tab(model, capsys) -> str:
    from cosyvoice_onnx.model_files import inspect_model_dir
    from cosyvoice_onnx.studio.models_admin import _export_lines

    return "\n".join(_export_lines(inspect_model_dir(model)))


@pytest.mark.parametrize("view,line", [(_cli_info, "  int8  lm, flow, vocoder (7-bit weights): current"),
                                       (_models_tab, "  - int8 (7-bit weights): ready")], ids=["info", "models-tab"])
def test_info_and_the_models_tab_name_the_width_and_warn_where_it_saturates(copy, monkeypatch, capsys, view, line):
    monkeypatch.setattr(int8, "cpu_saturates_full_range", lambda: True)
    shown = view(copy, capsys)
    assert line in shown and "warning" not in shown
    manifest = _manifest(copy)
    manifest[int8.MANIFEST_KEY] = 8
    (copy / "onnx" / "manifest.json").write_text(json.dumps(manifest))
    shown = view(copy, capsys)
    assert line.replace("7-bit", "8-bit") in shown and "warning: " in shown and "saturating" in shown


def test_export_refuses_another_width_before_working(tmp_path, capsys):
    assert cli.main(["export", "--model", str(tmp_path), "--int8-weight-bits", "6"]) == 2
    assert "--int8-weight-bits: invalid choice: 6" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()


def test_the_studio_shows_what_a_load_warns_about():
    shown = []

    def loader(model_dir, plan):
        warnings.warn("this export is computed poorly here")
        return object()

    cache = EngineCache(loader=loader, notify=shown.append)
    cache.get("/models/a", "onnx:int8")
    cache.get("/models/a", "onnx:int8")  # cached: loaded, and so told, once
    assert shown == ["this export is computed poorly here"]
