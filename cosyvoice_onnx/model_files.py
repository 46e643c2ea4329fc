"""The official model folder: which files it must hold, and checked loading of its checkpoints."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import QWEN_DIR, ModelConfig
from .config_readers import load_config
from .errors import ModelFolderError
from .releases import RELEASES

LLM_VARIANTS = {"base": "llm.pt", "rl": "llm.rl.pt"}


@dataclass
class ModelFiles:
    root: Path
    config: ModelConfig
    llm: Path
    flow: Path
    hift: Path
    campplus: Path
    speech_tokenizer: Path
    qwen_dir: Path
    spk2info: Path | None

    def checkpoints(self) -> dict[str, Path]:
        return {"llm": self.llm, "flow": self.flow, "hift": self.hift}


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise ModelFolderError(f"{path}: missing ({what})")
    if path.is_file() and path.stat().st_size == 0:
        raise ModelFolderError(f"{path}: empty file ({what}); re-download the model")
    return path


def inspect_model_dir(model_dir: str | Path, llm_variant: str = "base") -> ModelFiles:
    """Checks that every file the pipeline reads is present; reads the config. Loads no weights."""
    root = Path(model_dir).expanduser()
    cfg = load_config(root)
    if llm_variant not in LLM_VARIANTS:
        raise ModelFolderError(f"unknown LLM variant {llm_variant!r}; choose one of {sorted(LLM_VARIANTS)}")
    if llm_variant not in RELEASES[cfg.version].llm_variants:
        raise ModelFolderError(f"CosyVoice{cfg.version} ships no {llm_variant!r} LLM ({LLM_VARIANTS[llm_variant]}); "
                               f"it has: {', '.join(RELEASES[cfg.version].llm_variants)}")
    qwen = _require(root / QWEN_DIR, "the Qwen tokenizer folder")
    for name in ("vocab.json", "merges.txt"):
        if not (qwen / "tokenizer.json").exists():
            _require(qwen / name, "Qwen tokenizer")
    spk2info = root / "spk2info.pt"
    return ModelFiles(
        root=root,
        config=cfg,
        llm=_require(root / LLM_VARIANTS[llm_variant], f"{llm_variant} LLM weights"),
        flow=_require(root / "flow.pt", "flow weights"),
        hift=_require(root / "hift.pt", "vocoder weights"),
        campplus=_require(root / "campplus.onnx", "CAM++ speaker model"),
        speech_tokenizer=_require(root / cfg.speech_tokenizer_file, "speech tokenizer"),
        qwen_dir=qwen,
        spk2info=spk2info if spk2info.exists() else None,
    )


# Room above the fp32 bytes a config implies: fp64 weights, the pickle and zip headers, extra buffers.
CHECKPOINT_MARGIN_FACTOR = 2
CHECKPOINT_MARGIN_BYTES = 64 << 20


def checkpoint_limit(expected_bytes: int) -> int:
    """The most bytes a checkpoint for weights of `expected_bytes` (fp32) may hold or expand to."""
    return CHECKPOINT_MARGIN_FACTOR * expected_bytes + CHECKPOINT_MARGIN_BYTES


def expanded_size(path: Path) -> int:
    """The bytes loading `path` would unpack: the zip's uncompressed sizes, read from its directory without
    decompressing anything (a torch checkpoint is a zip); the file size for anything else."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            return max(size, sum(info.file_size for info in archive.infolist()))
    except (zipfile.BadZipFile, OSError, ValueError):
        return size  # not a zip (or a damaged one): torch.load reports it


def check_checkpoint_size(path: Path, limit: int) -> None:
    """Refuses a checkpoint larger than the model it claims to be could need, before anything is unpacked."""
    expanded = expanded_size(path)
    if expanded > limit:
        raise ModelFolderError(
            f"{path}: the checkpoint unpacks to {expanded / 1e6:.0f} MB, more than the {limit / 1e6:.0f} MB limit "
            "for the model the yaml/config describes; it is not this model's checkpoint (or it is damaged): "
            "re-download it")


def load_checkpoint(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """torch.load with weights_only=True after the size check; any failure names the file and the likely cause."""
    import torch

    if max_bytes is not None:
        check_checkpoint_size(path, max_bytes)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ModelFolderError(f"{path}: missing") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        hint = "the file looks truncated or corrupt; re-download it"
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            hint = "it contains non-tensor objects and will not be unpickled for safety"
        raise ModelFolderError(f"{path}: cannot load checkpoint ({hint}): {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(state, dict):
        raise ModelFolderError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


_LEGACY_WEIGHT_NORM = re.compile(r"^(.*)\.weight_(g|v)$")


def normalize_hift_keys(state: dict[str, Any]) -> dict[str, Any]:
    """Drops the GAN wrapper's `generator.` prefix and renames legacy weight_g/weight_v keys."""
    out = {}
    for key, value in state.items():
        key = key.replace("generator.", "")
        m = _LEGACY_WEIGHT_NORM.match(key)
        if m:
            key = f"{m.group(1)}.parametrizations.weight.original{0 if m.group(2) == 'g' else 1}"
        out[key] = value
    return out


def load_strict(module, state: dict[str, Any], path: Path, ignore: tuple[str, ...] = ()) -> None:
    """load_state_dict(strict=True) after our own check, so a mismatch names the file, keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items() if k not in ignore}
    given = {k: tuple(v.shape) for k, v in state.items() if k not in ignore and hasattr(v, "shape")}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = [f"{k} {given[k]} != expected {expected[k]}" for k in sorted(set(expected) & set(given))
             if given[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
    if problems:
        raise ModelFolderError(
            f"{path}: does not match the model described by the yaml/config: " + "; ".join(problems)
        )
    module.load_state_dict({k: v for k, v in state.items() if k not in ignore}, strict=not ignore)
