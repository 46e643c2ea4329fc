"""The Models tab's work: folder status, download, ONNX export with progress, the manifest's parity figures."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..config import flow_summary
from ..errors import CosyVoiceError, InputError
from .handlers import Studio, user_errors, user_message

STAGES = ["lm", "flow", "vocoder"]
TINY_MODEL = "tiny-test-model"


def _export_lines(files) -> list[str]:
    from ..export.exporter import summarize
    from ..int8 import full_range_notice, weight_bits_of
    from ..manifest import check_export, read_manifest
    from ..onnx_backend.loader import default_export_dir

    export_dir = default_export_dir(files)
    try:
        manifest = read_manifest(export_dir)
    except CosyVoiceError as exc:
        return [f"- ONNX export: none usable ({exc})"]
    lines = [f"- ONNX export in `{export_dir}` (created {manifest.get('created', '?')})"]
    for precision in sorted(manifest.get("precisions", {})):
        try:
            check_export(export_dir, files, precision, STAGES)
            state = "ready"
        except CosyVoiceError as exc:
            state = f"not usable: {exc}"
        weights = f" ({weight_bits_of(manifest)}-bit weights)" if precision == "int8" else ""
        lines.append(f"  - {precision}{weights}: {state}")
    notice = full_range_notice(manifest, export_dir) if "int8" in manifest.get("precisions", {}) else None
    if notice:
        lines.append(f"  - warning: {notice}")
    for precision, report in sorted(manifest.get("parity", {}).items()):
        lines.append(f"  - parity {precision}: {summarize(report)}")
    return lines


class ModelAdmin:
    """Bound to one Studio: its settings say where downloads go, its cache forgets re-exported engines."""

    def __init__(self, studio: Studio):
        self.studio = studio

    @user_errors
    def status(self, model_dir: str = "") -> str:
        """Markdown: what the folder holds, or which file is missing; the export's state and parity figures."""
        from ..model_files import inspect_model_dir

        try:
            files = inspect_model_dir(self.studio.model_folder(model_dir))
        except CosyVoiceError as exc:
            return (f"### ❌ No usable model folder\n\n{exc}\n\nOffline? Below: point at a folder you have, or make "
                    "the tiny test model (random weights) to try every tab.")
        cfg = files.config
        lines = [f"### ✅ `{files.root}`", "",
                 f"- CosyVoice{cfg.version}: LM {cfg.llm.num_layers} layers × {cfg.llm.hidden_size}, "
                 f"flow {flow_summary(cfg.flow)}, HiFT at {cfg.hift.sampling_rate} Hz"]
        for name, file in {**files.checkpoints(), "campplus": files.campplus,
                           "speech tokenizer": files.speech_tokenizer}.items():
            lines.append(f"- {name}: `{file.name}` ({file.stat().st_size / 1e6:.1f} MB)")
        lines += _export_lines(files)
        loaded = [spec for root, spec in self.studio.cache.loaded() if root == str(files.root.resolve())]
        lines.append(f"- loaded engines: {', '.join(f'`{s}`' for s in loaded) or 'none yet'}")
        return "\n".join(lines)

    @user_errors
    def download(self, name: str, source: str = "huggingface",
                 progress=gr.Progress(track_tqdm=True)) -> tuple[str, str]:
        """Downloads into the studio's models folder (never a typed path); returns (message, new model folder)."""
        from ..download import MODELS, download

        if name not in MODELS:
            raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
        progress(0, desc=f"downloading {name} from {source}")
        path = download(name, self.studio.settings.models_dir, source=source)
        return f"downloaded **{name}** to `{path}`", str(path)

    @user_errors
    def make_tiny(self, progress=gr.Progress()) -> tuple[str, str]:
        """The tiny synthetic model in the models folder (random weights: it speaks noise), selected at once."""
        from ..tools.tiny import make_tiny_model

        out = self.studio.settings.models_dir / TINY_MODEL
        if not (out / "cosyvoice3.yaml").is_file():
            progress(0, desc="writing the tiny test model")
            make_tiny_model(out)
        return (f"tiny test model ready as `{TINY_MODEL}` (random weights: it speaks noise)",
                str(out))

    @user_errors
    def export(self, model_dir: str = "", precisions: list[str] | None = None, parity: bool = True,
               progress=gr.Progress()) -> str:
        """Runs the exporter; its progress events drive the bar; returns its log with the parity lines."""
        from ..export.exporter import export_model, parse_precisions

        path = self.studio.model_folder(model_dir)
        wanted = parse_precisions(precisions or ["fp32"])
        log: list[str] = []

        def show(event) -> None:
            progress(event.fraction, desc=event.message)

        try:
            out = export_model(path, None, precisions=wanted, parity=bool(parity), progress=log.append,
                               on_event=show)
        except OSError as exc:
            raise InputError(f"cannot write the ONNX export into the model folder: {user_message(exc)}; or export "
                             "on the server with `cosyvoice-onnx export --model DIR --out WRITABLE_DIR`") from exc
        self.studio.cache.forget(path)  # engines opened on the old export must reload the new files
        return f"### Export written to `{out}`\n\n```\n" + "\n".join(log) + "\n```"


def known_models(studio: Studio) -> list[str]:
    """Model folders the studio can offer: --model and every folder under the models dir holding a yaml."""
    found = [str(studio.settings.model_dir)] if studio.settings.model_dir else []
    root = Path(studio.settings.models_dir)
    if root.is_dir():
        found += sorted(str(p.parent) for p in root.glob("*/cosyvoice*.yaml") if str(p.parent) not in found)
    return found
