"""Backend-neutral CFM solver and token-to-mel driver for the CosyVoice2/3 flows (numpy only)."""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from .config import FlowConfig
from .errors import InputError
from .stages import FlowStage


def _linspace_float32(n_steps: int) -> np.ndarray:
    """torch.linspace(0, 1, n_steps + 1) in float32, bit for bit.

    np.linspace rounds differently: torch computes start + step*i for the first half and
    end - step*(steps-1-i) for the rest with a fused multiply-add (exact product, one rounding).
    """
    steps = n_steps + 1
    step = np.float64(np.float32(1.0) / np.float32(n_steps))
    index = np.arange(steps)
    low = step * index
    high = 1.0 - step * (steps - 1 - index)
    return np.where(index < steps // 2, low, high).astype(np.float32)


def cosine_time_grid(n_steps: int) -> np.ndarray:
    """[n_steps + 1] float32 times tau_k = 1 - cos(pi/2 * k/n_steps), from 0 to 1.

    The cosine is evaluated in float64 and rounded once, which reproduces PyTorch's float32
    CPU result for the default 10 steps and stays within 1 ulp of it otherwise.
    """
    if n_steps < 1:
        raise InputError(f"the flow needs at least one solver step, got {n_steps}")
    angle = _linspace_float32(n_steps) * np.float32(0.5) * np.float32(math.pi)
    return (np.float32(1.0) - np.cos(angle.astype(np.float64)).astype(np.float32)).astype(np.float32)


def euler_schedule(n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The solver's step times t_k and widths dt_k, k = 0 .. n_steps - 1, each [n_steps] float32.

    t advances by accumulating dt and dt is re-derived from the grid, as the official solver does; the float32
    rounding of t therefore matches it step for step.
    """
    grid = cosine_time_grid(n_steps)
    times, widths = np.empty(n_steps, np.float32), np.empty(n_steps, np.float32)
    t, dt = grid[0], grid[1] - grid[0]
    for step in range(n_steps):
        times[step], widths[step] = t, dt
        t = np.float32(t + dt)
        if step + 1 < n_steps:
            dt = np.float32(grid[step + 2] - t)
    return times, widths


def guidance_batch(mu: np.ndarray, mask: np.ndarray, spks: np.ndarray,
                   cond: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The estimator's fixed inputs on the CFG batch of two, float32: (mask, mu, spks, cond), row 0 conditional,
    row 1 with mu, spks and cond zeroed (the mask is repeated)."""
    return (np.concatenate([mask, mask]).astype(np.float32),
            np.concatenate([mu, np.zeros_like(mu)]).astype(np.float32),
            np.concatenate([spks, np.zeros_like(spks)]).astype(np.float32),
            np.concatenate([cond, np.zeros_like(cond)]).astype(np.float32))


def guidance_weights(cfg_rate: float) -> tuple[np.float32, np.float32]:
    """(1 + cfg_rate, cfg_rate) in float32: the weights of v_cond and v_uncond."""
    return np.float32(1.0 + cfg_rate), np.float32(cfg_rate)


def guided_euler_step(x, velocity, dt, guided_weight, unguided_weight):
    """x + dt * (guided_weight * v_cond - unguided_weight * v_uncond) for a velocity on the CFG batch [2, ...].

    Written once for numpy arrays (with numpy float32 scalars) and torch tensors (with Python floats).
    """
    return x + dt * (guided_weight * velocity[:1] - unguided_weight * velocity[1:])


def solve_cfm(stage: FlowStage, mu: np.ndarray, mask: np.ndarray, spks: np.ndarray, cond: np.ndarray,
              noise: np.ndarray, n_steps: int = 10, cfg_rate: float = 0.7, streaming: bool = False) -> np.ndarray:
    """Euler integration of the flow ODE from `noise` with classifier-free guidance.

    mu, cond, noise [1, 80, T]; mask [1, 1, T]; spks [1, 80] -> [1, 80, T] float32. Each step runs
    the estimator on a batch of two: row 0 conditional, row 1 with mu, spks and cond zeroed;
    v = (1 + cfg_rate) * v_cond - cfg_rate * v_uncond.
    """
    times, widths = euler_schedule(n_steps)
    x = np.asarray(noise, dtype=np.float32)
    mask_in, mu_in, spks_in, cond_in = guidance_batch(mu, mask, spks, cond)
    guided_weight, unguided_weight = guidance_weights(cfg_rate)
    for t, dt in zip(times, widths):
        velocity = stage.estimate(np.concatenate([x, x]), mask_in, mu_in, np.array([t, t], dtype=np.float32),
                                  spks_in, cond_in, streaming)
        x = guided_euler_step(x, np.asarray(velocity, dtype=np.float32), dt, guided_weight, unguided_weight)
    return x.astype(np.float32)


def token_to_mel(stage: FlowStage, tokens: np.ndarray, prompt_tokens: np.ndarray, prompt_feat: np.ndarray,
                 embedding: np.ndarray, noise_buffer: np.ndarray, streaming: bool, finalize: bool,
                 cfg: FlowConfig) -> np.ndarray:
    """CausalMaskedDiffWithDiT/-Xvec.inference: tokens [1, n] after prompt_tokens [1, p], prompt_feat [1, 2p, 80],
    speaker embedding [1, 192] -> mel [1, 80, T - 2p] for the target tokens only.

    Not finalized, the last `pre_lookahead_len` tokens are look-ahead context and produce no frames.
    `noise_buffer` [1, 80, F] is the fixed starting noise; its first T frames are used.
    """
    all_tokens = np.concatenate([np.asarray(prompt_tokens, dtype=np.int64).reshape(1, -1),
                                 np.asarray(tokens, dtype=np.int64).reshape(1, -1)], axis=1)
    if not finalize and all_tokens.shape[1] <= cfg.pre_lookahead_len:
        raise InputError(f"a non-final flow chunk needs more than {cfg.pre_lookahead_len} tokens, "
                         f"got {all_tokens.shape[1]}")
    spks = stage.embed_speaker(np.asarray(embedding, dtype=np.float32))
    mu = stage.encode_tokens(all_tokens, finalize, streaming)
    n_frames = mu.shape[2]
    prompt_frames = prompt_feat.shape[1]
    if prompt_frames > n_frames:
        raise InputError(f"prompt mel has {prompt_frames} frames but the tokens give only {n_frames}")
    if n_frames > noise_buffer.shape[2]:
        raise InputError(f"prompt plus target need {n_frames} mel frames, more than the "
                         f"{noise_buffer.shape[2]} frames of flow noise ({noise_buffer.shape[2] / 50:.0f} s); "
                         "use a shorter prompt or split the text")
    cond = np.zeros((1, mu.shape[1], n_frames), dtype=np.float32)
    cond[:, :, :prompt_frames] = np.asarray(prompt_feat, dtype=np.float32).transpose(0, 2, 1)
    mask = np.ones((1, 1, n_frames), dtype=np.float32)
    noise = noise_buffer[:, :, :n_frames]
    # A stage that can keeps the solver's state on its device (a CUDA torch stage); the result is the same.
    solve = stage.solve_resident if getattr(stage, "resident_solve", False) else partial(solve_cfm, stage)
    mel = solve(mu, mask, spks, cond, noise, cfg.n_timesteps, cfg.inference_cfg_rate, streaming)
    return mel[:, :, prompt_frames:]
