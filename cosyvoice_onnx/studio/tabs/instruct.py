"""Instruct tab: the voice panel's clip for timbre, a natural-language instruction for the style."""

from __future__ import annotations

import gradio as gr

from ..handlers import Studio
from .common import PRESET_CHOICES, PRIVATE, Shared


def build(studio: Studio, shared: Shared):
    gr.Markdown("The clip above gives the **timbre**; the **instruction** sets dialect, emotion, speed or role. "
                "The transcript is not used.")
    preset = gr.Dropdown(PRESET_CHOICES, value=None, label="Preset (fills the instruction)",
                         info="in the model's own wording; volume and role presets are CosyVoice3's only")
    instruction = gr.Textbox(label="Instruction", lines=2, placeholder="请用四川话说这句话。")
    preset.change(studio.preset_text, [preset, shared.model_dir], instruction, **PRIVATE)
    generate = gr.Button("Generate", variant="primary", elem_id="instruct-generate")
    result = gr.Audio(label="Result", type="numpy", format="wav", interactive=False)
    info = gr.Markdown(label="Summary")
    return generate.click(
        studio.instruct,
        [shared.text, instruction, shared.prompt_audio, shared.saved_voice, shared.seed, shared.join, shared.join_ms,
         *shared.engine],
        [result, info], api_name="instruct", concurrency_id="engine", show_progress_on=result)
