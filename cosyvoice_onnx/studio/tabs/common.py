"""The panels every synthesis tab shares: engine choice, the voice (clip or saved), the text and its helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from ...devices import describe_device, parse_device
from ...plan import BACKENDS as PLAN_BACKENDS
from ...plan import EXPORT_PRECISIONS, PRECISIONS as PLAN_PRECISIONS
from ...plan import ExecutionPlan
from ...prompts import INSTRUCT_PRESETS
from ...request import MAX_TEXT_CHARS
from ..handlers import MAX_SEED, Studio, random_seed
from ..models_admin import known_models
from ..text_tools import TAG_BUTTONS, apply_pinyin, insert_tag_js, polyphone_choices, reading_choices

TEXT_ID = "studio-text"
BACKENDS = list(PLAN_BACKENDS)
PRECISIONS = list(PLAN_PRECISIONS)
EXPORT_CHOICES = list(EXPORT_PRECISIONS)
JOINS = ["none", "crossfade", "silence"]
# The A/B selectors offer the whole-model specs and one per-stage layout (any spec can be typed).
AB_BACKENDS = ["torch", "onnx", "onnx:fp16", "onnx:int8", "lm=onnx:int8,flow=torch,vocoder=onnx"]
# Every release's preset names; the instruction is filled in the chosen model's own wording (prompts.py).
PRESET_CHOICES = list(dict.fromkeys((f"{group}: {key}", f"{group}:{key}") for presets in INSTRUCT_PRESETS.values()
                                    for group, items in presets.items() for key in items))
# UI glue: not in the API, not queued, and quick, so no progress bar of its own beside the action's one.
PRIVATE = {"api_visibility": "private", "queue": False, "show_progress": "hidden"}


@dataclass
class Shared:
    model_dir: gr.Dropdown
    backend: gr.Dropdown
    precision: gr.Dropdown
    stages: gr.Textbox
    saved_voice: gr.Dropdown
    prompt_audio: gr.Audio
    transcript: gr.Textbox
    text: gr.Textbox
    seed: gr.Number
    join: gr.Dropdown
    join_ms: gr.Number
    voice_list: gr.JSON
    voice_dropdowns: list = field(default_factory=list)   # every dropdown of saved voices, refreshed together

    @property
    def engine(self) -> list:
        return [self.backend, self.precision, self.stages, self.model_dir]


def voice_dropdown(studio: Studio, label: str, info: str) -> gr.Dropdown:
    # Custom values are allowed so API callers can name a voice saved after this page was built;
    # the voice store validates every name.
    return gr.Dropdown(choices=voice_choices(studio), value="", label=label, info=info, allow_custom_value=True)


def voice_choices(studio: Studio) -> list[tuple[str, str]]:
    return [("(none: use the clip)", "")] + [(name, name) for name in studio.voice_names()]


def build_header(studio: Studio) -> dict:
    models = known_models(studio)
    plan = ExecutionPlan.parse(studio.settings.backend)
    spec = str(plan)
    per_stage = "=" in spec
    default_backend, default_precision = ("torch", "fp32") if per_stage else (plan.lm.backend, plan.lm.precision)
    with gr.Row(equal_height=True):
        model_dir = gr.Dropdown(choices=models, value=models[0] if models else "", label="Model folder",
                                allow_custom_value=True, scale=4,
                                info="an official Fun-CosyVoice3 folder; see the Models tab to download or export")
        backend = gr.Dropdown(BACKENDS, value=default_backend, label="Backend", scale=1)
        precision = gr.Dropdown(PRECISIONS, value=default_precision or "fp32", label="Precision", scale=1,
                                info="int8 needs the ONNX backend, bf16 the PyTorch one")
    with gr.Accordion("Per-stage backends (advanced)", open=per_stage):
        stages = gr.Textbox(value=spec if per_stage else "", label="Per-stage spec (overrides the two selectors)",
                            placeholder="lm=onnx:int8,flow=torch,vocoder=onnx   (a choice may end in @cpu or @cuda:N)")
    gr.Markdown(describe_device(parse_device(studio.settings.device)), elem_id="device-summary")
    return {"model_dir": model_dir, "backend": backend, "precision": precision, "stages": stages}


def build_voice_panel(studio: Studio) -> dict:
    gr.Markdown("### Voice")
    with gr.Row(equal_height=True):
        saved_voice = voice_dropdown(studio, "Saved voice",
                                     "pick one to reuse it without uploading; it replaces the clip below")
        refresh = gr.Button("↻", size="sm", scale=0, min_width=40)
    prompt_audio = gr.Audio(sources=["upload", "microphone"], type="filepath",
                            label="Prompt clip (3–10 s, ≥ 16 kHz)",
                            elem_id="prompt-audio")
    transcript = gr.Textbox(value="", label="Transcript of the clip", lines=2, elem_id="prompt-transcript",
                            placeholder="exactly what the clip says",
                            info="Leave empty for cross-lingual mode: the clip gives only the timbre, and the text "
                                 "may be in another language. Instruct mode ignores it.")
    with gr.Accordion("Save or delete a voice", open=False):
        voice_name = gr.Textbox(value="", label="Name", placeholder="e.g. narrator-calm", max_lines=1)
        overwrite = gr.Checkbox(label="Replace a voice of the same name", value=False)
        with gr.Row():
            save = gr.Button("Save clip + transcript as voice", size="sm")
            delete = gr.Button("Delete selected saved voice", size="sm", variant="stop")
        voice_status = gr.Markdown(label="Voice status")
        voice_list = gr.JSON(value=studio.voice_names(), label="Saved voices", visible=False)
    return {"saved_voice": saved_voice, "prompt_audio": prompt_audio, "transcript": transcript,
            "voice_name": voice_name, "overwrite": overwrite, "save": save, "delete": delete,
            "voice_status": voice_status, "voice_list": voice_list, "refresh": refresh}


def build_text_panel() -> dict:
    gr.Markdown("### Text")
    text = gr.Textbox(label=f"Text to speak (up to {MAX_TEXT_CHARS} characters; long text is split into sentences)",
                      lines=6, elem_id=TEXT_ID, placeholder="今天天气真不错。 Or any English text.")
    with gr.Row():
        for label, opening, closing in TAG_BUTTONS:
            button = gr.Button(label, size="sm", min_width=80)
            button.click(None, text, text, js=insert_tag_js(f"#{TEXT_ID} textarea", opening, closing), **PRIVATE)
    with gr.Accordion("Pinyin helper (polyphonic characters)", open=False):
        gr.Markdown("Find characters with several readings, pick the one you mean, and it is written into the "
                    "text as CosyVoice3 pinyin tokens, e.g. 给 → `[j][ǐ]`. Positions count from 0, "
                    "as in `cosyvoice-onnx pronounce` and `--reading`.")
        with gr.Row():
            find = gr.Button("Find polyphones", size="sm")
            character = gr.Dropdown(label="Character", choices=[], scale=2, allow_custom_value=True)
            reading = gr.Dropdown(label="Reading", choices=[], scale=2, allow_custom_value=True)
            apply = gr.Button("Insert reading", size="sm")
        find.click(lambda t: gr.Dropdown(choices=polyphone_choices(t), value=None), text, character, **PRIVATE)
        character.change(lambda t, i: gr.Dropdown(choices=reading_choices(t, i), value=None), [text, character],
                         reading, **PRIVATE)
        apply.click(apply_pinyin, [text, character, reading], text, api_name="apply_pinyin").then(
            lambda t: gr.Dropdown(choices=polyphone_choices(t), value=None), text, character, **PRIVATE)
    with gr.Row(equal_height=True):
        # No precision or bounds here: Gradio would fail on NaN or text before the handler, with a raw message;
        # parse_seed checks the value and says what a seed must be.
        seed = gr.Number(value=0, label="Seed", scale=3, info=f"a whole number, 0 to {MAX_SEED}")
        dice = gr.Button("Random", size="sm", scale=0, min_width=70)
        join = gr.Dropdown(JOINS, value="none", label="Sentence joins", scale=2,
                           info="none = official concatenation")
        join_ms = gr.Number(value=40, minimum=0, maximum=2000, label="Join ms", scale=1)
    dice.click(random_seed, None, seed, **PRIVATE)
    return {"text": text, "seed": seed, "join": join, "join_ms": join_ms}


def wire_voice_panel(studio: Studio, shared: Shared, panel: dict):
    """Save/delete voices and keep every saved-voice dropdown in step; returns the refresh (for page loads)."""
    def refresh():
        choices = voice_choices(studio)
        return [gr.Dropdown(choices=choices) for _ in shared.voice_dropdowns] + [[value for _, value in choices[1:]]]

    outputs = shared.voice_dropdowns + [shared.voice_list]
    panel["save"].click(studio.save_voice, [panel["voice_name"], shared.prompt_audio, shared.transcript,
                                            *shared.engine, panel["overwrite"]], panel["voice_status"],
                        api_name="save_voice", concurrency_id="engine").then(refresh, None, outputs, **PRIVATE)
    panel["delete"].click(studio.delete_voice, shared.saved_voice, panel["voice_status"],
                          api_name="delete_voice").then(refresh, None, outputs, **PRIVATE)
    shared.saved_voice.change(studio.voice_transcript, shared.saved_voice, shared.transcript, **PRIVATE)
    panel["refresh"].click(studio.voice_names, None, shared.voice_list, api_name="voices").then(
        refresh, None, outputs, **PRIVATE)
    return refresh, outputs
