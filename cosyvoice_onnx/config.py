"""The model configuration as typed objects: the LM, flow, vocoder, feature and streaming dimensions of a folder.

`releases.py` holds what tells CV3 and CV2 apart, `config_readers.py` fills these from a folder's yaml and Qwen
config, `hyperparams.py` reads the yaml safely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

QWEN_DIR = "CosyVoice-BlankEN"


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



def flow_summary(f: FlowConfig) -> str:
    """The flow's architecture and size in a few words (for `info` and the studio)."""
    summaries = {
        "dit": f"DiT {f.dit_depth} × {f.dit_dim} ({f.dit_heads} heads)",
        "conformer_unet": f"conformer {f.encoder_num_blocks}+{f.encoder_num_up_blocks} × {f.encoder_dim}, "
                          f"UNet {f.unet_channels} ch with {f.unet_num_mid_blocks} mid blocks",
    }
    return summaries[f.kind]
