"""Speech-token samplers: the official repetition-aware sampling (RAS) on torch or numpy, and greedy argmax.

torch is imported only by `TorchRasSampler`, so the numpy and greedy samplers work without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from .errors import InputError

if TYPE_CHECKING:
    from .config import LLMConfig

SAMPLER_KINDS = ("auto", "torch", "numpy", "greedy")


class Sampler(Protocol):
    def sample(self, logits: np.ndarray, decoded: list[int], mask_ids: Sequence[int]) -> int:
        """Next id from raw logits [V] float32. `decoded`: every id the LM produced so far (the repetition
        window reads it); `mask_ids`: ids that must not be drawn (set to -inf after log_softmax)."""


def nucleus_size(sorted_probs: np.ndarray, top_p: float, top_k: int) -> int:
    """How many of the descending probabilities RAS keeps.

    A token is taken while the running sum is still below top_p (so the one that crosses it is kept) and
    fewer than top_k are taken. The sum runs in float32 and is compared with float32(top_p), exactly as the
    official loop over float32 torch scalars does; a float64 sum could flip the decision at the boundary.
    """
    threshold = np.float32(top_p)
    total = np.float32(0.0)
    count = 0
    for p in np.asarray(sorted_probs[:top_k], dtype=np.float32):
        if total >= threshold:
            break
        total = np.float32(total + p)
        count += 1
    return count


def repeats_in_window(decoded: Sequence[int], token: int, win_size: int) -> int:
    # Slicing with -win_size mirrors the official window (the whole history when win_size is 0).
    return sum(1 for t in decoded[-win_size:] if t == token)


def _check_params(top_p: float, top_k: int, win_size: int, tau_r: float) -> None:
    if not 0.0 < top_p <= 1.0 or top_k < 1 or win_size < 0 or tau_r < 0:
        raise InputError(f"bad sampling parameters top_p={top_p}, top_k={top_k}, win_size={win_size}, tau_r={tau_r}")


class TorchRasSampler:
    """The official `ras_sampling`, draw for draw: a private generator seeded with `seed` yields the same
    ids as the official code run after `torch.manual_seed(seed)` on CPU."""

    def __init__(self, seed: int, top_p: float = 0.8, top_k: int = 25, win_size: int = 10, tau_r: float = 0.1):
        import torch

        _check_params(top_p, top_k, win_size, tau_r)
        self._torch = torch
        self.generator = torch.Generator().manual_seed(int(seed))
        self.top_p, self.top_k, self.win_size, self.tau_r = top_p, top_k, win_size, tau_r

    def sample(self, logits: np.ndarray, decoded: list[int], mask_ids: Sequence[int]) -> int:
        torch = self._torch
        scores = torch.from_numpy(np.array(logits, dtype=np.float32).reshape(-1)).log_softmax(dim=0)
        if len(mask_ids):
            scores[torch.as_tensor(list(mask_ids), dtype=torch.long)] = -float("inf")
        probs, order = scores.softmax(dim=0).sort(descending=True, stable=True)
        kept = nucleus_size(probs[: self.top_k].numpy(), self.top_p, self.top_k)
        token = int(order[probs[:kept].multinomial(1, replacement=True, generator=self.generator)])
        if repeats_in_window(decoded, token, self.win_size) >= self.win_size * self.tau_r:
            scores[token] = -float("inf")
            token = int(scores.softmax(dim=0).multinomial(1, replacement=True, generator=self.generator))
        return token


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


class NumpyRasSampler:
    """RAS with numpy's generator for torch-free runs: the same rule, a different random stream than torch."""

    def __init__(self, seed: int, top_p: float = 0.8, top_k: int = 25, win_size: int = 10, tau_r: float = 0.1):
        _check_params(top_p, top_k, win_size, tau_r)
        self.rng = np.random.default_rng(int(seed))
        self.top_p, self.top_k, self.win_size, self.tau_r = top_p, top_k, win_size, tau_r

    def _draw(self, weights: np.ndarray) -> int:
        w = weights.astype(np.float64)
        return int(self.rng.choice(len(w), p=w / w.sum()))

    def sample(self, logits: np.ndarray, decoded: list[int], mask_ids: Sequence[int]) -> int:
        scores = _log_softmax(np.asarray(logits, dtype=np.float32).reshape(-1))
        if len(mask_ids):
            scores[np.asarray(list(mask_ids), dtype=np.int64)] = -np.inf
        probs = _softmax(scores)
        order = np.argsort(-probs, kind="stable")
        sorted_probs = probs[order]
        kept = nucleus_size(sorted_probs[: self.top_k], self.top_p, self.top_k)
        token = int(order[self._draw(sorted_probs[:kept])])
        if repeats_in_window(decoded, token, self.win_size) >= self.win_size * self.tau_r:
            scores[token] = -np.inf
            token = self._draw(_softmax(scores))
        return token


class GreedySampler:
    """Argmax over the unmasked ids: deterministic decoding for backend parity tests."""

    def sample(self, logits: np.ndarray, decoded: list[int], mask_ids: Sequence[int]) -> int:
        scores = np.array(logits, dtype=np.float32).reshape(-1)
        if len(mask_ids):
            scores[np.asarray(list(mask_ids), dtype=np.int64)] = -np.inf
        return int(np.argmax(scores))


def resolve_sampler_kind(kind: str) -> str:
    """`auto` -> `torch` when torch can be imported, else `numpy`; any other kind is checked and kept."""
    if kind not in SAMPLER_KINDS:
        raise InputError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLER_KINDS)}")
    if kind != "auto":
        return kind
    try:
        import torch  # noqa: F401
    except ImportError:
        return "numpy"
    return "torch"


def make_sampler(kind: str, seed: int, cfg: LLMConfig) -> Sampler:
    """`torch` (official RNG stream), `numpy`, `greedy`, or `auto` (torch when it can be imported, else numpy)."""
    kind = resolve_sampler_kind(kind)
    params = dict(top_p=cfg.top_p, top_k=cfg.top_k, win_size=cfg.win_size, tau_r=cfg.tau_r)
    if kind == "torch":
        return TorchRasSampler(seed, **params)
    if kind == "numpy":
        return NumpyRasSampler(seed, **params)
    return GreedySampler()
