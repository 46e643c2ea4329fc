"""Builds the PyTorch stages from an official model folder with strict, checked weight loading."""

from __future__ import annotations

import gc

import numpy as np
import torch

from ..devices import CPU, Device, resolve_torch
from ..errors import InputError, ModelFolderError
from ..model_files import ModelFiles, checkpoint_limit, load_checkpoint, load_strict, normalize_hift_keys
from .flow import CausalFlow, TorchFlow, flow_noise_buffer_torch
from .flow_v2 import ConformerUNetFlow
from .hift import CausalHiFT, TorchVocoder
from .llm import CosyVoice3LM, TorchLanguageModel


# FlowConfig.kind -> the flow module: CV3's pre-lookahead + DiT, CV2's conformer + UNet.
FLOW_CLASSES = {"dit": CausalFlow, "conformer_unet": ConformerUNetFlow}


def build_modules(cfg) -> dict[str, torch.nn.Module]:
    """Fresh modules for a config (random init); their state dicts have the official keys."""
    return {"lm": CosyVoice3LM(cfg.llm), "flow": FLOW_CLASSES[cfg.flow.kind](cfg.flow), "vocoder": CausalHiFT(cfg.hift)}


def fp32_bytes(module: torch.nn.Module) -> int:
    """What the module's weights take as an fp32 checkpoint (tied weights counted once)."""
    by_storage = {t.untyped_storage().data_ptr(): t.numel() * 4 for t in module.state_dict().values()}
    return sum(by_storage.values())


def load_module(files: ModelFiles, stage: str) -> torch.nn.Module:
    """The stage's module with its checkpoint loaded; a failed load leaves nothing of itself in memory."""
    try:
        return _load_module(files, stage)
    except ModelFolderError as exc:
        message = str(exc)
    # Out of the except block the failed attempt's frames, tensors and half-built module are unreachable; collect
    # the reference cycles among them now, and raise an error that carries no traceback into them.
    gc.collect()
    raise ModelFolderError(message)


def _load_module(files: ModelFiles, stage: str) -> torch.nn.Module:
    cfg = files.config
    if stage == "lm":
        module, path = CosyVoice3LM(cfg.llm), files.llm
    elif stage == "flow":
        module, path = FLOW_CLASSES[cfg.flow.kind](cfg.flow), files.flow
    elif stage == "vocoder":
        module, path = CausalHiFT(cfg.hift), files.hift
    else:
        raise ValueError(stage)
    state = load_checkpoint(path, max_bytes=checkpoint_limit(fp32_bytes(module)))
    if stage == "vocoder":
        state = normalize_hift_keys(state)
    load_strict(module, state, path)
    if stage == "lm" and cfg.llm.tie_word_embeddings:
        module.tie_weights()
    return module.eval()


_ADAPTERS = {"lm": TorchLanguageModel, "flow": TorchFlow, "vocoder": TorchVocoder}


def load(files: ModelFiles, stages: list[str], *, device: Device = CPU, precision: str = "fp32") -> dict:
    """The stage adapters for `stages`, on `device` in `precision` (plan.SUPPORTED lists what each stage takes)."""
    device = resolve_torch(device)
    if device != CPU or precision != "fp32":
        raise InputError(f"the PyTorch backend of this build runs fp32 on the CPU, not {precision} on {device}")
    return {stage: _ADAPTERS[stage](load_module(files, stage)) for stage in stages}


def flow_noise() -> np.ndarray:
    return flow_noise_buffer_torch().numpy()
