"""Reads a model folder's yaml and Qwen config into a `ModelConfig` (dimensions, sampling, special ids)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import QWEN_DIR, FeatureConfig, FlowConfig, HiFTConfig, ModelConfig
from .errors import ModelFolderError
from .hyperparams import read_hyperparams
from .releases import RELEASES, Release, apply_speech_ids, detect_version, release_config


def _get(section: dict, key: str, default):
    value = section.get(key, default) if isinstance(section, dict) else default
    return default if value is None and default is not None else value


def _qwen_config(model_dir: Path) -> dict:
    path = model_dir / QWEN_DIR / "config.json"
    if not path.exists():
        raise ModelFolderError(f"{path}: missing (the Qwen config in {QWEN_DIR}/ gives the LM dimensions)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc})") from exc


def _check_classes(hp: dict, release: Release, path: Path) -> None:
    """The official type check: a yaml whose llm/flow/hift classes belong to another release is refused."""
    for section, expected in zip(("llm", "flow", "hift"), release.classes):
        node = hp.get(section)
        found = getattr(node, "target", "").rpartition(".")[2]
        if found and found != expected:
            raise ModelFolderError(f"{path}: {section} is {found}, but {release.yaml_name} models use {expected}")


def _read_qwen(cfg: ModelConfig, model_dir: Path) -> None:
    q = _qwen_config(model_dir)
    try:
        hidden = int(q["hidden_size"])
        heads = int(q["num_attention_heads"])
        cfg.llm.hidden_size = hidden
        cfg.llm.num_layers = int(q["num_hidden_layers"])
        cfg.llm.num_heads = heads
        cfg.llm.num_kv_heads = int(q.get("num_key_value_heads", heads))
        cfg.llm.head_dim = int(q.get("head_dim") or hidden // heads)
        cfg.llm.intermediate_size = int(q["intermediate_size"])
        cfg.llm.rms_norm_eps = float(q.get("rms_norm_eps", 1e-6))
        cfg.llm.rope_theta = float(q.get("rope_theta", 1_000_000.0))
        cfg.llm.text_vocab_size = int(q["vocab_size"])
        cfg.llm.tie_word_embeddings = bool(q.get("tie_word_embeddings", True))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(f"{model_dir / QWEN_DIR / 'config.json'}: missing or bad field {exc}") from exc


def _read_llm(cfg: ModelConfig, llm: dict, release: Release) -> None:
    apply_speech_ids(cfg.llm, int(_get(llm, "speech_token_size", cfg.llm.speech_token_size)), release.speech_ids)
    sampling = llm.get("sampling", {}) if isinstance(llm, dict) else {}
    cfg.llm.top_p = float(_get(sampling, "top_p", cfg.llm.top_p))
    cfg.llm.top_k = int(_get(sampling, "top_k", cfg.llm.top_k))
    cfg.llm.win_size = int(_get(sampling, "win_size", cfg.llm.win_size))
    cfg.llm.tau_r = float(_get(sampling, "tau_r", cfg.llm.tau_r))


def _read_flow_common(f: FlowConfig, flow: dict) -> None:
    """The flow fields both releases' yaml files spell the same way."""
    f.mel_dim = int(_get(flow, "output_size", f.mel_dim))
    f.vocab_size = int(_get(flow, "vocab_size", f.vocab_size))
    f.spk_embed_dim = int(_get(flow, "spk_embed_dim", f.spk_embed_dim))
    f.token_mel_ratio = int(_get(flow, "token_mel_ratio", f.token_mel_ratio))
    f.pre_lookahead_len = int(_get(flow, "pre_lookahead_len", f.pre_lookahead_len))


def _read_dit_flow(f: FlowConfig, flow: dict) -> None:
    """cosyvoice3.yaml's `flow:` section (CausalMaskedDiffWithDiT) into `f`."""
    f.kind = "dit"
    _read_flow_common(f, flow)
    pll = _get(flow, "pre_lookahead_layer", {})
    f.pre_lookahead_channels = int(_get(pll, "channels", f.pre_lookahead_channels))
    decoder = _get(flow, "decoder", {})
    cfm = _get(decoder, "cfm_params", {})
    cfm = _get(cfm, "content", cfm) if isinstance(cfm, dict) else {}
    f.inference_cfg_rate = float(_get(cfm, "inference_cfg_rate", f.inference_cfg_rate))
    f.t_scheduler = str(_get(cfm, "t_scheduler", f.t_scheduler))
    if f.t_scheduler != "cosine":
        raise ModelFolderError(f"cosyvoice3.yaml flow: unsupported t_scheduler {f.t_scheduler!r}")
    est = _get(decoder, "estimator", {})
    f.dit_dim = int(_get(est, "dim", f.dit_dim))
    f.dit_depth = int(_get(est, "depth", f.dit_depth))
    f.dit_heads = int(_get(est, "heads", f.dit_heads))
    f.dit_dim_head = int(_get(est, "dim_head", f.dit_dim_head))
    f.dit_ff_mult = int(_get(est, "ff_mult", f.dit_ff_mult))
    f.static_chunk_size = int(_get(est, "static_chunk_size", f.static_chunk_size))


def _read_hift(h: HiFTConfig, hift: dict) -> None:
    h.in_channels = int(_get(hift, "in_channels", h.in_channels))
    h.base_channels = int(_get(hift, "base_channels", h.base_channels))
    h.nb_harmonics = int(_get(hift, "nb_harmonics", h.nb_harmonics))
    h.sampling_rate = int(_get(hift, "sampling_rate", h.sampling_rate))
    h.nsf_alpha = float(_get(hift, "nsf_alpha", h.nsf_alpha))
    h.nsf_sigma = float(_get(hift, "nsf_sigma", h.nsf_sigma))
    h.nsf_voiced_threshold = float(_get(hift, "nsf_voiced_threshold", h.nsf_voiced_threshold))
    h.upsample_rates = tuple(_get(hift, "upsample_rates", h.upsample_rates))
    h.upsample_kernel_sizes = tuple(_get(hift, "upsample_kernel_sizes", h.upsample_kernel_sizes))
    istft = _get(hift, "istft_params", {})
    h.istft_n_fft = int(_get(istft, "n_fft", h.istft_n_fft))
    h.istft_hop = int(_get(istft, "hop_len", h.istft_hop))
    h.resblock_kernel_sizes = tuple(_get(hift, "resblock_kernel_sizes", h.resblock_kernel_sizes))
    h.resblock_dilation_sizes = tuple(
        tuple(d) for d in _get(hift, "resblock_dilation_sizes", h.resblock_dilation_sizes))
    h.source_resblock_kernel_sizes = tuple(_get(hift, "source_resblock_kernel_sizes", h.source_resblock_kernel_sizes))
    h.source_resblock_dilation_sizes = tuple(
        tuple(d) for d in _get(hift, "source_resblock_dilation_sizes", h.source_resblock_dilation_sizes))
    h.lrelu_slope = float(_get(hift, "lrelu_slope", h.lrelu_slope))
    h.audio_limit = float(_get(hift, "audio_limit", h.audio_limit))
    h.conv_pre_look_right = int(_get(hift, "conv_pre_look_right", h.conv_pre_look_right))
    f0p = _get(hift, "f0_predictor", {})
    h.f0_cond_channels = int(_get(f0p, "cond_channels", h.f0_cond_channels))


def _read_features(fe: FeatureConfig, hp: dict) -> None:
    feat = hp.get("feat_extractor", {})
    fe.sample_rate = int(_get(hp, "sample_rate", fe.sample_rate))
    fe.n_fft = int(_get(feat, "n_fft", fe.n_fft))
    fe.hop_size = int(_get(feat, "hop_size", fe.hop_size))
    fe.win_size = int(_get(feat, "win_size", fe.win_size))
    fe.num_mels = int(_get(feat, "num_mels", fe.num_mels))
    fe.fmin = float(_get(feat, "fmin", fe.fmin))
    # An explicit `fmax: null` (CV3) means Nyquist, so the yaml's value wins even when it is None.
    fe.fmax = feat.get("fmax", fe.fmax) if isinstance(feat, dict) else fe.fmax
    fe.token_frame_rate = int(_get(hp, "token_frame_rate", fe.token_frame_rate))


def load_config(model_dir: Path) -> ModelConfig:
    """Reads the version, the yaml hyperparameters and the Qwen geometry of a model folder."""
    model_dir = Path(model_dir)
    version = detect_version(model_dir)
    release = RELEASES[version]
    path = model_dir / release.yaml_name
    hp = read_hyperparams(path)
    _check_classes(hp, release, path)
    cfg = release_config(version)
    _read_qwen(cfg, model_dir)
    try:
        _read_llm(cfg, hp.get("llm", {}), release)
        _FLOW_READERS[release.flow_kind](cfg.flow, hp.get("flow", {}))
        _read_hift(cfg.hift, hp.get("hift", {}))
        _read_features(cfg.features, hp)
        cfg.streaming.token_hop_len = int(_get(hp, "chunk_size", cfg.streaming.token_hop_len))
    except (ValueError, TypeError) as exc:  # e.g. `sample_rate: fast`, or a list where a number belongs
        raise ModelFolderError(f"{path}: a value has the wrong type ({exc}); compare it with the official yaml") \
            from exc
    cfg.streaming.pre_lookahead_len = cfg.flow.pre_lookahead_len
    return cfg


# Structural switches of the CV2 flow that this package implements, with the official class default that applies
# when the yaml leaves a key out.
_CV2_ENCODER_SWITCHES = {
    "input_layer": ("conv2d", "linear"), "pos_enc_layer_type": ("rel_pos", "rel_pos_espnet"),
    "selfattention_layer_type": ("rel_selfattn", "rel_selfattn"), "activation_type": ("swish", "swish"),
    "normalize_before": (True, True), "use_cnn_module": (True, False), "macaron_style": (True, False),
}


def apply_flow_v2_hyperparams(flow_cfg: FlowConfig, flow_section: dict) -> None:
    """Reads cosyvoice2.yaml's `flow:` section (CausalMaskedDiffWithXvec) into `flow_cfg` as kind "conformer_unet".

    Missing sizes keep the config's values (the CosyVoice2-0.5B ones); a missing architecture switch takes the
    official class default. A switch this package does not implement (e.g. a conv module, two UNet levels,
    another activation) raises ModelFolderError.
    """
    f = flow_cfg

    def refuse(what: str, value, wanted) -> None:
        raise ModelFolderError(f"cosyvoice2.yaml flow: {what} = {value!r} is not supported (expected {wanted!r})")

    f.kind = "conformer_unet"
    _read_flow_common(f, flow_section)
    if f.token_mel_ratio != 2:
        refuse("token_mel_ratio", f.token_mel_ratio, 2)  # the official encoder always upsamples by 2

    enc = _get(flow_section, "encoder", {})
    f.encoder_dim = int(_get(enc, "output_size", f.encoder_dim))
    # The official encoder feeds the token embedding straight into layers of its output width.
    for section, where in ((flow_section, "input_size"), (enc, "encoder.input_size")):
        size = int(_get(section, "input_size", f.encoder_dim))
        if size != f.encoder_dim:
            refuse(where, size, f.encoder_dim)
    f.encoder_heads = int(_get(enc, "attention_heads", f.encoder_heads))
    f.encoder_linear_units = int(_get(enc, "linear_units", f.encoder_linear_units))
    f.encoder_num_blocks = int(_get(enc, "num_blocks", f.encoder_num_blocks))
    f.encoder_chunk_size = int(_get(enc, "static_chunk_size", f.encoder_chunk_size))
    for key, (official_default, wanted) in _CV2_ENCODER_SWITCHES.items():
        value = enc.get(key, official_default) if isinstance(enc, dict) else official_default
        if value != wanted:
            refuse(f"encoder.{key}", value, wanted)

    decoder = _get(flow_section, "decoder", {})
    cfm = _get(decoder, "cfm_params", {})
    cfm = _get(cfm, "content", cfm) if isinstance(cfm, dict) else {}
    f.inference_cfg_rate = float(_get(cfm, "inference_cfg_rate", f.inference_cfg_rate))
    f.t_scheduler = str(_get(cfm, "t_scheduler", f.t_scheduler))
    if f.t_scheduler != "cosine":
        refuse("decoder.cfm_params.t_scheduler", f.t_scheduler, "cosine")
    est = _get(decoder, "estimator", {})
    channels = list(_get(est, "channels", [256, 256]))       # official default: two levels
    if len(channels) != 1:
        refuse("decoder.estimator.channels", channels, [f.unet_channels])
    f.unet_channels = int(channels[0])
    f.unet_n_blocks = int(_get(est, "n_blocks", f.unet_n_blocks))
    f.unet_num_mid_blocks = int(_get(est, "num_mid_blocks", f.unet_num_mid_blocks))
    f.unet_heads = int(_get(est, "num_heads", f.unet_heads))
    f.unet_head_dim = int(_get(est, "attention_head_dim", f.unet_head_dim))
    f.static_chunk_size = int(_get(est, "static_chunk_size", f.static_chunk_size))
    act_fn = _get(est, "act_fn", "snake")
    if act_fn != "gelu":
        refuse("decoder.estimator.act_fn", act_fn, "gelu")
    # The estimator's input is [x, mu, spks, cond], each mel_dim wide (spks after the speaker projection).
    for key, wanted in (("in_channels", 4 * f.mel_dim), ("out_channels", f.mel_dim)):
        size = int(_get(est, key, wanted))
        if size != wanted:
            refuse(f"decoder.estimator.{key}", size, wanted)


# FlowConfig.kind -> the reader of that flow's yaml section (defined last: the CV2 reader sits above).
_FLOW_READERS = {"dit": _read_dit_flow, "conformer_unet": apply_flow_v2_hyperparams}
