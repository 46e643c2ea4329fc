"""HiFT NSF noise in numpy: the CosyVoice3 fixed uniform buffer replayed exactly, CosyVoice2 per-call draws."""

from __future__ import annotations

import threading

import numpy as np

from .config import HiFTConfig, ModelConfig
from .errors import InputError

F0_LOOK_RIGHT = 3  # mel frames the causal f0 predictor reads ahead when not finalizing


def vocoder_source_samples(cfg: HiFTConfig, frames: int, finalize: bool, noise_samples: int) -> int:
    """NSF source (and noise) samples `frames` mel frames use; refuses a mel or noise too short for the vocoder."""
    min_frames = 1 if finalize else F0_LOOK_RIGHT + cfg.conv_pre_look_right + 1
    if frames < min_frames:
        raise ValueError(f"the vocoder needs at least {min_frames} mel frames here, got {frames}")
    needed = cfg.hop_samples * (frames if finalize else frames - F0_LOOK_RIGHT)
    if noise_samples < needed:
        raise ValueError(f"sine_noise has {noise_samples} samples; {needed} are needed for {frames} frames")
    return needed

_MT_STATE_WORDS = 624
_UNIFORM_BITS = 24
# The official CausalConvRNNF0Predictor hard-codes these kernel sizes.
_F0_PREDICTOR_KERNELS = (4, 3, 3, 3, 3)
# torch fills a float normal tensor of at least this many elements with one uniform draw per element
# (Box-Muller in blocks of 16, the last block redrawn when the size is not a multiple of 16).
_VECTOR_NORMAL_MIN = 16
_SKIP_CHUNK = 1 << 22


def init_genrand_key(seed: int) -> np.ndarray:
    """The MT19937 state `init_genrand(seed)` builds; torch's CPU generator seeds itself this way."""
    key = np.empty(_MT_STATE_WORDS, dtype=np.uint32)
    value = seed & 0xFFFFFFFF
    key[0] = value
    for index in range(1, _MT_STATE_WORDS):
        value = (1812433253 * (value ^ (value >> 30)) + index) & 0xFFFFFFFF
        key[index] = value
    return key


def torch_seeded_mt19937(seed: int = 0) -> np.random.MT19937:
    """A numpy MT19937 in the state of torch's CPU generator right after `torch.manual_seed(seed)`."""
    bit_generator = np.random.MT19937()
    bit_generator.state = {"bit_generator": "MT19937", "state": {"key": init_genrand_key(seed), "pos": _MT_STATE_WORDS}}
    return bit_generator


def skip_draws(bit_generator: np.random.MT19937, count: int) -> None:
    """Advances the generator by `count` 32-bit outputs without keeping them."""
    while count > 0:
        step = min(count, _SKIP_CHUNK)
        bit_generator.random_raw(step, output=False)
        count -= step


def uniform_float32(bit_generator: np.random.MT19937, count: int) -> np.ndarray:
    """`count` values of torch.rand (float32): the low 24 bits of one 32-bit draw each, scaled by 2^-24."""
    raw = bit_generator.random_raw(count) & ((1 << _UNIFORM_BITS) - 1)
    return raw.astype(np.float32) * np.float32(2.0 ** -_UNIFORM_BITS)


def normal_draw_count(numel: int) -> int:
    """32-bit draws torch.randn / normal_ takes for a contiguous float32 tensor of `numel` elements."""
    if numel < _VECTOR_NORMAL_MIN:
        # Smaller tensors take a scalar path with a cached second Box-Muller sample; no real config needs it.
        raise ValueError(f"cannot replay a normal draw of {numel} < {_VECTOR_NORMAL_MIN} elements")
    return numel + (_VECTOR_NORMAL_MIN if numel % _VECTOR_NORMAL_MIN else 0)


def _default_init_draws(weight_numel: int, bias_numel: int) -> int:
    # kaiming_uniform_ on the weight, then uniform_ on the bias: one draw per element each.
    return weight_numel + bias_numel


def construction_draws(cfg: ModelConfig) -> list[tuple[str, int]]:
    """The official construction-time RNG consumers after `set_all_random_seed(0)`, in order, with their draw counts.

    The CFM seeds the generator right before its noise, then the flow's own layers, the f0 predictor
    (built before the HiFT as a yaml argument) and the NSF source take their draws.
    """
    flow, hift = cfg.flow, cfg.hift
    mel, cond, width = flow.mel_dim, hift.f0_cond_channels, hift.nb_harmonics + 1
    draws = [
        ("flow.decoder.rand_noise", normal_draw_count(mel * flow.noise_frames)),
        # The shipped yaml sets the flow's input_size to the mel dimension.
        ("flow.input_embedding", normal_draw_count(flow.vocab_size * mel)),
        ("flow.spk_embed_affine_layer", _default_init_draws(flow.spk_embed_dim * mel, mel)),
    ]
    in_channels = hift.in_channels
    for index, kernel in enumerate(_F0_PREDICTOR_KERNELS):
        draws.append((f"hift.f0_predictor.condnet.{2 * index}", _default_init_draws(in_channels * cond * kernel, cond)))
        in_channels = cond
    draws += [
        ("hift.f0_predictor.classifier", _default_init_draws(cond, 1)),
        ("hift.m_source.l_sin_gen.rand_ini", width),
        ("hift.m_source.l_sin_gen.sine_waves", hift.noise_seconds * hift.sampling_rate * width),
    ]
    return draws


class HiftNoise:
    """The CosyVoice3 HiFT's fixed `sine_waves` buffer, produced lazily and bit-identical to the official one.

    One object serves every request of an engine: the rows handed out are read-only, and growing the buffer
    (under a lock) appends rows without changing the ones already drawn.
    """

    def __init__(self, cfg: ModelConfig):
        draws = construction_draws(cfg)
        names = [name for name, _ in draws]
        buffer_index = names.index("hift.m_source.l_sin_gen.sine_waves")
        self.width = cfg.hift.nb_harmonics + 1
        self.max_samples = draws[buffer_index][1] // self.width
        self.sampling_rate = cfg.hift.sampling_rate
        self._generator = torch_seeded_mt19937(0)
        skip_draws(self._generator, sum(count for _, count in draws[:buffer_index]))
        self._rows = np.empty((0, self.width), dtype=np.float32)
        self._grow_lock = threading.Lock()

    def sine_noise(self, num_samples: int) -> np.ndarray:
        """The buffer's first `num_samples` rows as a read-only [1, num_samples, harmonics+1] float32 array."""
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if num_samples > self.max_samples:
            raise InputError(
                f"the CosyVoice3 vocoder's fixed noise covers at most {self.max_samples} samples "
                f"({self.max_samples / self.sampling_rate:g} s); {num_samples} were requested. "
                "Synthesize shorter pieces of text."
            )
        if num_samples > len(self._rows):
            with self._grow_lock:
                missing = num_samples - len(self._rows)
                if missing > 0:
                    # Grow geometrically so that streaming, which asks for a little more each call, stays linear.
                    grow = min(max(missing, len(self._rows)), self.max_samples - len(self._rows))
                    fresh = uniform_float32(self._generator, grow * self.width).reshape(grow, self.width)
                    rows = np.concatenate([self._rows, fresh])
                    rows.flags.writeable = False
                    self._rows = rows
        return self._rows[None, :num_samples]

    def for_request(self, seed: int) -> HiftNoise:
        """The buffer was fixed when the official model was built: every request shares it, whatever its seed."""
        return self


# Mixed into the request seed so the vocoder's stream is independent of the numpy sampler's.
_NORMAL_NOISE_STREAM = 0x4E5346


class NormalHiftNoise:
    """CosyVoice2's NSF noise: a fresh standard-normal [1, L, harmonics+1] draw on every vocoder call.

    The official takes it from the global torch generator (`torch.randn_like`), which the LM's sampling shares
    from another thread; that interleaving cannot be replayed, so this is the one place where our random stream
    is not the official one. The draws come from numpy, seeded from the request seed, so a seed still
    reproduces our own output on every backend. The official also draws `rand_ini`, an initial phase, per call;
    it lands on a sample the phase downsampling never reads (checked against the official code), so it is not drawn here.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0):
        self.cfg = cfg
        self.width = cfg.hift.nb_harmonics + 1
        self.reseed(seed)

    def for_request(self, seed: int) -> NormalHiftNoise:
        """A fresh stream for one request: requests running at the same time never share draws."""
        return NormalHiftNoise(self.cfg, seed)

    def reseed(self, seed: int) -> None:
        self._generator = np.random.default_rng([_NORMAL_NOISE_STREAM, int(seed) % (1 << 64)])

    def sine_noise(self, num_samples: int) -> np.ndarray:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        return self._generator.standard_normal((1, num_samples, self.width), dtype=np.float32)


NOISE_SOURCES = {"fixed_uniform": HiftNoise, "random_normal": NormalHiftNoise}
# The vocoder noise of one request (`for_request(seed)` of the engine's source).
VocoderNoise = HiftNoise | NormalHiftNoise


def hift_noise_source(cfg: ModelConfig) -> VocoderNoise:
    """The noise source `cfg.hift.noise` names."""
    return NOISE_SOURCES[cfg.hift.noise](cfg)
