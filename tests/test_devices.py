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
