"""Downloading the official model folders from HuggingFace or ModelScope through their own libraries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import CosyVoiceError

MODELS = {
    "Fun-CosyVoice3-0.5B-2512": {"huggingface": "FunAudioLLM/Fun-CosyVoice3-0.5B-2512",
                                 "modelscope": "FunAudioLLM/Fun-CosyVoice3-0.5B-2512"},
    "CosyVoice2-0.5B": {"huggingface": "FunAudioLLM/CosyVoice2-0.5B", "modelscope": "iic/CosyVoice2-0.5B"},
}


class DownloadError(CosyVoiceError):
    """The download could not run: library missing, hub unreachable, or unknown model."""


def download(model: str, out_dir: str | Path, source: str = "huggingface") -> Path:
    """Fetches `model` into out_dir/<model> with the hub library's own progress bars."""
    if model not in MODELS:
        raise DownloadError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if source not in ("huggingface", "modelscope"):
        raise DownloadError("source must be huggingface or modelscope")
    target = Path(out_dir).expanduser() / model
    repo = MODELS[model][source]
    try:
        if source == "huggingface":
            if importlib.util.find_spec("huggingface_hub") is None:
                raise DownloadError("huggingface_hub is not installed: pip install huggingface_hub")
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=repo, local_dir=str(target))
        else:
            if importlib.util.find_spec("modelscope") is None:
                raise DownloadError("modelscope is not installed: pip install modelscope")
            from modelscope import snapshot_download as ms_snapshot_download

            ms_snapshot_download(repo, local_dir=str(target))
    except DownloadError:
        raise
    except Exception as exc:  # network libraries raise many types; all mean the same to the user
        raise DownloadError(
            f"could not download {repo} from {source} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). "
            "If this machine is offline, download the folder elsewhere and pass it with --model DIR."
        ) from exc
    return target
