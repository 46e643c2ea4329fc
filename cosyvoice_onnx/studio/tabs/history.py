"""History tab: every generated clip, newest first, with a player and a download; kept across restarts."""

from __future__ import annotations

import gradio as gr

from ..handlers import HISTORY_COLUMNS, Studio
from .common import PRIVATE

# id, created, mode, seconds, text, backend, seed, voice
COLUMN_WIDTHS = ["16%", "13%", "11%", "7%", "27%", "10%", "7%", "9%"]


def build(studio: Studio):
    gr.Markdown(f"Clips are kept in `{studio.history.root}` (the newest {studio.history.keep}). "
                "Click a row to play or download it; **Make again** remakes a zero-shot, instruct or duration clip "
                "from what it stored (its prompt, seed, controls and glossary) and says whether it came out "
                "identical.")
    refresh = gr.Button("Refresh", size="sm")
    # Fixed shares of the page's width and long texts cut short: otherwise the text column pushes the backend,
    # seed and voice columns off the right edge.
    table = gr.Dataframe(value=[], headers=HISTORY_COLUMNS, interactive=False, wrap=True, max_height=360,
                         column_widths=COLUMN_WIDTHS, max_chars=90, elem_id="history-table")
    with gr.Row():
        clip_id = gr.Textbox(label="Clip id", max_lines=1, scale=2)
        again = gr.Button("Make again", size="sm", scale=0)
        delete = gr.Button("Delete clip", variant="stop", size="sm", scale=0)
    with gr.Row():
        player = gr.Audio(label="Clip", type="filepath", interactive=False)
        download = gr.File(label="Download", interactive=False)
    with gr.Row():
        again_player = gr.Audio(label="Made again", interactive=False)
        again_summary = gr.Markdown()
    refresh.click(studio.history_rows, None, table, api_name="history")
    table.select(_row_id, None, clip_id, **PRIVATE)
    clip_id.change(studio.history_clip, clip_id, [player, download], api_name="history_clip")
    again.click(studio.replay_clip, clip_id, [again_player, again_summary], api_name="replay_clip")
    delete.click(studio.delete_clip, clip_id, None, api_name="delete_clip").then(
        studio.history_rows, None, table, **PRIVATE)
    return table


def _row_id(event: gr.SelectData) -> str:
    row = event.row_value or []
    return str(row[0]) if row else gr.skip()
