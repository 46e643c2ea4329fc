"""ONNX export of each release's flow: token encoder and velocity estimator graphs against the PyTorch module, and
the full token-to-mel run. Tests that hold for every release run once per release; the rest test CV3's DiT."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
import torch

from cosyvoice_onnx.config import FlowConfig, ModelConfig
from cosyvoice_onnx.releases import RELEASES, release_config
from cosyvoice_onnx.errors import ExportError, InputError
from cosyvoice_onnx.export.flow import export_flow
from cosyvoice_onnx.flow_solver import token_to_mel
from cosyvoice_onnx.onnx_backend.flow import OnnxFlow
from cosyvoice_onnx.torch_backend.flow import TorchFlow, flow_noise_buffer_torch
from cosyvoice_onnx.torch_backend.loader import FLOW_CLASSES

# The tiny model's flow dimensions (cosyvoice_onnx.tools.tiny), with a short chunk so T=120 spans three chunks.
TINY_DIT = FlowConfig(pre_lookahead_channels=64, dit_dim=64, dit_depth=2, dit_heads=4, dit_dim_head=16,
                      static_chunk_size=50)
# Real chunk sizes (25 tokens, 50 frames), tiny widths.
TINY_UNET = FlowConfig(kind="conformer_unet", encoder_dim=32, encoder_heads=4, encoder_linear_units=48,
                       encoder_num_blocks=2, encoder_num_up_blocks=1, unet_channels=32, unet_n_blocks=1,
                       unet_num_mid_blocks=2, unet_heads=2, unet_head_dim=16)


def _unet_fragile_ops(f: FlowConfig) -> int:
    levels = 2 + f.unet_num_mid_blocks                   # down, mid and up: one resnet + transformer blocks each
    # Two LayerNorms and a softmax per transformer block, one LayerNorm per causal block, the time sinusoid.
    return 3 * levels * f.unet_n_blocks + (2 * levels + 1) + 2


@dataclass(frozen=True)
class OnnxFlowCase:
    """What the export of one flow kind looks like."""

    tiny: FlowConfig
    encoder_inputs: dict             # name -> dims of flow_encoder.onnx's inputs
    encoder_n_tokens: tuple          # token counts the encoder is checked at
    encoder_attends: bool            # attention over the tokens (conformer), not only convolutions (DiT's encoder)
    fragile_ops: Callable[[FlowConfig], int]   # LayerNorm, Softmax, Sin, Cos nodes that fp16 must keep in fp32
    time_embedding: str              # node name prefix of the time sinusoid, which stays fp32 under fp16
    no_cast_chains_from_fp32: bool   # no Cast of a Cast of an fp32 value anywhere in the fp16 estimator
    fp16_checks: tuple               # (frames, t or None for the inputs' own t) compared with fp32
    fp16_tolerance: float            # of the fp32 output's range


CASES = {
    "dit": OnnxFlowCase(
        tiny=TINY_DIT, encoder_inputs={"tokens": [1, "n_tokens"], "embedding": [1, 192]},
        encoder_n_tokens=(4, 13, 40), encoder_attends=False,
        fragile_ops=lambda f: 2 * 2 + 2 * f.dit_depth + 1 + f.dit_depth, time_embedding="/time_embed/",
        no_cast_chains_from_fp32=True, fp16_checks=((120, 0.2), (1100, 0.9)),
        # Measured 0.05% of the range; rounding t and the angles to fp16 as the bare converter does gives 0.4%.
        fp16_tolerance=0.002),
    "conformer_unet": OnnxFlowCase(
        tiny=TINY_UNET, encoder_inputs={"tokens": [1, "n_tokens"], "embedding": [1, 192],
                                        "context": [1, "n_context"], "streaming": [1]},
        encoder_n_tokens=(4, 29, 60), encoder_attends=True, fragile_ops=_unet_fragile_ops,
        time_embedding="/time_embeddings/",
        # Its sinusoid goes fp32 -> Cast(fp32) -> Cast(fp16) into the time MLP: a chain, but no fp16 round trip.
        no_cast_chains_from_fp32=False, fp16_checks=((120, None),), fp16_tolerance=0.005),
}
VERSIONS = sorted(RELEASES, reverse=True)
by_release = pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"CV{v}")
dit_only = pytest.mark.parametrize("version", [v for v in VERSIONS if RELEASES[v].flow_kind == "dit"],
                                   ids=lambda v: f"CV{v}")


def case_of(version: int) -> OnnxFlowCase:
    return CASES[RELEASES[version].flow_kind]


def model_config(version: int) -> ModelConfig:
    r = RELEASES[version]
    return ModelConfig(version=version, yaml_name=r.yaml_name, speech_tokenizer_file=r.speech_tokenizer_file,
                       flow=case_of(version).tiny)


class ReleaseExports:
    """Per release, made on first use and kept for the module: the tiny flow, its export and the ONNX stage."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory

    @functools.cache
    def flow(self, version: int) -> torch.nn.Module:
        torch.manual_seed(0)
        return FLOW_CLASSES[RELEASES[version].flow_kind](case_of(version).tiny).eval()

    @functools.cache
    def export(self, version: int, precision: str) -> Path:
        """fp32 graphs plus the estimator in `precision`, in a folder of their own."""
        out = self.tmp_path_factory.mktemp(f"flow_{precision}_cv{version}")
        written = export_flow(self.flow(version), model_config(version), out, precision=precision)
        assert [p.name for p in written] == ["flow_encoder.onnx", "flow_estimator.onnx",
                                             f"flow_estimator.{precision}.onnx"]
        return out

    @functools.cache
    def onnx_flow(self, version: int) -> OnnxFlow:
        return OnnxFlow(self.export(version, "fp16"), model_config(version), "fp32", threads=1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> ReleaseExports:
    return ReleaseExports(tmp_path_factory)


# Each test names `version` through by_release or dit_only; these fixtures give that release's objects.
@pytest.fixture
def cfg(version) -> ModelConfig:
    return model_config(version)


@pytest.fixture
def flow(exports, version) -> torch.nn.Module:
    return exports.flow(version)


@pytest.fixture
def export_dir(exports, version) -> Path:
    return exports.export(version, "fp16")


@pytest.fixture
def onnx_flow(exports, version) -> OnnxFlow:
    return exports.onnx_flow(version)


@pytest.fixture
def int8_dir(exports, version) -> Path:
    return exports.export(version, "int8")


def estimator_inputs(seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Batch of two with different t per row and the last 9 frames of row 1 padded out."""
    rng = np.random.default_rng(seed)
    x, mu, cond = (rng.standard_normal((2, 80, seq_len)).astype(np.float32) for _ in range(3))
    mask = np.ones((2, 1, seq_len), dtype=np.float32)
    mask[1, :, -9:] = 0.0
    return dict(x=x, mask=mask, mu=mu, t=np.array([0.31, 0.77], dtype=np.float32),
                spks=rng.standard_normal((2, 80)).astype(np.float32), cond=cond)


# --------------------------------------------------------------------------- graphs, every release


@by_release
def test_graphs_have_the_contracted_interface(export_dir, version):
    for name in ("flow_encoder.onnx", "flow_estimator.onnx", "flow_estimator.fp16.onnx"):
        model = onnx.load(str(export_dir / name))
        assert model.ir_version <= 10
        onnx.checker.check_model(model)
    encoder = onnx.load(str(export_dir / "flow_encoder.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in encoder.input}
    assert dims == case_of(version).encoder_inputs
    assert [o.name for o in encoder.output] == ["mu", "spks"]
    estimator = onnx.load(str(export_dir / "flow_estimator.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in estimator.input}
    assert list(dims) == ["x", "mask", "mu", "t", "spks", "cond", "streaming"]
    assert dims == {"x": [2, 80, "seq_len"], "mask": [2, 1, "seq_len"], "mu": [2, 80, "seq_len"], "t": [2],
                    "spks": [2, 80], "cond": [2, 80, "seq_len"], "streaming": [1]}
    assert [o.name for o in estimator.output] == ["velocity"]


@by_release
@pytest.mark.parametrize("seq_len", [37, 120])
@pytest.mark.parametrize("streaming", [False, True])
def test_estimator_matches_torch(flow, onnx_flow, seq_len, streaming):
    inputs = estimator_inputs(seq_len)
    with torch.no_grad():
        expected = flow.estimator(*(torch.from_numpy(v) for v in inputs.values()), streaming=streaming).numpy()
    got = onnx_flow.estimate(**inputs, streaming=streaming)
    assert got.shape == (2, 80, seq_len)
    assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("version,n_tokens", [(v, n) for v in VERSIONS for n in case_of(v).encoder_n_tokens],
                         ids=lambda p: f"CV{p}" if p in RELEASES else str(p))
def test_encoder_matches_torch(flow, onnx_flow, version, n_tokens):
    tokens = np.random.default_rng(n_tokens).integers(0, case_of(version).tiny.vocab_size, (1, n_tokens))
    results = {}
    for finalize in (True, False):
        for streaming in (False, True):
            with torch.no_grad():
                expected = flow.encode_tokens(torch.from_numpy(tokens), finalize, streaming).numpy()
            got = onnx_flow.encode_tokens(tokens, finalize, streaming)
            assert got.shape == expected.shape == (1, 80, 2 * (n_tokens - (0 if finalize else 3)))
            assert np.abs(got - expected).max() <= 1e-5
            results[finalize, streaming] = got
    # An encoder that attends over the tokens really switches: past one 25-token chunk, chunked attention changes
    # mu, and the look-ahead tokens change every frame. Convolutions alone see neither (streaming is ignored, a
    # non-final mu is the final one without its look-ahead frames).
    attends = case_of(version).encoder_attends
    assert (np.abs(results[True, True] - results[True, False]).max() > 1e-4) == (attends and n_tokens > 25)
    assert (np.abs(results[True, False][..., :-6] - results[False, False]).max() > 1e-4) == attends


@by_release
def test_nonfinal_encoding_needs_more_than_the_lookahead(onnx_flow):
    with pytest.raises(InputError):
        onnx_flow.encode_tokens(np.zeros((1, 3), dtype=np.int64), finalize=False)


@by_release
def test_speaker_embedding_matches_torch(flow, onnx_flow):
    embedding = np.random.default_rng(2).standard_normal((1, 192)).astype(np.float32) * 5
    with torch.no_grad():
        expected = flow.embed_speaker(torch.from_numpy(embedding)).numpy()
    assert np.abs(onnx_flow.embed_speaker(embedding) - expected).max() <= 1e-5


@by_release
@pytest.mark.parametrize("streaming,finalize", [(True, False), (True, True), (False, True)])
def test_token_to_mel_matches_torch(flow, onnx_flow, cfg, streaming, finalize):
    rng = np.random.default_rng(3)
    prompt_tokens = rng.integers(0, cfg.flow.vocab_size, (1, 20))
    tokens = rng.integers(0, cfg.flow.vocab_size, (1, 45))
    prompt_feat = rng.standard_normal((1, 40, 80)).astype(np.float32)
    embedding = rng.standard_normal((1, 192)).astype(np.float32)
    noise = flow_noise_buffer_torch().numpy()
    args = (tokens, prompt_tokens, prompt_feat, embedding, noise, streaming, finalize, cfg.flow)
    expected = token_to_mel(TorchFlow(flow), *args)
    got = token_to_mel(onnx_flow, *args)
    assert got.shape == expected.shape == (1, 80, 2 * (45 - (0 if finalize else 3)))
    assert np.abs(got - expected).max() <= 1e-3


@by_release
def test_fp16_estimator_keeps_fragile_ops_in_fp32(export_dir, version):
    case = case_of(version)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(export_dir / "flow_estimator.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    producer = {out: node for node in model.graph.node for out in node.output}
    fragile = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax", "Sin", "Cos")]
    assert len(fragile) == case.fragile_ops(case.tiny)
    assert all(types[node.input[0]] == onnx.TensorProto.FLOAT for node in fragile)
    time_nodes = [n for n in model.graph.node if n.name.startswith(case.time_embedding) and n.op_type == "Mul"]
    assert time_nodes and all(types[n.output[0]] == onnx.TensorProto.FLOAT for n in time_nodes)
    # No fp32 value makes an fp32 -> fp16 -> fp32 round trip (which would round the sinusoid arguments).
    for node in model.graph.node if case.no_cast_chains_from_fp32 else ():
        inner = producer.get(node.input[0]) if node.op_type == "Cast" and node.input else None
        if inner is not None and inner.op_type == "Cast":
            assert types.get(inner.input[0]) != onnx.TensorProto.FLOAT, node.name
    assert any(types.get(n.output[0]) == onnx.TensorProto.FLOAT16 for n in model.graph.node if n.op_type == "MatMul")


@by_release
def test_fp16_estimator_stays_close_to_fp32(export_dir, onnx_flow, cfg):
    case = case_of(cfg.version)
    try:
        half = OnnxFlow(export_dir, cfg, "fp16", threads=1)
    except ExportError as exc:
        pytest.skip(f"this onnxruntime CPU build cannot run the fp16 estimator: {exc}")
    for seq_len, t in case.fp16_checks:
        inputs = estimator_inputs(seq_len)
        if t is not None:
            inputs["t"][:] = t
        expected = onnx_flow.estimate(**inputs, streaming=True)
        got = half.estimate(**inputs, streaming=True)
        assert got.dtype == np.float32 and np.isfinite(got).all()
        assert np.abs(got - expected).max() <= case.fp16_tolerance * np.abs(expected).max()


@by_release
def test_export_of_another_flow_kind_is_refused(export_dir, version):
    (other,) = (v for v in RELEASES if RELEASES[v].flow_kind != RELEASES[version].flow_kind)
    with pytest.raises(ExportError, match="re-export"):
        OnnxFlow(export_dir, release_config(other))


# --------------------------------------------------------------------------- CV3: DiT estimator graph


@dit_only
def test_streaming_switch_changes_only_what_chunks_change(onnx_flow):
    # Inside the first chunk nothing can see a later chunk, so both masks agree there; later frames differ.
    inputs = estimator_inputs(120)
    full = onnx_flow.estimate(**inputs, streaming=False)
    chunked = onnx_flow.estimate(**inputs, streaming=True)
    assert np.abs(full - chunked)[:, :, 50:].max() > 1e-3
    # One chunk or less: the chunk mask is the full mask.
    short = estimator_inputs(50)
    np.testing.assert_array_equal(onnx_flow.estimate(**short, streaming=True),
                                  onnx_flow.estimate(**short, streaming=False))



@dit_only
def test_chunked_frames_ignore_later_frames(onnx_flow):
    # Causality of the streaming mask in the graph: changing frames >= 100 leaves frames < 100 untouched.
    inputs = estimator_inputs(150)
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["x"][:, :, 100:] += 1.0
    a = onnx_flow.estimate(**inputs, streaming=True)
    b = onnx_flow.estimate(**changed, streaming=True)
    assert np.abs(a - b)[:, :, :100].max() <= 1e-5
    assert np.abs(a - b)[:, :, 100:].max() > 1e-3



@dit_only
def test_nonfinal_encoding_is_the_final_one_without_lookahead_frames(flow):
    # Why OnnxFlow slices instead of shipping a second graph: the look-ahead conv reaches 3 tokens right only.
    tokens = torch.from_numpy(np.random.default_rng(1).integers(0, TINY_DIT.vocab_size, (1, 30)))
    with torch.no_grad():
        final = flow.encode_tokens(tokens, True)
        partial = flow.encode_tokens(tokens, False)
    assert np.abs((final[:, :, :-6] - partial).numpy()).max() <= 1e-6



# --------------------------------------------------------------------------- CV3: int8, files, no torch


@dit_only
def test_int8_quantizes_only_the_weight_matmuls(int8_dir):
    graph = onnx.load(str(int8_dir / "flow_estimator.int8.onnx")).graph
    weights = {t.name for t in graph.initializer}
    fp32_matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    int8_matmuls = [n for n in graph.node if n.op_type == "MatMulInteger"]
    # Per block: q, k, v, out and the two feed-forward layers; plus the input projection and proj_out.
    assert len(int8_matmuls) == 6 * TINY_DIT.dit_depth + 2
    # What stays fp32: the attention (scores and weighted values, two activations each) and the time-embedding
    # and adaLN layers, which see one row per batch item.
    attention = [n for n in fp32_matmuls if not any(name in weights for name in n.input)]
    assert len(attention) == 2 * TINY_DIT.dit_depth
    per_row = [n.name for n in fp32_matmuls if n not in attention]
    assert len(per_row) == TINY_DIT.dit_depth + 3
    assert all(name.startswith(("/time_embed/", "/norm_out/")) or "/attn_norm/" in name for name in per_row)



@dit_only
def test_int8_estimator_stays_close_to_fp32(cfg, onnx_flow, int8_dir):
    int8 = OnnxFlow(int8_dir, cfg, "int8", threads=1)
    for streaming in (False, True):
        inputs = estimator_inputs(120, seed=3)
        expected = onnx_flow.estimate(**inputs, streaming=streaming)
        got = int8.estimate(**inputs, streaming=streaming)
        error = np.sqrt(np.mean((got - expected) ** 2) / np.mean(expected ** 2))
        # Quantized for real (not the fp32 graph under another name), yet within a few percent RMS.
        assert 1e-5 < error < 0.05



@dit_only
def test_int8_reuses_fp32_graphs_it_is_given(cfg, flow, int8_dir):
    fp32 = [int8_dir / "flow_encoder.onnx", int8_dir / "flow_estimator.onnx"]
    before = [p.stat().st_mtime_ns for p in fp32]
    written = export_flow(flow, cfg, int8_dir, precision="int8", fp32_paths=fp32)
    assert written[:2] == fp32 and [p.stat().st_mtime_ns for p in fp32] == before
    assert written[2].name == "flow_estimator.int8.onnx"



@dit_only
def test_unknown_precisions_fail(cfg, flow, export_dir, tmp_path):
    with pytest.raises(ValueError):
        OnnxFlow(export_dir, cfg, "bf16")
    with pytest.raises(ValueError):
        export_flow(flow, cfg, tmp_path, "bf16")
    with pytest.raises(ExportError, match="flow_estimator.int8.onnx"):
        OnnxFlow(export_dir, cfg, "int8")



@dit_only
def test_missing_or_mismatched_export_is_reported(cfg, export_dir, tmp_path):
    with pytest.raises(ExportError, match="flow_encoder.onnx"):
        OnnxFlow(tmp_path, cfg)
    other = ModelConfig(version=3, yaml_name="cosyvoice3.yaml", speech_tokenizer_file="x",
                        flow=FlowConfig(mel_dim=100))
    with pytest.raises(ExportError, match="mel bins"):
        OnnxFlow(export_dir, other)



@dit_only
def test_runtime_never_imports_torch(export_dir):
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import numpy as np
        from cosyvoice_onnx.config import FlowConfig, ModelConfig
        from cosyvoice_onnx.onnx_backend.flow import OnnxFlow
        cfg = ModelConfig(version=3, yaml_name="y", speech_tokenizer_file="s", flow=FlowConfig())
        stage = OnnxFlow({str(export_dir)!r}, cfg, threads=1)
        mu = stage.encode_tokens(np.arange(10).reshape(1, 10), finalize=False)
        spks = stage.embed_speaker(np.ones((1, 192), dtype=np.float32))
        v = stage.estimate(np.zeros((2, 80, 14), np.float32), np.ones((2, 1, 14), np.float32),
                           np.concatenate([mu, mu]), np.zeros(2, np.float32), np.concatenate([spks, spks]),
                           np.zeros((2, 80, 14), np.float32), True)
        print(mu.shape, v.shape)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 80, 14) (2, 80, 14)"

