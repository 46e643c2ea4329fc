"""Synthetic model folders in the exact official layout, with tiny dimensions and seeded random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import QWEN_DIR
from ..config_readers import load_config
from ..releases import RELEASES

# Tiny dimensions: small enough for CI, shaped like the real model (GQA, several heads, all HiFT stages).
TINY = {
    "llm": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128),
    "flow": dict(pre_lookahead_channels=64, dim=64, depth=2, heads=4, dim_head=16, ff_mult=2),
    "hift": dict(base_channels=32, cond_channels=32),
}
# The released Fun-CosyVoice3-0.5B dimensions, for benchmarks on random weights of the real size.
REAL = {
    "llm": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                intermediate_size=4864),
    "flow": dict(pre_lookahead_channels=1024, dim=1024, depth=22, heads=16, dim_head=64, ff_mult=2),
    "hift": dict(base_channels=512, cond_channels=512),
}
# CosyVoice2: the same LM and vocoder sizes; the flow is a conformer encoder + UNet estimator.
TINY_V2 = {
    "llm": TINY["llm"],
    "flow": dict(encoder_dim=32, attention_heads=4, linear_units=64, num_blocks=2, channels=32,
                 attention_head_dim=8, n_blocks=1, num_mid_blocks=2, num_heads=2),
    "hift": TINY["hift"],
}
# The released CosyVoice2-0.5B dimensions.
REAL_V2 = {
    "llm": REAL["llm"],
    "flow": dict(encoder_dim=512, attention_heads=8, linear_units=2048, num_blocks=6, channels=256,
                 attention_head_dim=64, n_blocks=4, num_mid_blocks=12, num_heads=8),
    "hift": REAL["hift"],
}
SIZES = {"tiny": {3: TINY, 2: TINY_V2}, "real": {3: REAL, 2: REAL_V2}}


def _qwen_config(dims: dict, vocab_size: int = 151936) -> dict:
    c = dims["llm"]
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"],
        "num_hidden_layers": c["num_hidden_layers"], "num_attention_heads": c["num_attention_heads"],
        "num_key_value_heads": c["num_key_value_heads"], "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "vocab_size": vocab_size, "bos_token_id": 151643, "eos_token_id": 151643,
        "use_sliding_window": False, "attention_dropout": 0.0, "initializer_range": 0.02,
    }




def yaml_header(dims: dict) -> str:
    """The seeds and fixed parameters both releases' yaml files open with."""
    hidden = dims["llm"]["hidden_size"]
    return f"""__set_seed1: !apply:random.seed [1986]
__set_seed2: !apply:numpy.random.seed [1986]
__set_seed3: !apply:torch.manual_seed [1986]
__set_seed4: !apply:torch.cuda.manual_seed_all [1986]

sample_rate: 24000
llm_input_size: {hidden}
llm_output_size: {hidden}
spk_embed_dim: 192
qwen_pretrain_path: ''
token_frame_rate: 25
token_mel_ratio: 2

chunk_size: 25
num_decoding_left_chunks: -1"""

def hift_yaml(h: dict, causal: bool) -> str:
    """The `hift:` section both releases share; CV3 names the causal classes and adds conv_pre_look_right."""
    generator, f0 = (("CausalHiFTGenerator", "CausalConvRNNF0Predictor") if causal
                     else ("HiFTGenerator", "ConvRNNF0Predictor"))
    look_right = "\n    conv_pre_look_right: 4" if causal else ""
    return f"""hift: !new:cosyvoice.hifigan.generator.{generator}
    in_channels: 80
    base_channels: {h['base_channels']}
    nb_harmonics: 8
    sampling_rate: !ref <sample_rate>
    nsf_alpha: 0.1
    nsf_sigma: 0.003
    nsf_voiced_threshold: 10
    upsample_rates: [8, 5, 3]
    upsample_kernel_sizes: [16, 11, 7]
    istft_params:
        n_fft: 16
        hop_len: 4
    resblock_kernel_sizes: [3, 7, 11]
    resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    source_resblock_kernel_sizes: [7, 7, 11]
    source_resblock_dilation_sizes: [[1, 3, 5], [1, 3, 5], [1, 3, 5]]
    lrelu_slope: 0.1
    audio_limit: 0.99{look_right}
    f0_predictor: !new:cosyvoice.hifigan.f0_predictor.{f0}
        num_class: 1
        in_channels: 80
        cond_channels: {h['cond_channels']}"""

def cv3_yaml(dims: dict = TINY) -> str:
    """The official cosyvoice3.yaml model sections, tiny dimensions, HyperPyYAML tags as in the release."""
    f, h = dims["flow"], dims["hift"]
    return f"""# Synthetic tiny Fun-CosyVoice3 model written by `cosyvoice-onnx make-tiny-model` (random weights).
{yaml_header(dims)}

llm: !new:cosyvoice.llm.llm.CosyVoice3LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithDiT
    input_size: 80
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    pre_lookahead_layer: !new:cosyvoice.transformer.upsample_encoder.PreLookaheadLayer
        in_channels: 80
        channels: {f['pre_lookahead_channels']}
        pre_lookahead_len: 3
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.DiT.dit.DiT
            dim: {f['dim']}
            depth: {f['depth']}
            heads: {f['heads']}
            dim_head: {f['dim_head']}
            ff_mult: {f['ff_mult']}
            mel_dim: 80
            mu_dim: 80
            spk_dim: 80
            out_channels: 80
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

{hift_yaml(h, causal=True)}

feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: null
    center: False
get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
    version: cosyvoice3
"""


def cv2_yaml(dims: dict = TINY_V2) -> str:
    """The official CosyVoice2 yaml (examples/libritts/cosyvoice2/conf/cosyvoice2.yaml): model sections with the
    given dimensions, plus some of its GAN and data sections, which a reader must pass over."""
    f, h = dims["flow"], dims["hift"]
    return f"""# Synthetic tiny CosyVoice2 model written by `cosyvoice-onnx make-tiny-model --version 2` (random weights).
{yaml_header(dims)}

llm: !new:cosyvoice.llm.llm.Qwen2LM
    llm_input_size: !ref <llm_input_size>
    llm_output_size: !ref <llm_output_size>
    speech_token_size: 6561
    length_normalized_loss: True
    lsm_weight: 0
    mix_ratio: [5, 15]
    llm: !new:cosyvoice.llm.llm.Qwen2Encoder
        pretrain_path: !ref <qwen_pretrain_path>
    sampling: !name:cosyvoice.utils.common.ras_sampling
        top_p: 0.8
        top_k: 25
        win_size: 10
        tau_r: 0.1

flow: !new:cosyvoice.flow.flow.CausalMaskedDiffWithXvec
    input_size: {f['encoder_dim']}
    output_size: 80
    spk_embed_dim: !ref <spk_embed_dim>
    output_type: 'mel'
    vocab_size: 6561
    input_frame_rate: !ref <token_frame_rate>
    only_mask_loss: True
    token_mel_ratio: !ref <token_mel_ratio>
    pre_lookahead_len: 3
    encoder: !new:cosyvoice.transformer.upsample_encoder.UpsampleConformerEncoder
        output_size: {f['encoder_dim']}
        attention_heads: {f['attention_heads']}
        linear_units: {f['linear_units']}
        num_blocks: {f['num_blocks']}
        dropout_rate: 0.1
        positional_dropout_rate: 0.1
        attention_dropout_rate: 0.1
        normalize_before: True
        input_layer: 'linear'
        pos_enc_layer_type: 'rel_pos_espnet'
        selfattention_layer_type: 'rel_selfattn'
        input_size: {f['encoder_dim']}
        use_cnn_module: False
        macaron_style: False
        static_chunk_size: !ref <chunk_size>
    decoder: !new:cosyvoice.flow.flow_matching.CausalConditionalCFM
        in_channels: 240
        n_spks: 1
        spk_emb_dim: 80
        cfm_params: !new:omegaconf.DictConfig
            content:
                sigma_min: 1e-06
                solver: 'euler'
                t_scheduler: 'cosine'
                training_cfg_rate: 0.2
                inference_cfg_rate: 0.7
                reg_loss_type: 'l1'
        estimator: !new:cosyvoice.flow.decoder.CausalConditionalDecoder
            in_channels: 320
            out_channels: 80
            channels: [{f['channels']}]
            dropout: 0.0
            attention_head_dim: {f['attention_head_dim']}
            n_blocks: {f['n_blocks']}
            num_mid_blocks: {f['num_mid_blocks']}
            num_heads: {f['num_heads']}
            act_fn: 'gelu'
            static_chunk_size: !ref <chunk_size> * <token_mel_ratio>
            num_decoding_left_chunks: !ref <num_decoding_left_chunks>

{hift_yaml(h, causal=False)}

# gan related module
mel_spec_transform1: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: null
    center: False
hifigan: !new:cosyvoice.hifigan.hifigan.HiFiGan
    generator: !ref <hift>
    discriminator: !new:cosyvoice.hifigan.discriminator.MultipleDiscriminator
        mpd: !new:matcha.hifigan.models.MultiPeriodDiscriminator
        mrd: !new:cosyvoice.hifigan.discriminator.MultiResSpecDiscriminator
    mel_spec_transform: [
        !ref <mel_spec_transform1>
    ]

# processor functions
parquet_opener: !name:cosyvoice.dataset.processor.parquet_opener
get_tokenizer: !name:cosyvoice.tokenizer.tokenizer.get_qwen_tokenizer
    token_path: !ref <qwen_pretrain_path>
    skip_special_tokens: True
allowed_special: 'all'
tokenize: !name:cosyvoice.dataset.processor.tokenize
    get_tokenizer: !ref <get_tokenizer>
    allowed_special: !ref <allowed_special>
feat_extractor: !name:matcha.utils.audio.mel_spectrogram
    n_fft: 1920
    num_mels: 80
    sampling_rate: !ref <sample_rate>
    hop_size: 480
    win_size: 1920
    fmin: 0
    fmax: 8000
    center: False
compute_fbank: !name:cosyvoice.dataset.processor.compute_fbank
    feat_extractor: !ref <feat_extractor>
    num_frames: 960
"""


YAML_WRITERS = {3: cv3_yaml, 2: cv2_yaml}


# ---------------------------------------------------------------- stand-in ONNX frontend models


def speech_tokenizer_onnx(path: Path, seed: int) -> None:
    """Stand-in for speech_tokenizer_v2/v3.onnx: [1,128,T] log-mel + [1] int32 length -> [1, ceil(ceil(T/2)/2)] codes.

    Two stride-2 convs and an 8-digit base-3 FSQ code, like the real tokenizer's 25 Hz, 6561-code output.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.1, (32, 128, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 32, 3)).astype(np.float32)
    powers = (3 ** np.arange(8, dtype=np.int64)).reshape(1, 8, 1)
    nodes = [
        helper.make_node("Conv", ["feats", "w1"], ["c1"], strides=[2], pads=[1, 1]),
        helper.make_node("Tanh", ["c1"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2"], ["c2"], strides=[2], pads=[1, 1]),
        helper.make_node("Tanh", ["c2"], ["a2"]),
        helper.make_node("Round", ["a2"], ["r"]),
        helper.make_node("Add", ["r", "one"], ["digits_f"]),
        helper.make_node("Cast", ["digits_f"], ["digits"], to=TensorProto.INT64),
        helper.make_node("Mul", ["digits", "powers"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["indices"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "speech_tokenizer_stand_in",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, [1, 128, "T"]),
         helper.make_tensor_value_info("feats_length", TensorProto.INT32, [1])],
        [helper.make_tensor_value_info("indices", TensorProto.INT64, [1, "n"])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
         numpy_helper.from_array(np.array(1.0, np.float32), "one"),
         numpy_helper.from_array(powers, "powers"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def campplus_onnx(path: Path, seed: int) -> None:
    """Stand-in for campplus.onnx: `input` [1,T,80] fbank -> [1,192] embedding (mean and spread over time)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed + 1)
    w = rng.normal(0, 0.2, (160, 192)).astype(np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axis1"], ["mean"], keepdims=0),
        helper.make_node("Abs", ["input"], ["absx"]),
        helper.make_node("ReduceMean", ["absx", "axis1"], ["spread"], keepdims=0),
        helper.make_node("Concat", ["mean", "spread"], ["stats"], axis=1),
        helper.make_node("MatMul", ["stats", "w"], ["proj"]),
        helper.make_node("Tanh", ["proj"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "campplus_stand_in",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, "T", 80])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 192])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))


# ---------------------------------------------------------------- weights


def _shape_llm(lm, cfg, generator) -> None:
    """Random LM weights that behave like a trained one in the one way tests need: it stops after a
    plausible number of tokens, instead of at the first step or never."""
    import torch

    with torch.no_grad():
        for name, p in lm.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=generator)
            elif name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=generator)
        text_embed = lm.llm.model.model.embed_tokens.weight
        # A shared component on channel 0 survives the tiny transformer, so the stop rows can key on it.
        text_embed[:, 0] = 1.0
        lm.speech_embedding.weight[:, 0] = 1.0
        if not cfg.llm.sos_task_in_speech_embedding:
            lm.llm_embedding.weight[:, 0] = 1.0  # CV2 keeps sos/task_id here; same role as the rows above
        lm.llm_decoder.weight[:, 0] = 0.0
        lm.llm_decoder.weight[cfg.llm.speech_token_size:, 0] = -0.12
        # EOS sits near the edge of the top-k nucleus, so outputs end after a few to a few hundred tokens.
        lm.llm_decoder.weight[cfg.llm.eos, 0] = 0.015
        if cfg.llm.decoder_bias:
            # CV2's decoder bias: small, so it does not bury EOS among the other rows, nonzero so it is exercised.
            # Its EOS is masked until min_len (CV3's never is), so it gets a lift to end within max_len.
            lm.llm_decoder.bias.normal_(0.0, 0.002, generator=generator)
            lm.llm_decoder.bias[cfg.llm.eos] = 0.04


def make_tiny_model(out: str | Path, version: int = 3, seed: int = 0, size: str = "tiny") -> Path:
    """Writes a complete CosyVoice`version` (3 or 2) model folder with random weights (`size` tiny or real), with
    the files that release ships, and returns its path."""
    import torch
    from safetensors.torch import save_file

    from ..tokenizer import write_tiny_tokenizer
    from ..torch_backend.loader import build_modules

    if version not in YAML_WRITERS:
        raise ValueError(f"no synthetic CosyVoice{version}; choose one of {sorted(YAML_WRITERS)}")
    release = RELEASES[version]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dims = SIZES[size][version]
    (out / release.yaml_name).write_text(YAML_WRITERS[version](dims), encoding="utf-8")
    qwen = out / QWEN_DIR
    qwen.mkdir(exist_ok=True)
    (qwen / "config.json").write_text(json.dumps(_qwen_config(dims), indent=2), encoding="utf-8")
    write_tiny_tokenizer(qwen)
    cfg = load_config(out)

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    modules = build_modules(cfg)
    _shape_llm(modules["lm"], cfg, generator)
    torch.save(modules["lm"].state_dict(), out / "llm.pt")
    if "rl" in release.llm_variants:
        with torch.no_grad():
            for p in modules["lm"].llm_decoder.parameters():
                p[: cfg.llm.speech_token_size].add_(torch.randn_like(p[: cfg.llm.speech_token_size]) * 0.005)
        torch.save(modules["lm"].state_dict(), out / "llm.rl.pt")
    torch.save(modules["flow"].state_dict(), out / "flow.pt")
    torch.save(modules["vocoder"].state_dict(), out / "hift.pt")
    backbone = {k.removeprefix("llm.model."): v.clone().contiguous()
                for k, v in modules["lm"].state_dict().items() if k.startswith("llm.model.model.")}
    save_file(backbone, str(qwen / "model.safetensors"))

    speech_tokenizer_onnx(out / cfg.speech_tokenizer_file, seed)
    campplus_onnx(out / "campplus.onnx", seed)
    torch.save({}, out / "spk2info.pt")
    return out


def synthetic_voice(seconds: float = 4.0, rate: int = 24000, seed: int = 0) -> np.ndarray:
    """A voice-like test clip (gliding pitch, harmonics, syllable envelope, breath noise): no recording needed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 3.1 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    clip = 0.25 * voiced * syllables + 0.01 * rng.standard_normal(t.size)
    return (0.8 * clip / np.max(np.abs(clip))).astype(np.float32)
