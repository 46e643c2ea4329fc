"""Zero-shot clone tab: the voice panel's clip and transcript, speed, streaming (and its first chunk)."""

from __future__ import annotations

import gradio as gr

from ..handlers import Studio
from .common import PRIVATE, Shared


def build(studio: Studio, shared: Shared):
    gr.Markdown("Clone the voice above: with a transcript this is **zero-shot** (the clip's words and sound prompt "
                "the model); with an empty transcript it is **cross-lingual** (timbre only, any language).")
    with gr.Row():
        speed = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="Speed", info="non-streaming only")
        stream = gr.Checkbox(label="Stream", value=False,
                             info="play chunks as they are made" if studio.stream_player else
                             "ffmpeg is not installed: the live player refreshes with the clip so far")
        first_chunk = gr.Number(label="First chunk (tokens)", value=0, precision=0, minimum=0, maximum=100,
                                info="streaming only; 0: the official schedule; 1-100: sooner first audio, audio "
                                     "slightly different near the cuts", elem_id="zero-shot-first-chunk")
    generate = gr.Button("Generate", variant="primary", elem_id="zero-shot-generate")
    live = gr.Audio(label="Live", streaming=studio.stream_player, autoplay=True, interactive=False,
                    elem_id="zero-shot-live", visible=False)
    result = gr.Audio(label="Result", type="numpy", format="wav", interactive=False, elem_id="zero-shot-result")
    info = gr.Markdown(label="Summary", elem_id="zero-shot-info")
    stream.change(lambda on: gr.Audio(visible=on), stream, live, **PRIVATE)
    return generate.click(
        studio.zero_shot,
        [shared.text, shared.prompt_audio, shared.transcript, shared.saved_voice, shared.seed, speed, stream,
         shared.join, shared.join_ms, *shared.engine, first_chunk],
        [live, result, info], api_name="zero_shot", concurrency_id="engine",
        show_progress_on=result)  # one bar, not one per output
