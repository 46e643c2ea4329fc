"""Batch tab: a JSONL, SRT/VTT or text/Markdown file spoken item by item in the voice panel's voice (the same
job runner as `cosyvoice-onnx batch`), with progress, a player for any item and a ZIP of everything."""

from __future__ import annotations

import gradio as gr

from ..batch_job import LIMITS, RULE, BatchJobs
from ..handlers import Studio
from .common import Shared


def build(studio: Studio, shared: Shared):
    jobs = BatchJobs(studio)
    gr.Markdown("Upload a **JSONL** file (one request per line: `text`, and optionally `name`, `voice`, `seed`, "
                "`speed`, `duration`, `instruct`, `mode`), **SRT/WebVTT** subtitles (each cue spoken in its slot, "
                "one assembled track) or **text/Markdown** (one file per chapter, one book). The voice panel's "
                f"voice speaks every item unless a line or the speaker map names another. {RULE} {LIMITS} "
                "Running the same file again skips the items already made.")
    with gr.Row():
        upload = gr.File(label="Input file", file_types=[".jsonl", ".srt", ".vtt", ".txt", ".md"], type="filepath",
                         elem_id="batch-upload")
        voice_map = gr.Textbox(value="", label="Speaker → saved voice", placeholder="ALICE=anna, BOB=ben",
                               info="cues starting `NAME:` or tagged <v NAME> are spoken by that saved voice")
    run = gr.Button("Run batch", variant="primary", elem_id="batch-run")
    report = gr.Markdown(label="Report", elem_id="batch-report", min_height=60)
    with gr.Row():
        job_id = gr.Textbox(label="Job", interactive=False, max_lines=1, scale=1)
        item = gr.Dropdown(choices=[], label="Listen to an item", scale=2, allow_custom_value=True)
    with gr.Row():
        player = gr.Audio(label="Item", type="filepath", interactive=False)
        track = gr.Audio(label="Assembled track", type="filepath", interactive=False)
        archive = gr.File(label="Download (ZIP: items, track, manifest, report)", interactive=False)
    item.change(jobs.item, [job_id, item], player, api_name="batch_item")
    return run.click(
        jobs.run,
        [upload, shared.saved_voice, shared.prompt_audio, shared.transcript, voice_map, shared.seed, shared.join,
         shared.join_ms, *shared.engine],
        [report, job_id, item, archive, track], api_name="batch", concurrency_id="engine", show_progress_on=report)
