"""The export manifest: which checkpoints an ONNX export came from, its files per precision, its parity figures."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path

from .errors import ExportError
from .hash_cache import HashCache
from .model_files import ModelFiles

MANIFEST_NAME = "manifest.json"
# Bumped whenever graphs or their files change, so older exports are refused with a clear message.
# 2: int8 flow estimator, attention bias added once in the estimator, fused LM decode graph.
# 3: every graph file and source carries its full SHA-256.
FORMAT_VERSION = 3
FLOW_NOISE_FILE = "flow_noise.npy"


def source_files(files: ModelFiles) -> dict[str, Path]:
    """The model files whose content an export depends on."""
    return {"yaml": files.root / files.config.yaml_name, "qwen_config": files.qwen_dir / "config.json",
            "llm": files.llm, "flow": files.flow, "hift": files.hift}


def fingerprint(path: Path, hashes: HashCache) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": hashes.sha256(path)}


def new_manifest(files: ModelFiles, package_version: str, hashes: HashCache) -> dict:
    import onnx
    import onnxruntime
    import torch

    return {
        "format": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"version": files.config.version, "folder": str(files.root.resolve()),
                  "llm_variant": files.llm.name},
        "sources": {key: fingerprint(path, hashes) for key, path in source_files(files).items()},
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


# The checkpoint each stage's graphs come from; the yaml and Qwen config concern every stage.
STAGE_SOURCES = {"llm": "lm", "flow": "flow", "hift": "vocoder"}


def _stale_sources(manifest: dict, files: ModelFiles, hashes: HashCache, stages) -> list[tuple[Path, dict]]:
    """(file, what the manifest recorded) for each source of `stages` whose size or SHA-256 has changed."""
    stale = []
    for key, path in source_files(files).items():
        stage = STAGE_SOURCES.get(key)
        if stage is not None and stage not in stages:
            continue
        was = manifest["sources"].get(key, {})
        if (path.name, path.stat().st_size, hashes.sha256(path)) != (was.get("name"), was.get("bytes"),
                                                                      was.get("sha256")):
            stale.append((path, was))
    return stale


def previous_export(export_dir: Path, files: ModelFiles, hashes: HashCache) -> dict | None:
    """The manifest already in `export_dir` when it was made from exactly these model files, else None."""
    try:
        manifest = read_manifest(export_dir)
    except ExportError:
        return None
    if manifest["model"].get("version") != files.config.version or _stale_sources(manifest, files, hashes,
                                                                                   list(STAGE_SOURCES.values())):
        return None
    return manifest


def check_export(export_dir: Path, files: ModelFiles, precision: str, stages: list[str]) -> dict:
    """Refuses an export that is stale for this model folder or incomplete or altered for the requested precision.

    The sources the stages depend on and every file they open are compared with the manifest by SHA-256; hashes
    are cached by file identity in the export folder, so a file is hashed again only after it changed.
    """
    manifest = read_manifest(export_dir)
    if manifest["model"]["version"] != files.config.version:
        raise ExportError(f"{export_dir}: exported from CosyVoice{manifest['model']['version']}, but this model is "
                          f"CosyVoice{files.config.version}; re-export")
    hashes = HashCache.in_folder(export_dir)
    try:
        stale = _stale_sources(manifest, files, hashes, stages)
        if stale:
            path, was = stale[0]
            raise ExportError(f"{export_dir}: stale export: {path.name} differs from the file it was exported from "
                              f"({was.get('name')}, {was.get('bytes')} bytes); re-run `cosyvoice-onnx export`")
        available = manifest.get("precisions", {})
        if precision not in available:
            raise ExportError(
                f"{export_dir}: no {precision} export (has: {', '.join(sorted(available)) or 'none'}); run "
                f"`cosyvoice-onnx export --model {files.root} --precision {precision}`, or tick {precision} under "
                "Precisions in the studio's Models tab and press Export")
        names = [name for stage in stages for name in available[precision].get(stage, [])]
        if "flow" in stages:
            names.append(FLOW_NOISE_FILE)
        for name in names:
            _check_file(Path(export_dir) / name, manifest["files"].get(name, {}), hashes)
    finally:
        hashes.save()
    return manifest


def _check_file(path: Path, recorded: dict, hashes: HashCache) -> None:
    if not path.exists():
        raise ExportError(f"{path}: missing from the export; re-export")
    if path.stat().st_size != recorded.get("bytes") or hashes.sha256(path) != recorded.get("sha256"):
        raise ExportError(f"{path}: differs from the file the export wrote (its SHA-256 or size does not match the "
                          "manifest; corrupt or overwritten); re-export")


def export_status(export_dir: Path, files: ModelFiles) -> tuple[dict | None, dict[str, str]]:
    """(manifest or None, {precision: "current" or why not}) for an export folder, for `info` and the studio.

    A folder without a usable manifest gives (None, {"-": the reason}).
    """
    try:
        manifest = read_manifest(export_dir)
    except ExportError as exc:
        return None, {"-": str(exc)}
    states = {}
    for precision, stages in sorted(manifest.get("precisions", {}).items()):
        try:
            check_export(export_dir, files, precision, sorted(stages))
            states[precision] = "current"
        except ExportError as exc:
            states[precision] = str(exc)
    return manifest, states
