"""Models tab: folder status, download from the hubs, export to ONNX with progress, the recorded parity."""

from __future__ import annotations

import gradio as gr

from ...download import MODELS
from ..handlers import Studio
from ..models_admin import ModelAdmin
from .common import EXPORT_CHOICES, PRIVATE, Shared


def build(studio: Studio, shared: Shared):
    admin = ModelAdmin(studio)
    status = gr.Markdown(label="Model status", elem_id="model-status")
    refresh = gr.Button("Check the model folder", size="sm")
    with gr.Row():
        with gr.Column():
            gr.Markdown(f"### Download\nInto `{studio.settings.models_dir}` with the hub's own client.")
            name = gr.Dropdown(list(MODELS), value=next(iter(MODELS)), label="Model")
            source = gr.Radio(["huggingface", "modelscope"], value="huggingface", label="Source")
            download = gr.Button("Download")
            downloaded = gr.Markdown(label="Download result", min_height=80)
            gr.Markdown("### Offline\nType the path of a model folder you already have in **Model folder** at "
                        "the top (it must lie under the models folder above, or be allowed with `--model` or "
                        "`--allow-dir`). To try the studio without one, make the tiny test model: "
                        "**random weights, it speaks noise**, but every tab and the export work with it.")
            tiny = gr.Button("Make the tiny test model (random weights, speaks noise)", elem_id="make-tiny")
            tiny_result = gr.Markdown(label="Tiny model result", min_height=40)
        with gr.Column():
            gr.Markdown("### Export to ONNX\nWrites `<model>/onnx` with a manifest, then measures parity against "
                        "PyTorch. fp32 is always exported (the other precisions derive from it).")
            precisions = gr.CheckboxGroup(EXPORT_CHOICES, value=["fp32"], label="Precisions")
            parity = gr.Checkbox(value=True, label="Measure parity after export")
            export = gr.Button("Export", elem_id="export-button")
            # min_height: an empty Markdown has no height, and the progress bar drawn over it would be invisible.
            export_log = gr.Markdown(label="Export log", elem_id="export-log", min_height=80)
    refresh.click(admin.status, shared.model_dir, status, api_name="model_status")
    shared.model_dir.change(admin.status, shared.model_dir, status, **PRIVATE)
    download.click(admin.download, [name, source], [downloaded, shared.model_dir], api_name="download",
                   concurrency_id="admin", concurrency_limit=1, show_progress_on=downloaded)
    export.click(admin.export, [shared.model_dir, precisions, parity], export_log, api_name="export",
                 concurrency_id="admin", concurrency_limit=1, show_progress_on=export_log).then(
        admin.status, shared.model_dir, status, **PRIVATE)
    tiny.click(admin.make_tiny, None, [tiny_result, shared.model_dir], api_name="make_tiny_model",
               concurrency_id="admin", concurrency_limit=1, show_progress_on=tiny_result)
    return admin, status
