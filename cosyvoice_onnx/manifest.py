"""The export manifest: which checkpoints an ONNX export came from, its files per precision, its parity figures."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from .errors import ExportError
from .model_files import ModelFiles, file_sha256

MANIFEST_NAME = "manifest.json"
# Bumped whenever graphs or their files change, so older exports are refused with a clear message.
# 2: int8 flow estimator, attention bias added once in the estimator, fused LM decode graph.
FORMAT_VERSION = 2
FLOW_NOISE_FILE = "flow_noise.npy"


def source_files(files: ModelFiles) -> dict[str, Path]:
    """The model files whose content an export depends on."""
    return {"yaml": files.root / files.config.yaml_name, "qwen_config": files.qwen_dir / "config.json",
            "llm": files.llm, "flow": files.flow, "hift": files.hift}


def quick_hash(path: Path, window: int = 4 << 20) -> str:
    """SHA-256 of the size and three 4 MB windows: catches a different checkpoint of the same size in
    milliseconds, where hashing a 2 GB llm.pt in full takes seconds."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for start in sorted({0, max(0, size // 2 - window // 2), max(0, size - window)}):
            f.seek(start)
            h.update(f.read(window))
    return h.hexdigest()


def fingerprint(path: Path, with_hash: bool = True) -> dict:
    out = {"name": path.name, "bytes": path.stat().st_size, "quick_sha256": quick_hash(path)}
    if with_hash:
        out["sha256"] = file_sha256(path)
    return out


def new_manifest(files: ModelFiles, package_version: str) -> dict:
    import onnx
    import onnxruntime
    import torch

    return {
        "format": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"version": files.config.version, "folder": str(files.root.resolve()),
                  "llm_variant": files.llm.name},
        "sources": {key: fingerprint(path) for key, path in source_files(files).items()},
        "tools": {"cosyvoice_onnx": package_version, "torch": torch.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__, "python": platform.python_version()},
        "precisions": {},
        "files": {},
        "parity": {},
    }


def write_manifest(export_dir: Path, manifest: dict) -> Path:
    path = Path(export_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash mid-export never leaves a half-written manifest
    return path


def read_manifest(export_dir: Path) -> dict:
    path = Path(export_dir) / MANIFEST_NAME
    if not path.exists():
        raise ExportError(f"no ONNX export in {export_dir} ({MANIFEST_NAME} missing); "
                          "run `cosyvoice-onnx export --model DIR` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: unreadable ({exc}); re-export") from exc
    if manifest.get("format") != FORMAT_VERSION:
        raise ExportError(f"{path}: export format {manifest.get('format')}, but this cosyvoice-onnx reads format "
                          f"{FORMAT_VERSION}; re-export: `cosyvoice-onnx export --model DIR`")
    return manifest


def check_export(export_dir: Path, files: ModelFiles, precision: str, stages: list[str], deep: bool = False) -> dict:
    """Refuses an export that is stale for this model folder or incomplete for the requested precision.

    Sources are compared by size and quick hash always, by full SHA-256 when `deep`.
    """
    manifest = read_manifest(export_dir)
    if manifest["model"]["version"] != files.config.version:
        raise ExportError(f"{export_dir}: exported from CosyVoice{manifest['model']['version']}, but this model is "
                          f"CosyVoice{files.config.version}; re-export")
    recorded = manifest["sources"]
    for key, path in source_files(files).items():
        if key == "llm" and "lm" not in stages:
            continue
        if key in ("flow", "hift") and {"flow": "flow", "hift": "vocoder"}[key] not in stages:
            continue
        now = fingerprint(path, with_hash=deep)
        was = recorded.get(key, {})
        stale = any(now[k] != was.get(k) for k in ("name", "bytes", "quick_sha256"))
        if deep and not stale:
            stale = now["sha256"] != was.get("sha256")
        if stale:
            raise ExportError(f"{export_dir}: stale export: {path.name} differs from the file it was exported from "
                              f"({was.get('name')}, {was.get('bytes')} bytes); re-run `cosyvoice-onnx export`")
    available = manifest.get("precisions", {})
    if precision not in available:
        raise ExportError(f"{export_dir}: no {precision} export (has: {', '.join(sorted(available)) or 'none'}); "
                          f"run `cosyvoice-onnx export --precision {precision}`")
    for stage in stages:
        for name in available[precision].get(stage, []):
            info = manifest["files"].get(name, {})
            path = Path(export_dir) / name
            if not path.exists():
                raise ExportError(f"{path}: missing from the export; re-export")
            if info and path.stat().st_size != info.get("bytes"):
                raise ExportError(f"{path}: size differs from the manifest (corrupt or overwritten); re-export")
    return manifest
