"""Voice conversion tab: a recorded or uploaded clip re-spoken in the voice panel's voice, optionally on two
backends side by side."""

from __future__ import annotations

import gradio as gr

from ...conversion import MAX_SEGMENT_SECONDS, MAX_SOURCE_SECONDS, MIN_SOURCE_SECONDS
from ..handlers import Studio
from .common import AB_BACKENDS, Shared


def build(studio: Studio, shared: Shared):
    gr.Markdown(f"Re-speak a recording in the voice above (its clip or saved voice; the transcript is not used). "
                f"No language model: the recording's own speech tokens keep its words and timing. Sources of "
                f"{MIN_SOURCE_SECONDS:g} s to {MAX_SOURCE_SECONDS / 60:g} min; longer than {MAX_SEGMENT_SECONDS:g} s "
                "they are cut at pauses and converted in segments.")
    source = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Source recording",
                      elem_id="vc-source")
    with gr.Row():
        backend_b = gr.Dropdown([""] + AB_BACKENDS, value="", label="Compare on backend B (optional)",
                                allow_custom_value=True,
                                info="empty: only the header's backend; ONNX needs an export (Models tab)")
    generate = gr.Button("Convert", variant="primary", elem_id="vc-generate")
    with gr.Row():
        audio_a = gr.Audio(label="Converted", type="numpy", format="wav", interactive=False, elem_id="vc-a")
        audio_b = gr.Audio(label="Converted on B", type="numpy", format="wav", interactive=False, elem_id="vc-b")
    report = gr.Markdown(label="Summary", elem_id="vc-report", min_height=60)
    return generate.click(
        studio.convert,
        [source, shared.prompt_audio, shared.saved_voice, shared.seed, *shared.engine, backend_b],
        [audio_a, audio_b, report], api_name="convert", concurrency_id="engine", show_progress_on=report)
