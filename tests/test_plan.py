"""The execution plan: one parser for every backend spec, one canonical spelling, the precision table."""

import pytest

from cosyvoice_onnx.devices import Device
from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.plan import ExecutionPlan, StagePlan, graph_files

CPU = Device("cpu")


@pytest.mark.parametrize("spec, expected", [
    ("torch", ("torch", "torch", "torch")),
    ("onnx", ("onnx", "onnx", "onnx")),
    ("onnx:int8", ("onnx:int8", "onnx:int8", "onnx")),   # the vocoder stays fp32 under int8
    ("onnx:fp16", ("onnx:fp16", "onnx:fp16", "onnx")),   # ... and under fp16
    ("torch:fp16", ("torch:fp16", "torch:fp16", "torch")),
    ("torch:bf16", ("torch:bf16", "torch:bf16", "torch")),  # the vocoder stays fp32 under every reduced precision
    ("lm=onnx:int8,flow=torch,vocoder=onnx", ("onnx:int8", "torch", "onnx")),
    (" lm = onnx:int8 , vocoder=onnx ", ("onnx:int8", "torch", "onnx")),  # a stage left out runs on torch
    ({"lm": "onnx:int8", "flow": "onnx"}, ("onnx:int8", "onnx", "torch")),
    ("onnx:int8@cuda:1", ("onnx:int8@cuda:1", "onnx:int8@cuda:1", "onnx@cuda:1")),
    ("lm=onnx@cuda,flow=torch", ("onnx@cuda", "torch", "torch")),
])
def test_specs_parse_to_stage_plans(spec, expected):
    plan = ExecutionPlan.parse(spec)
    assert tuple(str(p) for p in plan.stages().values()) == expected


@pytest.mark.parametrize("spec", ["torch", "onnx:int8", "lm=onnx:int8,flow=onnx,vocoder=onnx", "onnx:fp16@cuda",
                                  "lm=onnx:int8,flow=torch,vocoder=onnx", {"flow": "onnx"}, "torch:bf16@cuda:2"])
@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_the_canonical_string_parses_back_to_an_equal_plan(spec, device):
    plan = ExecutionPlan.parse(spec, device=device)
    assert ExecutionPlan.parse(str(plan)) == plan
    assert hash(ExecutionPlan.parse(str(plan))) == hash(plan)
    assert ExecutionPlan.parse(plan) is plan


def test_equivalent_spellings_are_one_plan_with_one_string():
    a = ExecutionPlan.parse("onnx:int8")
    b = ExecutionPlan.parse("lm=onnx:int8,flow=onnx:int8,vocoder=onnx:int8")
    assert a == b and str(a) == str(b) == "onnx:int8" and len({a, b}) == 1
    assert str(ExecutionPlan.parse("lm=onnx:int8,flow=onnx,vocoder=onnx")) == "lm=onnx:int8,flow=onnx,vocoder=onnx"
    assert ExecutionPlan.parse("onnx", device="cuda").lm == StagePlan("onnx", "fp32", Device("cuda"))
    assert ExecutionPlan.everywhere("onnx", "int8") == a


@pytest.mark.parametrize("spec, message", [
    ("lm=onnx,bogus", "'bogus' is not stage=backend"),
    ("=x", "names no stage"),
    ("lm=", "lm= needs a backend"),
    ("lm=onnx,lm=torch", "given twice"),
    ("lm=tensorrt", "unknown backend 'tensorrt'"),
    ("onnx:int4", "unknown precision 'int4'"),
    ("onnx:", "a precision must follow"),
    ("speaker=onnx", "unknown stage 'speaker'"),
    ("torch:int8", "runs in fp32, bf16, fp16, not int8"),
    ("flow=onnx:bf16", "runs in fp32, fp16, int8, not bf16"),
    ("onnx@tpu", "unknown device"),
    ({"lm": ""}, "lm= needs a backend"),
])
def test_malformed_specs_name_the_bad_part_and_the_syntax(spec, message):
    with pytest.raises(InputError, match=message) as caught:
        ExecutionPlan.parse(spec)
    text = str(caught.value)
    assert "dictionary update" not in text
    if isinstance(spec, str) and "=" in spec and "runs in" not in message:
        assert "lm=onnx:int8,flow=torch,vocoder=onnx" in text


def test_graph_files_per_stage_and_precision():
    assert graph_files("lm", "int8") == {"lm_prefill": "lm_prefill.int8.onnx", "lm_decode": "lm_decode.int8.onnx"}
    assert graph_files("flow", "fp16") == {"flow_encoder": "flow_encoder.onnx",
                                           "flow_estimator": "flow_estimator.fp16.onnx"}
    assert graph_files("vocoder", "int8") == {"hift_final": "hift_final.onnx", "hift_stream": "hift_stream.onnx"}
    assert graph_files("vocoder", "fp32", causal_vocoder=False) == {"hift_cached": "hift_cached.onnx"}
