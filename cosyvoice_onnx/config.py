"""Model configuration: safe reading of the official yaml and the per-version constants."""

from __future__ import annotations

import ast
import json
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ModelFolderError

QWEN_DIR = "CosyVoice-BlankEN"


# --------------------------------------------------------------------------- yaml


class _Tagged(dict):
    """A `!new:` / `!name:` / `!apply:` node kept as data; the class is never imported."""

    def __init__(self, kind: str, target: str, args: Any):
        super().__init__(args if isinstance(args, dict) else {})
        self.kind = kind
        self.target = target
        self.positional = args if isinstance(args, list) else []


class _Ref(str):
    """A `!ref <a> * <b>` expression, resolved after the whole document is read."""


class _SafeHyperLoader(yaml.SafeLoader):
    pass


def _construct_tagged(loader, tag_suffix, node):
    kind, _, target = tag_suffix.partition(":")
    if isinstance(node, yaml.MappingNode):
        args = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        args = loader.construct_sequence(node, deep=True)
    else:
        args = {}
    return _Tagged(kind, target, args)


def _construct_ref(loader, node):
    return _Ref(loader.construct_scalar(node))


for _kind in ("new", "name", "apply"):
    _SafeHyperLoader.add_multi_constructor(
        f"!{_kind}:", lambda loader, suffix, node, _k=_kind: _construct_tagged(loader, f"{_k}:{suffix}", node)
    )
_SafeHyperLoader.add_constructor("!ref", _construct_ref)
# Tags we do not understand are kept as plain data rather than executed.
_SafeHyperLoader.add_multi_constructor("!", lambda loader, suffix, node: None)

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}


def _eval_arith(expr: str) -> Any:
    """Evaluates `+ - * / // %` over numbers; anything else is rejected, never executed."""

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float, str)):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in _BINOPS:
            return _BINOPS[type(n.op)](ev(n.left), ev(n.right))
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        raise ValueError(f"unsupported expression {expr!r}")

    return ev(ast.parse(expr.strip(), mode="eval"))


def _resolve(node: Any, root: dict, depth: int = 0) -> Any:
    if depth > 20:
        raise ValueError("!ref nesting too deep")
    if isinstance(node, _Ref):
        names = re.findall(r"<([^<>]+)>", node)
        if node.strip() in (f"<{n}>" for n in names[:1]) and len(names) == 1:
            return _resolve(_lookup(root, names[0]), root, depth + 1)
        expr = node
        for name in names:
            value = _resolve(_lookup(root, name), root, depth + 1)
            expr = expr.replace(f"<{name}>", repr(value))
        return _eval_arith(expr)
    if isinstance(node, _Tagged):
        out = _Tagged(node.kind, node.target, {})
        for k, v in node.items():
            out[k] = _resolve(v, root, depth)
        out.positional = [_resolve(v, root, depth) for v in node.positional]
        return out
    if isinstance(node, dict):
        return {k: _resolve(v, root, depth) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, root, depth) for v in node]
    return node


def _lookup(root: dict, dotted: str) -> Any:
    cur: Any = root
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise ValueError(f"!ref <{dotted}> names nothing in the yaml")
        cur = cur[part]
    return cur


def read_hyperparams(path: Path) -> dict:
    """Reads a HyperPyYAML file as plain data: tags are recorded, no code is imported or run."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        raw = yaml.load(text, Loader=_SafeHyperLoader)  # noqa: S506 - our loader derives from SafeLoader
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelFolderError(f"{path}: cannot read the model yaml ({exc})") from exc
    if not isinstance(raw, dict):
        raise ModelFolderError(f"{path}: expected a mapping at the top level of the yaml")
    try:
        return _resolve(raw, raw)
    except ValueError as exc:
        raise ModelFolderError(f"{path}: {exc}") from exc


# --------------------------------------------------------------------------- configs


@dataclass
class LLMConfig:
    hidden_size: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 4864
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    text_vocab_size: int = 151936
    speech_token_size: int = 6561
    speech_vocab_size: int = 6761          # rows of speech_embedding / llm_decoder outputs
    decoder_bias: bool = False
    sos: int = 6561                        # index into speech_embedding (CV3) or llm_embedding (CV2)
    task_id: int = 6563
    eos: int = 6562
    fill: int = 6564
    stop_token_ids: tuple[int, ...] = tuple(range(6561, 6761))
    sos_task_in_speech_embedding: bool = True  # CV3: True; CV2 keeps them in a separate llm_embedding
    # Official quirk: below min_len the sampler masks speech_token_size (6561), not eos.
    min_len_mask_id: int = 6561
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    silent_tokens: tuple[int, ...] = (1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323)
    max_silent_run: int = 5
    tie_word_embeddings: bool = True


@dataclass
class FlowConfig:
    mel_dim: int = 80
    vocab_size: int = 6561
    spk_embed_dim: int = 192
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    pre_lookahead_channels: int = 1024
    dit_dim: int = 1024
    dit_depth: int = 22
    dit_heads: int = 16
    dit_dim_head: int = 64
    dit_ff_mult: int = 2
    conv_pos_kernel: int = 31
    conv_pos_groups: int = 16
    time_embed_dim: int = 256
    static_chunk_size: int = 50           # mel frames per streaming attention chunk
    n_timesteps: int = 10
    inference_cfg_rate: float = 0.7
    t_scheduler: str = "cosine"
    noise_frames: int = 15000              # fixed seed-0 noise buffer length (300 s)
    # "dit": CV3 (pre-lookahead conv + DiT); "conformer_unet": CV2 (conformer encoder + UNet), the fields below.
    kind: str = "dit"
    encoder_dim: int = 512                 # token embedding and conformer width (yaml input_size = output_size)
    encoder_heads: int = 8
    encoder_linear_units: int = 2048
    encoder_num_blocks: int = 6
    encoder_num_up_blocks: int = 4         # fixed in the official encoder, not a yaml key
    encoder_chunk_size: int = 25           # token frames per streaming chunk (x token_mel_ratio after upsampling)
    unet_channels: int = 256
    unet_n_blocks: int = 4                 # transformer blocks after each resnet block
    unet_num_mid_blocks: int = 12
    unet_heads: int = 8
    unet_head_dim: int = 64


@dataclass
class HiFTConfig:
    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    conv_pre_look_right: int = 4
    f0_cond_channels: int = 512
    causal: bool = True
    # NSF noise: "fixed_uniform" (CV3: one uniform buffer drawn at construction, replayed by noise.HiftNoise) or
    # "random_normal" (CV2: fresh standard-normal noise on every call).
    noise: str = "fixed_uniform"
    noise_seconds: int = 300               # fixed uniform noise buffer length (CV3)

    @property
    def hop_samples(self) -> int:
        """Output samples per mel frame (480 for the official model)."""
        n = self.istft_hop
        for r in self.upsample_rates:
            n *= r
        return n


@dataclass
class FeatureConfig:
    sample_rate: int = 24000
    n_fft: int = 1920
    hop_size: int = 480
    win_size: int = 1920
    num_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None              # CV3: None (Nyquist); CV2: 8000
    token_frame_rate: int = 25


@dataclass
class StreamingConfig:
    token_hop_len: int = 25
    token_max_hop_len: int = 100
    stream_scale_factor: int = 2
    pre_lookahead_len: int = 3
    # How the vocoder follows the chunks (token2wav.VOCODER_STREAMS): "accumulate" (CV3: the causal vocoder over
    # all mel so far) or "cache_crossfade" (CV2: mel and source caches plus a Hamming cross-fade).
    vocoder: str = "accumulate"
    vocoder_cache_frames: int = 8          # CV2: mel frames carried into the next call (x hop = cross-fade samples)


@dataclass
class ModelConfig:
    version: int
    yaml_name: str
    speech_tokenizer_file: str
    llm: LLMConfig = field(default_factory=LLMConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    hift: HiFTConfig = field(default_factory=HiFTConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    # Every CV3 LLM input must contain <|endofprompt|>; CV2 does not require it.
    requires_endofprompt: bool = True
    system_prompt: str | None = "You are a helpful assistant."  # CV2: none
    tokenizer_version: str = "cosyvoice3"


@dataclass(frozen=True)
class SpeechIdLayout:
    """Where a release keeps its special speech-LM ids, relative to speech_token_size n (spec §3.2)."""

    extra_rows: int                        # speech_embedding / llm_decoder rows beyond the n codes
    eos_offset: int                        # eos = n + eos_offset
    fill_offset: int                       # fill = n + fill_offset (bistream)
    stop_count: int                        # stop ids are n .. n + stop_count - 1
    sos_task_rows: tuple[int, int]         # rows of sos and task_id in their table
    sos_task_in_speech_embedding: bool     # True: rows n + row of speech_embedding; False: rows of llm_embedding
    decoder_bias: bool
    silent_tokens: tuple[int, ...]         # emitted-token filter (empty: none)


@dataclass(frozen=True)
class Release:
    """Everything that tells the two releases apart beyond the dimensions their yaml gives (spec §9)."""

    yaml_name: str
    speech_tokenizer_file: str
    tokenizer_version: str                 # tokenizer.ADDED_TOKENS_BY_VERSION key
    classes: tuple[str, str, str]          # official (llm, flow, hift) classes, checked like get_model_type
    requires_endofprompt: bool
    system_prompt: str | None
    speech_ids: SpeechIdLayout
    prompt_mel_fmax: float | None          # the released yaml's feat_extractor fmax (a folder's yaml overrides it)
    flow_kind: str                         # FlowConfig.kind, which also picks the yaml reader
    hift_causal: bool
    hift_noise: str                        # HiFTConfig.noise
    vocoder_streaming: str                 # StreamingConfig.vocoder
    llm_variants: tuple[str, ...]          # model_files.LLM_VARIANTS the release ships


RELEASES: dict[int, Release] = {
    3: Release(
        yaml_name="cosyvoice3.yaml", speech_tokenizer_file="speech_tokenizer_v3.onnx", tokenizer_version="cosyvoice3",
        classes=("CosyVoice3LM", "CausalMaskedDiffWithDiT", "CausalHiFTGenerator"),
        requires_endofprompt=True, system_prompt="You are a helpful assistant.",
        speech_ids=SpeechIdLayout(extra_rows=200, eos_offset=1, fill_offset=3, stop_count=200, sos_task_rows=(0, 2),
                                  sos_task_in_speech_embedding=True, decoder_bias=False,
                                  silent_tokens=(1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323)),
        prompt_mel_fmax=None, flow_kind="dit", hift_causal=True, hift_noise="fixed_uniform",
        vocoder_streaming="accumulate", llm_variants=("base", "rl")),
    2: Release(
        yaml_name="cosyvoice2.yaml", speech_tokenizer_file="speech_tokenizer_v2.onnx", tokenizer_version="cosyvoice2",
        classes=("Qwen2LM", "CausalMaskedDiffWithXvec", "HiFTGenerator"),
        requires_endofprompt=False, system_prompt=None,
        speech_ids=SpeechIdLayout(extra_rows=3, eos_offset=0, fill_offset=2, stop_count=3, sos_task_rows=(0, 1),
                                  sos_task_in_speech_embedding=False, decoder_bias=True, silent_tokens=()),
        prompt_mel_fmax=8000.0, flow_kind="conformer_unet", hift_causal=False, hift_noise="random_normal",
        vocoder_streaming="cache_crossfade", llm_variants=("base",)),
}
# The yaml whose presence selects the version, checked in this order.
VERSION_YAML = {version: release.yaml_name for version, release in RELEASES.items()}


def apply_speech_ids(llm: LLMConfig, speech_token_size: int, layout: SpeechIdLayout) -> None:
    """Sets every special speech id of `llm` from the release's layout."""
    n = speech_token_size
    first_row = n if layout.sos_task_in_speech_embedding else 0
    llm.speech_token_size = n
    llm.speech_vocab_size = n + layout.extra_rows
    llm.sos, llm.task_id = (first_row + row for row in layout.sos_task_rows)
    llm.eos, llm.fill = n + layout.eos_offset, n + layout.fill_offset
    llm.stop_token_ids = tuple(range(n, n + layout.stop_count))
    llm.sos_task_in_speech_embedding = layout.sos_task_in_speech_embedding
    llm.decoder_bias = layout.decoder_bias
    llm.silent_tokens = layout.silent_tokens
    # Official quirk in both releases: below min_len the sampler masks id n, which is CV2's eos but CV3's sos.
    llm.min_len_mask_id = n


def release_config(version: int) -> ModelConfig:
    """The released model's configuration for `version` (the real dimensions), without reading a folder."""
    if version not in RELEASES:
        raise ModelFolderError(f"CosyVoice{version} is not supported; supported: "
                               f"{', '.join(f'CosyVoice{v}' for v in sorted(RELEASES))}")
    r = RELEASES[version]
    cfg = ModelConfig(version=version, yaml_name=r.yaml_name, speech_tokenizer_file=r.speech_tokenizer_file,
                      requires_endofprompt=r.requires_endofprompt, system_prompt=r.system_prompt,
                      tokenizer_version=r.tokenizer_version)
    apply_speech_ids(cfg.llm, cfg.llm.speech_token_size, r.speech_ids)
    cfg.flow.kind = r.flow_kind  # FlowConfig's defaults are the released sizes of both flows
    cfg.hift.causal, cfg.hift.noise = r.hift_causal, r.hift_noise
    cfg.streaming.vocoder = r.vocoder_streaming
    cfg.features.fmax = r.prompt_mel_fmax
    return cfg


def detect_version(model_dir: Path) -> int:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFolderError(f"{model_dir}: model folder not found")
    if (model_dir / "cosyvoice.yaml").exists() and not any((model_dir / y).exists() for y in VERSION_YAML.values()):
        raise ModelFolderError(f"{model_dir}: CosyVoice 1 (cosyvoice.yaml) is not supported; use Fun-CosyVoice3 or CosyVoice2")
    for version, name in VERSION_YAML.items():
        if (model_dir / name).exists():
            return version
    raise ModelFolderError(
        f"{model_dir}: not a CosyVoice model folder (no {' or '.join(VERSION_YAML.values())}). "
        "Point --model at the folder downloaded from HuggingFace/ModelScope, e.g. Fun-CosyVoice3-0.5B-2512."
    )


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
    _read_llm(cfg, hp.get("llm", {}), release)
    _FLOW_READERS[release.flow_kind](cfg.flow, hp.get("flow", {}))
    _read_hift(cfg.hift, hp.get("hift", {}))
    _read_features(cfg.features, hp)
    cfg.streaming.token_hop_len = int(_get(hp, "chunk_size", cfg.streaming.token_hop_len))
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


def flow_summary(f: FlowConfig) -> str:
    """The flow's architecture and size in a few words (for `info` and the studio)."""
    summaries = {
        "dit": f"DiT {f.dit_depth} × {f.dit_dim} ({f.dit_heads} heads)",
        "conformer_unet": f"conformer {f.encoder_num_blocks}+{f.encoder_num_up_blocks} × {f.encoder_dim}, "
                          f"UNet {f.unet_channels} ch with {f.unet_num_mid_blocks} mid blocks",
    }
    return summaries[f.kind]


# FlowConfig.kind -> the reader of that flow's yaml section (defined last: the CV2 reader sits above).
_FLOW_READERS = {"dit": _read_dit_flow, "conformer_unet": apply_flow_v2_hyperparams}
