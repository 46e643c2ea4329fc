"""Glossary tab: term -> reading fixes applied to every synthesis, editable here, with a preview."""

from __future__ import annotations

import gradio as gr

from ...glossary import KINDS
from ..glossary_admin import COLUMNS, GlossaryAdmin
from ..handlers import Studio
from .common import PRIVATE, Shared


def build(studio: Studio, shared: Shared):
    admin = GlossaryAdmin(studio)
    gr.Markdown(f"Every tab speaks the text with these fixes (stored in `{admin.path}`). Readings: pinyin, one "
                "syllable per character (`chóng qìng` or `chong2 qing4`); ARPAbet (`HH AH0 L OW1`); or a plain "
                "respelling (works on CosyVoice2 too). The longest term wins; tags and written tokens are left "
                "alone. Adding a term that exists replaces it.")
    table = gr.Dataframe(value=[], headers=COLUMNS, interactive=False, wrap=True, max_height=300,
                         elem_id="glossary-table")
    refresh = gr.Button("Refresh", size="sm")
    with gr.Row():
        term = gr.Textbox(label="Term", max_lines=1, scale=2)
        reading = gr.Textbox(label="Reading", max_lines=1, scale=3)
        kind = gr.Dropdown(list(KINDS), value="respell", label="Kind", scale=1)
    with gr.Row():
        case_sensitive = gr.Checkbox(label="Case-sensitive")
        whole_word = gr.Checkbox(label="Whole word only")
        add = gr.Button("Add / update", variant="primary", size="sm")
        delete = gr.Button("Delete term", variant="stop", size="sm")
    with gr.Row():
        upload = gr.File(label="Import CSV (term, reading, kind, case_sensitive, whole_word)", file_types=[".csv"])
        replace = gr.Checkbox(label="Replace the glossary (instead of merging)")
        download = gr.File(label="Export CSV", interactive=False)
    with gr.Row():
        import_button = gr.Button("Import", size="sm")
        export_button = gr.Button("Export", size="sm")
    preview_button = gr.Button("Preview the text as the model receives it", size="sm")
    preview = gr.Textbox(label="Model input (one sentence per line)", lines=4, interactive=False)

    refresh.click(admin.rows, None, table, api_name="glossary")
    add.click(admin.add, [term, reading, kind, case_sensitive, whole_word], table, api_name="glossary_add")
    delete.click(admin.delete, term, table, api_name="glossary_delete")
    import_button.click(admin.import_csv, [upload, replace], table, api_name="glossary_import")
    export_button.click(admin.export_csv, None, download, api_name="glossary_export")
    preview_button.click(admin.preview, [shared.text, shared.model_dir], preview, api_name="glossary_preview")
    table.select(_row, None, [term, reading, kind, case_sensitive, whole_word], **PRIVATE)
    return admin, table


def _row(event: gr.SelectData):
    row = list(event.row_value or [])
    if len(row) < 5:
        return [gr.skip()] * 5
    return row[0], row[1], row[2], bool(row[3]), bool(row[4])
