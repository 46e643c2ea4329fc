"""A/B tab: one request on two backends from the same seed, players side by side, parity and timings."""

from __future__ import annotations

import gradio as gr

from ..handlers import Studio
from .common import AB_BACKENDS, Shared


def build(studio: Studio, shared: Shared):
    gr.Markdown("Runs the text with the voice above on **A** and **B** from the same seed. With parity on, A is "
                "the reference: LM logits, flow mel and waveform are compared stage by stage on identical inputs. "
                "ONNX needs an export (Models tab).")
    with gr.Row():
        backend_a = gr.Dropdown(AB_BACKENDS, value="torch", label="A", allow_custom_value=True)
        backend_b = gr.Dropdown(AB_BACKENDS, value="onnx", label="B", allow_custom_value=True)
        parity = gr.Checkbox(value=True, label="Measure parity (slower)")
    generate = gr.Button("Generate A and B", variant="primary", elem_id="ab-generate")
    with gr.Row():
        audio_a = gr.Audio(label="A", type="numpy", format="wav", interactive=False, elem_id="ab-a")
        audio_b = gr.Audio(label="B", type="numpy", format="wav", interactive=False, elem_id="ab-b")
    report = gr.Markdown(label="Report", elem_id="ab-report", min_height=80)
    return generate.click(
        studio.ab,
        [shared.text, shared.prompt_audio, shared.transcript, shared.saved_voice, shared.seed, backend_a, backend_b,
         parity, shared.model_dir],
        [audio_a, audio_b, report], api_name="ab", concurrency_id="engine", show_progress_on=report)
