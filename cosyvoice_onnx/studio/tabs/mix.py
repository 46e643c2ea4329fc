"""Emotion/timbre mix tab: who speaks from the voice panel, how they speak from a second clip."""

from __future__ import annotations

import gradio as gr

from ..handlers import Studio
from .common import PRIVATE, Shared, voice_dropdown

EXPLANATION = """
- **Timbre** (who speaks) = the voice panel above: its clip or saved voice sets the speaker embedding and the
  acoustic prompt of the flow, so the result always sounds like that person.
- **Emotion clip** (how they speak): its speech tokens prompt the language model, which continues their
  delivery: pace, energy, emotion. Its transcript is required, because the model reads the tokens against it.
- **Weight**: 0 uses only the timbre clip's delivery, 1 only the emotion clip's; in between, the model is
  prompted with the start of the timbre clip followed by the end of the emotion clip, cut in that proportion.
"""


def build(studio: Studio, shared: Shared):
    gr.Markdown(EXPLANATION)
    with gr.Row():
        with gr.Column():
            emotion_voice = voice_dropdown(studio, "Saved voice as emotion clip", "replaces the clip below")
            emotion_audio = gr.Audio(sources=["upload", "microphone"], type="filepath", label="Emotion clip")
        with gr.Column():
            emotion_transcript = gr.Textbox(value="", label="Transcript of the emotion clip", lines=3)
            weight = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Emotion weight")
    shared.voice_dropdowns.append(emotion_voice)
    emotion_voice.change(studio.voice_transcript, emotion_voice, emotion_transcript, **PRIVATE)
    generate = gr.Button("Generate", variant="primary", elem_id="mix-generate")
    result = gr.Audio(label="Result", type="numpy", format="wav", interactive=False)
    info = gr.Markdown(label="Summary")
    return generate.click(
        studio.mix,
        [shared.text, shared.prompt_audio, shared.transcript, shared.saved_voice, emotion_audio, emotion_transcript,
         emotion_voice, weight, shared.seed, *shared.engine],
        [result, info], api_name="mix", concurrency_id="engine", show_progress_on=result)
