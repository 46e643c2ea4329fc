"""The studio page: shared engine, voice and text panels above one tab per way of generating."""

from __future__ import annotations

import gradio as gr

from .handlers import Studio
from .media import MAX_UPLOAD_BYTES
from .tabs import ab, batch, convert, duration, glossary, history, instruct, mix, models, zero_shot
from .tabs.common import PRIVATE, Shared, build_header, build_text_panel, build_voice_panel, wire_voice_panel

TITLE = "CosyVoice ONNX Studio"
# System fonts: the default theme fetches Google Fonts, which an offline studio cannot reach.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
CSS = "#studio-text textarea { font-size: 1.05rem; } .gradio-container { max-width: 1400px !important; }"


def build_app(studio: Studio) -> gr.Blocks:
    # Uploads and results pile up in Gradio's cache folder otherwise: every minute (or every cache_seconds, if
    # shorter), files older than cache_seconds go, and the rest when the server stops.
    age = studio.settings.cache_seconds
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(min(60, age), age)) as demo:
        gr.Markdown(f"# {TITLE}\nFun-CosyVoice3 voice cloning on PyTorch and ONNX Runtime. Pick the voice and "
                    "the text once; each tab is a way of speaking it. Synthesis runs on this machine.")
        header = build_header(studio)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1):
                voice = build_voice_panel(studio)
            with gr.Column(scale=1):
                text = build_text_panel()
        shared = Shared(**header, saved_voice=voice["saved_voice"], prompt_audio=voice["prompt_audio"],
                        transcript=voice["transcript"], voice_list=voice["voice_list"], **text)
        shared.voice_dropdowns.append(shared.saved_voice)
        generated = []
        with gr.Tabs():
            with gr.Tab("Zero-shot clone", id="zero-shot"):
                generated.append(zero_shot.build(studio, shared))
            with gr.Tab("Instruct", id="instruct"):
                generated.append(instruct.build(studio, shared))
            with gr.Tab("Emotion / timbre mix", id="mix"):
                generated.append(mix.build(studio, shared))
            with gr.Tab("Duration", id="duration"):
                generated.append(duration.build(studio, shared))
            with gr.Tab("A/B", id="ab"):
                generated.append(ab.build(studio, shared))
            with gr.Tab("Voice conversion", id="vc"):
                generated.append(convert.build(studio, shared))
            with gr.Tab("Batch", id="batch"):
                batch.build(studio, shared)
            with gr.Tab("Glossary", id="glossary"):
                glossary_admin, glossary_table = glossary.build(studio, shared)
            with gr.Tab("Models", id="models"):
                admin, model_status = models.build(studio, shared)
            with gr.Tab("History", id="history"):
                table = history.build(studio)
        refresh_voices, voice_outputs = wire_voice_panel(studio, shared, voice)
        demo.load(refresh_voices, None, voice_outputs, **PRIVATE)
        demo.load(admin.status, shared.model_dir, model_status, **PRIVATE)
        demo.load(studio.history_rows, None, table, **PRIVATE)
        demo.load(glossary_admin.rows, None, glossary_table, **PRIVATE)
        for event in generated:
            event.then(studio.history_rows, None, table, **PRIVATE)
    # The queue shows each waiting user its place; beyond max_queue waiting requests are refused at once.
    settings = studio.settings
    return demo.queue(max_size=settings.max_queue, default_concurrency_limit=settings.concurrency)


def launch_options(studio: Studio) -> dict:
    """Keyword arguments for demo.launch() that every entry point needs."""
    allowed = [str(studio.history.root), str(studio.settings.data_dir / "batch")]   # clips; batch items and ZIPs
    return {"show_error": True, "allowed_paths": allowed, "max_file_size": MAX_UPLOAD_BYTES, "css": CSS,
            "theme": THEME}
