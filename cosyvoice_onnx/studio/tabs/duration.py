"""Duration tab: an exact length in seconds, or a speed ratio; shows the length achieved."""

from __future__ import annotations

import gradio as gr

from ..handlers import Studio
from .common import PRIVATE, Shared


def build(studio: Studio, shared: Shared):
    gr.Markdown("**Seconds**: the clip comes out exactly this long. *tokens* makes the model speak exactly the "
                "matching number of speech tokens (natural pacing); *stretch* lets it speak freely and resamples "
                "the mel, like the speed control. **Speed**: the official ratio (0.5–2).")
    with gr.Row():
        target = gr.Radio(["seconds", "speed"], value="seconds", label="Control")
        seconds = gr.Number(value=5.0, minimum=0.1, maximum=600, label="Target seconds")
        method = gr.Radio(["tokens", "stretch"], value="tokens", label="Method (seconds)")
        speed = gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="Speed ratio", visible=False)
    target.change(lambda mode: (gr.Number(visible=mode == "seconds"), gr.Radio(visible=mode == "seconds"),
                                gr.Slider(visible=mode == "speed")), target, [seconds, method, speed], **PRIVATE)
    generate = gr.Button("Generate", variant="primary", elem_id="duration-generate")
    with gr.Row():
        result = gr.Audio(label="Result", type="numpy", format="wav", interactive=False, scale=3)
        achieved = gr.Number(label="Achieved seconds", precision=3, interactive=False, scale=1)
    info = gr.Markdown(label="Summary")
    return generate.click(
        studio.duration,
        [shared.text, shared.prompt_audio, shared.transcript, shared.saved_voice, target, seconds, speed, method,
         shared.seed, *shared.engine],
        [result, achieved, info], api_name="duration", concurrency_id="engine", show_progress_on=result)
