"""The ONNX speech-token LM (prefill + decode graphs) against the PyTorch module it was exported from."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

from cosyvoice_onnx.config import LLMConfig, ModelConfig
from cosyvoice_onnx.errors import ExportError, InputError
from cosyvoice_onnx.export import lm as export_module
from cosyvoice_onnx.export.lm import export_lm
from cosyvoice_onnx.lm_decode import decode_speech_tokens
from cosyvoice_onnx.onnx_backend.lm import OnnxLanguageModel
from cosyvoice_onnx.sampling import GreedySampler
from cosyvoice_onnx.torch_backend.llm import CosyVoice3LM, TorchLanguageModel

# Real speech vocabulary and special ids, tiny Qwen geometry (GQA with 2 query heads per kv head).
LLM_DIMS = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
                text_vocab_size=300)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(version=3, yaml_name="cosyvoice3.yaml", speech_tokenizer_file="speech_tokenizer_v3.onnx",
                       llm=LLMConfig(**{**LLM_DIMS, **overrides}))


def random_lm(cfg: ModelConfig, seed: int = 0) -> CosyVoice3LM:
    torch.manual_seed(seed)
    model = CosyVoice3LM(cfg.llm).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Weights large enough that attention is sharp and logits well separated, so errors show.
            is_norm = name.endswith("norm.weight")
            p.normal_(1.0 if is_norm else 0.0, 0.1 if is_norm else 0.3)
    return model


def stacked(cache) -> np.ndarray:
    return torch.stack([torch.cat((k, v)) for k, v in cache]).numpy()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = tiny_config()
    model = random_lm(cfg)
    out = tmp_path_factory.mktemp("lm_export")
    export_lm(model, cfg, out)
    return cfg, model, out, TorchLanguageModel(model), OnnxLanguageModel(out, cfg, threads=1)


def ids(seed: int, n: int, p: int, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.llm.text_vocab_size, n), rng.integers(0, cfg.llm.speech_token_size, p)


def test_graphs_have_the_contract_io_and_no_text_head(setup):
    cfg, _, out, _, _ = setup
    c = cfg.llm
    prefill, decode = onnx.load(str(out / "lm_prefill.onnx")), onnx.load(str(out / "lm_decode.onnx"))

    def io(model):
        values = list(model.graph.input) + list(model.graph.output)
        return {v.name: (v.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in shape.dim])
                for v in values for shape in [v.type.tensor_type.shape]}

    i32, i64, f32 = onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    p_io, d_io = io(prefill), io(decode)
    assert [p_io[k][0] for k in ("text_ids", "prompt_speech_ids", "logits")] == [i64, i64, f32]
    assert [d_io[k][0] for k in ("token_id", "seqlens_k", "total_sequence_length", "logits")] == [i64, i32, i32, f32]
    assert isinstance(p_io["text_ids"][1][0], str) and isinstance(p_io["prompt_speech_ids"][1][0], str)
    assert p_io["logits"][1] == d_io["logits"][1] == [c.speech_vocab_size]
    assert d_io["token_id"][1] == d_io["seqlens_k"][1] == [1] and d_io["total_sequence_length"][1] == []
    cache = [f"{way}_{kind}.{layer}" for way in ("past", "present") for kind in ("key", "value")
             for layer in range(c.num_layers)]
    for graph_io in (p_io, d_io):
        assert len(graph_io) == len([k for k in graph_io if k not in cache]) + len(cache)
        for name in cache:
            dtype, shape = graph_io[name]
            assert dtype == f32 and isinstance(shape[2], str)
            assert shape[:2] + shape[3:] == [1, c.num_kv_heads, c.head_dim]
    text_rows = [list(t.dims) for t in prefill.graph.initializer if list(t.dims)[:1] == [c.text_vocab_size]]
    assert text_rows == [[c.text_vocab_size, c.hidden_size]]  # the input embedding only; lm_head is not evaluated
    assert not any(list(t.dims)[:1] == [c.text_vocab_size] for t in decode.graph.initializer)
    assert prefill.ir_version <= 10 and decode.ir_version <= 10


def test_fp32_logits_and_cache_match_torch_over_prefill_and_30_steps(setup):
    cfg, _, _, torch_lm, onnx_lm = setup
    text, prompt = ids(1, 9, 6, cfg)
    t_logits, t_cache = torch_lm.prefill(text, prompt)
    o_logits, o_cache = onnx_lm.prefill(text, prompt)
    assert np.abs(t_logits - o_logits).max() <= 1e-3
    assert np.abs(stacked(t_cache) - o_cache.numpy()).max() <= 1e-3
    worst = 0.0
    for token in np.random.default_rng(2).integers(0, cfg.llm.speech_vocab_size, 30):
        t_logits, t_cache = torch_lm.step(int(token), t_cache)
        o_logits, o_cache = onnx_lm.step(int(token), o_cache)
        worst = max(worst, float(np.abs(t_logits - o_logits).max()))
    assert worst <= 1e-3
    assert o_cache.numpy().shape == (cfg.llm.num_layers, 2, cfg.llm.num_kv_heads, 1 + 9 + 1 + 6 + 30,
                                     cfg.llm.head_dim)
    assert np.abs(stacked(t_cache) - o_cache.numpy()).max() <= 1e-3


@pytest.mark.parametrize("n, p", [(1, 0), (4, 0), (2, 1), (13, 27), (40, 3)])
def test_dynamic_text_and_prompt_lengths(setup, n, p):
    cfg, _, _, torch_lm, onnx_lm = setup
    text, prompt = ids(n * 100 + p, n, p, cfg)
    t_logits, t_cache = torch_lm.prefill(text, prompt)
    o_logits, o_cache = onnx_lm.prefill(text, prompt)
    assert o_cache.length == 1 + n + 1 + p
    assert np.abs(t_logits - o_logits).max() <= 1e-3
    t_logits, _ = torch_lm.step(7, t_cache)
    o_logits, _ = onnx_lm.step(7, o_cache)
    assert np.abs(t_logits - o_logits).max() <= 1e-3


def torch_step(model, past: np.ndarray, token: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference logits and cache of one step after a host cache [layers, 2, kv_heads, S, head_dim]."""
    torch_cache = [(torch.from_numpy(layer[0:1]), torch.from_numpy(layer[1:2])) for layer in past]
    with torch.no_grad():
        hidden, cache = model.forward_hidden(model.embed_speech(torch.tensor([token])), torch_cache)
        return model.logits(hidden[:, -1]).numpy(), stacked(cache)


def random_cache(cfg: ModelConfig, length: int, seed: int) -> np.ndarray:
    c = cfg.llm
    shape = (c.num_layers, 2, c.num_kv_heads, length, c.head_dim)
    return np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32)


@pytest.mark.parametrize("past_len", [1, 5, 64])
def test_decode_accepts_any_cache_length_as_numpy(setup, past_len):
    """A host array cache of any length works, and the new token sits at position past_len (RoPE)."""
    cfg, model, _, _, onnx_lm = setup
    past = random_cache(cfg, past_len, past_len)
    logits, present = onnx_lm.step(11, past)
    expected, expected_cache = torch_step(model, past, 11)
    assert np.abs(logits - expected).max() <= 1e-3
    assert present.length == past_len + 1
    assert np.array_equal(present.numpy()[:, :, :, :past_len], past)
    assert np.abs(present.numpy() - expected_cache).max() <= 1e-3


def test_steps_write_one_buffer_in_place_and_consume_their_handle(setup):
    cfg, _, _, _, onnx_lm = setup
    _, first = onnx_lm.prefill(*ids(7, 5, 3, cfg))
    buffer = first.buffers.host
    _, second = onnx_lm.step(3, first)
    _, third = onnx_lm.step(4, second)
    assert third.buffers.host is buffer and third.length == first.length + 2
    # The decode graph has no copy left: no Concat/Expand of the cache, one attention node per layer.
    decode = onnx.load(str(setup[2] / "lm_decode.onnx")).graph
    ops = [node.op_type for node in decode.node]
    assert ops.count("GroupQueryAttention") == cfg.llm.num_layers
    assert not {"Concat", "Expand", "Tile"} & set(ops)
    with pytest.raises(InputError, match="already passed to step"):
        onnx_lm.step(5, second)


def test_interleaved_requests_keep_their_own_caches(setup):
    cfg, _, _, torch_lm, onnx_lm = setup
    requests = [ids(10, 4, 2, cfg), ids(11, 7, 0, cfg)]
    onnx_state = [onnx_lm.prefill(*request) for request in requests]
    torch_state = [torch_lm.prefill(*request) for request in requests]
    for token in (5, 6, 7):
        onnx_state = [onnx_lm.step(token, cache) for _, cache in onnx_state]
        torch_state = [torch_lm.step(token, cache) for _, cache in torch_state]
        for (o_logits, _), (t_logits, _) in zip(onnx_state, torch_state):
            assert np.abs(o_logits - t_logits).max() <= 1e-3


def test_cache_grows_past_its_capacity_and_stops_at_the_rope_table(setup, tmp_path):
    """A request longer than its buffers continues in larger ones; the RoPE table length is a hard limit."""
    cfg, model, _, _, _ = setup
    export_lm(model, cfg, tmp_path, max_positions=300)
    onnx_lm = OnnxLanguageModel(tmp_path, cfg, threads=1)
    past = random_cache(cfg, 255, 9)
    _, cache = onnx_lm.step(11, past)
    _, expected_cache = torch_step(model, past, 11)
    assert cache.buffers.capacity == 256
    worst = 0.0
    for token in np.random.default_rng(3).integers(0, cfg.llm.speech_vocab_size, 300 - 256):
        logits, cache = onnx_lm.step(int(token), cache)
        expected, expected_cache = torch_step(model, expected_cache, int(token))
        worst = max(worst, float(np.abs(logits - expected).max()))
    assert worst <= 1e-3
    assert cache.buffers.capacity == 300 and cache.length == 300
    assert np.abs(cache.numpy() - expected_cache).max() <= 1e-3
    with pytest.raises(InputError, match="301 positions"):
        onnx_lm.step(1, cache)


def test_greedy_tokens_identical(setup):
    cfg, _, _, torch_lm, onnx_lm = setup
    text, prompt = ids(3, 11, 8, cfg)
    kwargs = dict(exact_len=40, eos_mask_mode="correct")
    torch_tokens = decode_speech_tokens(torch_lm, text, [], prompt, cfg.llm, GreedySampler(), **kwargs)
    onnx_tokens = decode_speech_tokens(onnx_lm, text, [], prompt, cfg.llm, GreedySampler(), **kwargs)
    assert len(torch_tokens) == 40 and len(set(torch_tokens)) > 5
    assert onnx_tokens == torch_tokens
    no_prompt = decode_speech_tokens(torch_lm, text, [], [], cfg.llm, GreedySampler(), **kwargs)
    assert decode_speech_tokens(onnx_lm, text, [], [], cfg.llm, GreedySampler(), **kwargs) == no_prompt


def traced_layout_graph(path, cfg: ModelConfig) -> None:
    """A stand-in for a graph of the older traced exporter: a stacked past_kv in, present_kv and logits out."""
    c = cfg.llm
    cache = [c.num_layers, 2, c.num_kv_heads, "past_len", c.head_dim]
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["past_kv"], ["present_kv"]),
         onnx.helper.make_node("Identity", ["scores"], ["logits"])], "old",
        [onnx.helper.make_tensor_value_info("token_id", onnx.TensorProto.INT64, [1]),
         onnx.helper.make_tensor_value_info("past_kv", onnx.TensorProto.FLOAT, cache),
         onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, [c.speech_vocab_size])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [c.speech_vocab_size]),
         onnx.helper.make_tensor_value_info("present_kv", onnx.TensorProto.FLOAT, cache)])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=9), path)


def test_stale_export_is_rejected_by_name(setup, tmp_path):
    _, _, out, _, _ = setup
    with pytest.raises(ExportError, match="lm_prefill.*stale"):
        OnnxLanguageModel(out, tiny_config(num_layers=3), threads=1)
    with pytest.raises(ExportError, match="missing"):
        OnnxLanguageModel(out / "nowhere", tiny_config(), threads=1)
    for name in ("lm_prefill.onnx", "lm_decode.onnx"):
        traced_layout_graph(tmp_path / name, tiny_config())
    with pytest.raises(ExportError, match="lm_prefill.*traced.*stale.*export --model"):
        OnnxLanguageModel(tmp_path, tiny_config(), threads=1)


def test_large_graphs_go_to_one_external_data_file(setup, tmp_path, monkeypatch):
    cfg, model, _, torch_lm, _ = setup
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
    paths = export_lm(model, cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [p.name for p in paths] + [p.name + ".data" for p in paths])
    assert all(p.stat().st_size < 200_000 for p in paths)
    text, prompt = ids(4, 5, 2, cfg)
    logits, _ = OnnxLanguageModel(tmp_path, cfg, threads=1).prefill(text, prompt)
    assert np.abs(logits - torch_lm.prefill(text, prompt)[0]).max() <= 1e-3


def test_runtime_never_imports_torch(setup):
    _, _, out, torch_lm, _ = setup
    script = textwrap.dedent(f"""
        import sys, json
        sys.modules["torch"] = None
        import numpy as np
        from cosyvoice_onnx.config import LLMConfig, ModelConfig
        from cosyvoice_onnx.onnx_backend.lm import OnnxLanguageModel
        cfg = ModelConfig(version=3, yaml_name="cosyvoice3.yaml", speech_tokenizer_file="x",
                          llm=LLMConfig(**{LLM_DIMS!r}))
        lm = OnnxLanguageModel({str(out)!r}, cfg, threads=1)
        logits, cache = lm.prefill(np.array([5, 6, 7]), np.array([], dtype=np.int64))
        logits, cache = lm.step(int(np.argmax(logits)), cache)
        print(json.dumps(logits.tolist()))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    logits, cache = torch_lm.prefill(np.array([5, 6, 7]), np.array([], dtype=np.int64))
    expected, _ = torch_lm.step(int(np.argmax(logits)), cache)
    assert np.abs(np.array(json.loads(result.stdout)) - expected).max() <= 1e-3


def greedy_agreement(reference: list[int], other: list[int]) -> float:
    return float(np.mean(np.array(reference) == np.array(other)))


def test_int8_runs_and_reports_its_agreement(setup, tmp_path, record_property):
    """A tiny random model says little about int8 quality, so this checks that it runs and measures it."""
    cfg, model, out, torch_lm, _ = setup
    fp32_paths = [out / "lm_prefill.onnx", out / "lm_decode.onnx"]
    paths = export_lm(model, cfg, tmp_path, precision="int8", fp32_paths=fp32_paths)
    assert [p.name for p in paths] == ["lm_prefill.int8.onnx", "lm_decode.int8.onnx"]
    prefill_ops, decode_ops = ([n.op_type for n in onnx.load(str(p)).graph.node] for p in paths)
    # Every projection and llm_decoder: dynamic int8 GEMMs in the prefill, fused 8-bit kernels in the decode.
    assert prefill_ops.count("MatMulInteger") == 4 * cfg.llm.num_layers + 1 and "MatMul" not in prefill_ops
    assert decode_ops.count("MatMulNBits") == 4 * cfg.llm.num_layers + 1 and "MatMul" not in decode_ops
    int8_lm = OnnxLanguageModel(tmp_path, cfg, precision="int8", threads=1)
    text, prompt = ids(5, 10, 6, cfg)
    logits, _ = int8_lm.prefill(text, prompt)
    assert logits.shape == (cfg.llm.speech_vocab_size,) and np.isfinite(logits).all()
    kwargs = dict(exact_len=50, eos_mask_mode="correct")
    reference = decode_speech_tokens(torch_lm, text, [], prompt, cfg.llm, GreedySampler(), **kwargs)
    tokens = decode_speech_tokens(int8_lm, text, [], prompt, cfg.llm, GreedySampler(), **kwargs)
    agreement = greedy_agreement(reference, tokens)
    record_property("int8_prefill_max_abs_diff", float(np.abs(logits - torch_lm.prefill(text, prompt)[0]).max()))
    record_property("int8_greedy_agreement_50", agreement)
    assert len(tokens) == 50 and 0.0 <= agreement <= 1.0


def test_fp16_runs_on_cpu_with_rope_tables_rounded_from_fp32(setup, tmp_path):
    cfg, model, _, torch_lm, _ = setup
    c = cfg.llm
    paths = export_lm(model, cfg, tmp_path, precision="fp16")
    decode = onnx.load(str(paths[1])).graph
    tables = {t.name: onnx.numpy_helper.to_array(t) for t in decode.initializer if t.name.startswith("rotary.")}
    # Closed-form angles in float64. The tables may differ by the rounding of cos/sin to fp16 (half an ulp,
    # 2^-12 below 1) plus that of the fp32 angles they were computed from (< 2^-12 here); an angle rounded to
    # fp16 would be off by whole radians at these positions.
    inv_freq = 1.0 / c.rope_theta ** (np.arange(0, c.head_dim, 2) / c.head_dim)
    angles = np.arange(len(tables["rotary.cos"]))[:, None] * inv_freq[None, :]
    assert tables["rotary.cos"].dtype == np.float16 and len(tables["rotary.cos"]) > 30000
    for name, exact in (("rotary.cos", np.cos(angles)), ("rotary.sin", np.sin(angles))):
        assert np.abs(tables[name].astype(np.float64) - exact).max() <= 2 ** -11
    try:
        fp16_lm = OnnxLanguageModel(tmp_path, cfg, precision="fp16", threads=1)
    except ExportError as exc:
        pytest.skip(f"onnxruntime's CPU execution provider cannot run this fp16 graph: {exc}")
    assert fp16_lm.cache_dtype == np.float16
    # 3000 positions: RoPE angles rounded to fp16 would put the logits off by ~13% of their spread here.
    text, prompt = ids(6, 3000, 6, cfg)
    expected, t_cache = torch_lm.prefill(text, prompt)
    logits, cache = fp16_lm.prefill(text, prompt)
    assert logits.dtype == np.float32 and np.abs(logits - expected).max() <= 0.02 * np.ptp(expected)
    expected, _ = torch_lm.step(3, t_cache)
    logits, _ = fp16_lm.step(3, cache)
    assert np.abs(logits - expected).max() <= 0.02 * np.ptp(expected)
