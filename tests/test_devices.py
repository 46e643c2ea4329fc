"""`--device`: parsed once, resolved per backend (torch and onnxruntime see GPUs apart), clear errors without CUDA."""

import pytest

from cosyvoice_onnx import devices
from cosyvoice_onnx.devices import CPU, Device, onnx_providers, parse_device, resolve_onnx, resolve_torch
from cosyvoice_onnx.errors import InputError


@pytest.mark.parametrize("text, expected", [("auto", Device("auto")), ("cpu", CPU), ("CUDA", Device("cuda", 0)),
                                            ("cuda:1", Device("cuda", 1)), (" cuda:0 ", Device("cuda", 0)),
                                            (None, Device("auto"))])
def test_parse_device(text, expected):
    assert parse_device(text) == expected
    assert parse_device(expected) is expected


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "cpu:1", "auto:0", "cuda:1234", ""])
def test_bad_device_is_one_clear_line(text):
    with pytest.raises(InputError) as err:
        parse_device(text)
    assert "\n" not in str(err.value) and ("cuda" in str(err.value))


def test_auto_resolves_to_cuda_only_where_the_backend_sees_it(monkeypatch):
    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 0)
    monkeypatch.setattr(devices, "ort_has_cuda", lambda: False)
    assert resolve_torch(Device("auto")) == CPU and resolve_onnx(Device("auto")) == CPU
    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 2)
    assert resolve_torch(Device("auto")) == Device("cuda", 0)
    assert resolve_onnx(Device("auto")) == CPU  # onnxruntime without its CUDA provider stays on the CPU
    monkeypatch.setattr(devices, "ort_has_cuda", lambda: True)
    assert resolve_onnx(Device("auto")) == Device("cuda", 0)


def test_cuda_without_a_gpu_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 0)
    monkeypatch.setattr(devices, "ort_has_cuda", lambda: False)
    with pytest.raises(InputError, match="torch sees no CUDA GPU"):
        resolve_torch(Device("cuda"))
    with pytest.raises(InputError, match="no CUDA provider"):
        resolve_onnx(Device("cuda"))
    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 1)
    with pytest.raises(InputError, match=r"cuda:0\.\.0"):
        resolve_torch(Device("cuda", 3))


def test_onnx_providers_order():
    assert onnx_providers(CPU) == ["CPUExecutionProvider"]
    assert onnx_providers(Device("cuda", 1)) == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def test_torch_stage_on_missing_cuda_is_an_input_error(monkeypatch):
    from cosyvoice_onnx.torch_backend.precision import torch_device

    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 0)
    assert str(torch_device(Device("auto"))) == "cpu"
    with pytest.raises(InputError, match="use --device cpu"):
        torch_device(Device("cuda"))


def test_onnx_session_providers_follow_the_device(monkeypatch):
    from cosyvoice_onnx.onnx_backend.session import providers

    monkeypatch.setattr(devices, "ort_has_cuda", lambda: False)
    assert providers("cpu") == providers("auto") == ["CPUExecutionProvider"]
    assert providers("cpu", cuda_graph=True) == ["CPUExecutionProvider"]
    with pytest.raises(InputError, match="pip install"):
        providers("cuda")
    monkeypatch.setattr(devices, "ort_has_cuda", lambda: True)
    assert providers("auto") == [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert providers("cuda:1", cuda_graph=True) == [
        ("CUDAExecutionProvider", {"device_id": 1, "enable_cuda_graph": "1"}), "CPUExecutionProvider"]


def test_onnx_lm_on_cpu_keeps_its_cache_on_the_host(tmp_path):
    """Provider selection end to end on a CPU build: the LM's cache device comes from the session it got."""
    import onnx
    from onnx import TensorProto, helper

    from cosyvoice_onnx.onnx_backend.session import make_session, session_device

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), tmp_path / "m.onnx")
    session = make_session(tmp_path / "m.onnx", threads=1, device="auto")
    assert session.get_providers() == ["CPUExecutionProvider"] or devices.ort_has_cuda()
    assert session_device(make_session(tmp_path / "m.onnx", threads=1, device="cpu")) == CPU


def test_torch_precisions_in_backend_choices():
    from cosyvoice_onnx.plan import ExecutionPlan, StagePlan

    plan = ExecutionPlan.parse("torch:bf16")
    assert plan.lm == plan.flow == StagePlan("torch", "bf16")
    assert plan.vocoder == StagePlan("torch")  # the vocoder stays fp32
    assert ExecutionPlan.parse("lm=torch:fp16,flow=onnx,vocoder=torch").lm == StagePlan("torch", "fp16")
    with pytest.raises(InputError, match="runs in fp32, bf16, fp16, not int8"):
        ExecutionPlan.parse("torch:int8")

def test_gpu_bench_and_parity_choose_their_engines():
    from cosyvoice_onnx.tools.bench import GPU_TORCH_BACKENDS, backends_for
    from cosyvoice_onnx.tools.parity import test_backend_for

    assert backends_for(["fp32"], cuda=False, device="cuda") == GPU_TORCH_BACKENDS
    assert backends_for(["fp16"], cuda=True, device="cuda:1") == GPU_TORCH_BACKENDS + ["onnx:fp16"]
    assert backends_for(["fp32", "int8"], cuda=False, device="cpu")[:2] == ["torch", "onnx"]
    assert test_backend_for("cuda") == "torch" and test_backend_for("auto") == "onnx"
    assert test_backend_for("cuda", "onnx") == "onnx"


def test_bench_refuses_cuda_and_unknown_columns_before_building(tmp_path, monkeypatch):
    from cosyvoice_onnx.tools.bench import run_bench

    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 0)
    with pytest.raises(InputError, match="torch sees no CUDA GPU"):
        run_bench("tiny", tmp_path, device="cuda")
    with pytest.raises(InputError, match="unknown backend 'tourch'"):
        run_bench("tiny", tmp_path, backends=["torch", "tourch:bf16"])
    assert list(tmp_path.iterdir()) == []  # nothing was built


def test_cli_synth_on_missing_cuda_is_one_error_line(tiny_model_dir, prompt_wav, tmp_path, capsys, monkeypatch):
    from cosyvoice_onnx.cli import main

    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 0)
    code = main(["synth", "--model", str(tiny_model_dir), "--prompt-wav", str(prompt_wav), "--prompt-text", "hi",
                 "--text", "Hello.", "--device", "cuda", "--out", str(tmp_path / "out.wav")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: device cuda was asked for the PyTorch backend, but torch sees no CUDA GPU "
                                 "(a CPU-only torch build, or no NVIDIA driver); use --device cpu"]
    assert not (tmp_path / "out.wav").exists()


def test_studio_plans_run_on_its_device_and_name_a_missing_gpu(monkeypatch):
    from cosyvoice_onnx.studio.handlers import backend_spec

    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 0)
    monkeypatch.setattr(devices, "ort_has_cuda", lambda: False)
    assert str(backend_spec("onnx", "int8", "", "auto")) == "onnx:int8"   # auto resolves to the CPU here
    with pytest.raises(InputError, match="torch sees no CUDA GPU"):
        backend_spec("torch", "fp32", "", "cuda")
    with pytest.raises(InputError, match="is not a backend spec"):
        backend_spec("torch", "fp32", "lm=onnx,bogus", "cpu")
    summary = devices.describe_device(devices.parse_device("auto"))
    assert "PyTorch stages on cpu" in summary and "No GPU seen by torch" in summary


def test_gpu_summary_names_each_gpu_with_free_memory(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(devices, "torch_cuda_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: (10 * 2**30, 16 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "Test GPU")
    assert devices.gpu_summary() == "cuda:0 Test GPU, 10.0 of 16.0 GiB free"
