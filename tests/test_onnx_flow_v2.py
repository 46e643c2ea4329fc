"""ONNX export of the CosyVoice2 flow: conformer encoder and UNet estimator graphs against PyTorch, and token-to-mel."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from cosyvoice_onnx.config import FlowConfig, ModelConfig
from cosyvoice_onnx.errors import ExportError, InputError
from cosyvoice_onnx.export.flow import export_flow
from cosyvoice_onnx.flow_solver import token_to_mel
from cosyvoice_onnx.onnx_backend.flow import OnnxFlow
from cosyvoice_onnx.torch_backend.flow import TorchFlow, flow_noise_buffer_torch
from cosyvoice_onnx.torch_backend.flow_v2 import ConformerUNetFlow

# Real chunk sizes (25 tokens, 50 frames), tiny widths.
TINY = FlowConfig(kind="conformer_unet", encoder_dim=32, encoder_heads=4, encoder_linear_units=48,
                  encoder_num_blocks=2, encoder_num_up_blocks=1, unet_channels=32, unet_n_blocks=1,
                  unet_num_mid_blocks=2, unet_heads=2, unet_head_dim=16)
CFG = ModelConfig(version=2, yaml_name="cosyvoice2.yaml", speech_tokenizer_file="speech_tokenizer_v2.onnx", flow=TINY)


@pytest.fixture(scope="module")
def flow() -> ConformerUNetFlow:
    torch.manual_seed(0)
    return ConformerUNetFlow(TINY).eval()


@pytest.fixture(scope="module")
def export_dir(flow, tmp_path_factory):
    out = tmp_path_factory.mktemp("flow_v2_export")
    written = export_flow(flow, CFG, out, precision="fp16")
    assert [p.name for p in written] == ["flow_encoder.onnx", "flow_estimator.onnx", "flow_estimator.fp16.onnx"]
    return out


@pytest.fixture(scope="module")
def onnx_flow(export_dir) -> OnnxFlow:
    return OnnxFlow(export_dir, CFG, "fp32", threads=1)


def test_graphs_have_the_contracted_interface(export_dir):
    for name in ("flow_encoder.onnx", "flow_estimator.onnx", "flow_estimator.fp16.onnx"):
        onnx.checker.check_model(onnx.load(str(export_dir / name)))
    encoder = onnx.load(str(export_dir / "flow_encoder.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in encoder.input}
    assert dims == {"tokens": [1, "n_tokens"], "embedding": [1, 192], "context": [1, "n_context"], "streaming": [1]}
    assert [o.name for o in encoder.output] == ["mu", "spks"]
    estimator = onnx.load(str(export_dir / "flow_estimator.onnx")).graph
    assert [i.name for i in estimator.input] == ["x", "mask", "mu", "t", "spks", "cond", "streaming"]


@pytest.mark.parametrize("n_tokens", [4, 29, 60])
def test_encoder_matches_torch(flow, onnx_flow, n_tokens):
    tokens = np.random.default_rng(n_tokens).integers(0, TINY.vocab_size, (1, n_tokens))
    results = {}
    for finalize in (True, False):
        for streaming in (False, True):
            with torch.no_grad():
                expected = flow.encode_tokens(torch.from_numpy(tokens), finalize, streaming).numpy()
            got = onnx_flow.encode_tokens(tokens, finalize, streaming)
            assert got.shape == expected.shape == (1, 80, 2 * (n_tokens - (0 if finalize else 3)))
            assert np.abs(got - expected).max() <= 1e-5
            results[finalize, streaming] = got
    # The graph really switches: past one 25-token chunk, chunked attention changes mu; the look-ahead tokens
    # change every frame, since the conformer attends over all of them.
    assert (np.abs(results[True, True] - results[True, False]).max() > 1e-4) == (n_tokens > 25)
    assert np.abs(results[True, False][..., :-6] - results[False, False]).max() > 1e-4


def test_nonfinal_encoding_needs_more_than_the_lookahead(onnx_flow):
    with pytest.raises(InputError):
        onnx_flow.encode_tokens(np.zeros((1, 3), dtype=np.int64), finalize=False)


def test_speaker_embedding_matches_torch(flow, onnx_flow):
    embedding = np.random.default_rng(2).standard_normal((1, 192)).astype(np.float32) * 5
    with torch.no_grad():
        expected = flow.embed_speaker(torch.from_numpy(embedding)).numpy()
    assert np.abs(onnx_flow.embed_speaker(embedding) - expected).max() <= 1e-5


def estimator_inputs(seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, mu, cond = (rng.standard_normal((2, 80, seq_len)).astype(np.float32) for _ in range(3))
    mask = np.ones((2, 1, seq_len), dtype=np.float32)
    mask[1, :, -9:] = 0.0
    return dict(x=x, mask=mask, mu=mu, t=np.array([0.31, 0.77], dtype=np.float32),
                spks=rng.standard_normal((2, 80)).astype(np.float32), cond=cond)


@pytest.mark.parametrize("seq_len", [37, 120])
@pytest.mark.parametrize("streaming", [False, True])
def test_estimator_matches_torch(flow, onnx_flow, seq_len, streaming):
    inputs = estimator_inputs(seq_len)
    with torch.no_grad():
        expected = flow.estimator(*(torch.from_numpy(v) for v in inputs.values()), streaming=streaming).numpy()
    got = onnx_flow.estimate(**inputs, streaming=streaming)
    assert got.shape == (2, 80, seq_len)
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("streaming,finalize", [(True, False), (True, True), (False, True)])
def test_token_to_mel_matches_torch(flow, onnx_flow, streaming, finalize):
    rng = np.random.default_rng(3)
    prompt_tokens = rng.integers(0, TINY.vocab_size, (1, 20))
    tokens = rng.integers(0, TINY.vocab_size, (1, 45))
    prompt_feat = rng.standard_normal((1, 40, 80)).astype(np.float32)
    embedding = rng.standard_normal((1, 192)).astype(np.float32)
    noise = flow_noise_buffer_torch().numpy()
    args = (tokens, prompt_tokens, prompt_feat, embedding, noise, streaming, finalize, TINY)
    expected = token_to_mel(TorchFlow(flow), *args)
    got = token_to_mel(onnx_flow, *args)
    assert got.shape == expected.shape == (1, 80, 2 * (45 - (0 if finalize else 3)))
    assert np.abs(got - expected).max() <= 1e-3


def test_fp16_estimator_keeps_fragile_ops_in_fp32(export_dir):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(export_dir / "flow_estimator.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    fragile = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax", "Sin", "Cos")]
    levels = 2 + TINY.unet_num_mid_blocks                # down, mid and up: one resnet + transformer blocks each
    transformer_blocks = levels * TINY.unet_n_blocks
    # Two LayerNorms and a softmax per transformer block, one LayerNorm per causal block, the time sinusoid.
    assert len(fragile) == 3 * transformer_blocks + (2 * levels + 1) + 2
    assert all(types[node.input[0]] == onnx.TensorProto.FLOAT for node in fragile)
    time_nodes = [n for n in model.graph.node if n.name.startswith("/time_embeddings/") and n.op_type == "Mul"]
    assert time_nodes and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in time_nodes)


def test_fp16_estimator_stays_close_to_fp32(export_dir, onnx_flow):
    try:
        half = OnnxFlow(export_dir, CFG, "fp16", threads=1)
    except ExportError as exc:
        pytest.skip(f"this onnxruntime CPU build cannot run the fp16 estimator: {exc}")
    inputs = estimator_inputs(120)
    expected = onnx_flow.estimate(**inputs, streaming=True)
    got = half.estimate(**inputs, streaming=True)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.abs(got - expected).max() <= 0.005 * np.abs(expected).max()


def test_export_of_another_flow_kind_is_refused(export_dir):
    cv3 = ModelConfig(version=3, yaml_name="cosyvoice3.yaml", speech_tokenizer_file="speech_tokenizer_v3.onnx")
    with pytest.raises(ExportError, match="re-export"):
        OnnxFlow(export_dir, cv3)
