"""What the Batch tab does, without UI code: an uploaded JSONL/SRT/VTT/text file run through the same job runner
as `cosyvoice-onnx batch`, into a folder per upload under the data folder, zipped for download.

Bounds (a shared studio): an upload of at most MAX_UPLOAD_BYTES, MAX_ITEMS items and MAX_TEXT_CHARS characters
of text in all; JSONL lines may name saved voices but no file paths; the newest MAX_JOBS job folders are kept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import gradio as gr

from ..dubbing import EngineSpec, JobSettings, LocalExecutor, parse_input, plan_job, run_job
from ..dubbing.fitting import NOTICEABLE, PACE_RANGE
from ..errors import InputError
from .handlers import Studio, backend_spec, parse_seed, user_errors
from .media import read_upload

MAX_UPLOAD_BYTES = 1 << 20
MAX_ITEMS = 200
MAX_TEXT_CHARS = 50_000         # about an hour of speech
MAX_JOBS = 8
JOB_ID_CHARS = 16
ZIP_PARTS = ("items", "manifest.jsonl", "manifest.csv", "report.txt", "track.wav", "book.wav")

LIMITS = (f"At most {MAX_UPLOAD_BYTES >> 20} MB, {MAX_ITEMS} items and {MAX_TEXT_CHARS:,} characters of text per "
          "upload; JSONL lines may name saved voices (`voice`) but not clip paths.")
RULE = (f"A cue is spoken in exactly its slot when that is {PACE_RANGE[0]}–{PACE_RANGE[1]}× its natural pace "
        f"(beyond ±{NOTICEABLE:.0%} it is listed as squeezed or slowed); otherwise at the nearest of those paces, "
        "listed as overran (it runs past the cue's end) or short.")


class BatchJobs:
    def __init__(self, studio: Studio):
        self.studio = studio
        self.root = studio.settings.data_dir / "batch"

    def _job_dir(self, job_id: str) -> Path:
        job_id = (job_id or "").strip()
        if len(job_id) != JOB_ID_CHARS or not all(c in "0123456789abcdef" for c in job_id):
            raise InputError("no such batch job: run a file first")
        path = self.root / job_id
        if not path.is_dir():
            raise InputError(f"batch job {job_id} is gone (only the newest {MAX_JOBS} are kept); run it again")
        return path

    def _prune(self, keep: str) -> None:
        jobs = sorted((p for p in self.root.iterdir() if p.is_dir() and p.name != keep),
                      key=lambda p: p.stat().st_mtime, reverse=True)
        for old in jobs[MAX_JOBS - 1:]:
            shutil.rmtree(old, ignore_errors=True)
            (self.root / f"{old.name}.zip").unlink(missing_ok=True)

    @user_errors
    def run(self, upload: str | None, saved_voice: str = "", prompt_audio: str | None = None, transcript: str = "",
            voice_map: str = "", seed=0, join: str = "none", join_ms: float = 40, backend: str = "torch",
            precision: str = "fp32", stages: str = "", model_dir: str = "", progress=gr.Progress()):
        """Returns (report, job id, item names, ZIP path, assembled track path or None)."""
        from ..dubbing.job import parse_voice_map

        model, seed = self.studio.model_folder(model_dir), parse_seed(seed)
        spec = backend_spec(backend, precision, stages, self.studio.settings.device)
        if not upload:
            raise InputError("no file: upload a .jsonl, .srt, .vtt, .txt or .md file")
        size = Path(upload).stat().st_size if Path(upload).is_file() else 0
        if size > MAX_UPLOAD_BYTES:
            raise InputError(f"the file is {size / 1e6:.1f} MB; at most {MAX_UPLOAD_BYTES >> 20} MB per batch upload")
        data = Path(upload).read_bytes() if size else b""
        parsed = parse_input(data, Path(upload).name, allow_paths=False, max_items=MAX_ITEMS)
        chars = sum(len(item.text) for item in parsed.items)
        if chars > MAX_TEXT_CHARS:
            raise InputError(f"the file holds {chars:,} characters of text; at most {MAX_TEXT_CHARS:,} per batch "
                             "upload (split it)")
        clip, clip_bytes = None, b""
        if not saved_voice:
            clip_bytes = read_upload(prompt_audio, "prompt clip")
            if clip_bytes is None:
                raise InputError("no voice: pick a saved voice or upload a clip in the voice panel")
            clip = prompt_audio
        settings = JobSettings(EngineSpec(str(model), str(spec)), voices_dir=str(self.studio.settings.voices_dir),
                               voice=saved_voice or None, prompt_wav=clip, prompt_text=transcript or None,
                               voice_map=parse_voice_map([voice_map or ""]), seed=seed, join=join,
                               join_ms=float(join_ms), glossary=self.studio.glossary())
        job = plan_job(parsed, settings)
        # One folder per file and settings: the same upload with the same choices resumes, other choices (a
        # second user's voice) get their own folder.
        choices = json.dumps([str(model), str(spec), saved_voice, transcript, voice_map, seed, join, float(join_ms),
                              hashlib.sha256(clip_bytes).hexdigest()])
        job_id = hashlib.sha256(data + choices.encode()).hexdigest()[:JOB_ID_CHARS]
        out = self.root / job_id
        out.mkdir(parents=True, exist_ok=True)
        out.touch()
        self._prune(keep=job_id)

        def show(done, total, result):
            state = "failed" if result.error else "resumed" if result.resumed else result.status
            progress((done, total), desc=f"{result.name}: {state}", unit="items")

        progress(0, desc="loading the model")
        with self.studio.cache.use(model, spec) as engine:
            report = run_job(job, out, LocalExecutor(engine), on_result=show)
        archive = self._zip(out)
        names = [r.name for r in report.results if not r.error]
        text = "  \n".join(report.lines()[:1] + [f"job `{job_id}` · backend `{spec}` · {parsed.kind}"]
                           + report.lines()[1:])
        return (text, job_id, gr.Dropdown(choices=names, value=names[0] if names else None), str(archive),
                str(report.track) if report.track else None)

    def _zip(self, out: Path) -> Path:
        archive = self.root / f"{out.name}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
            for part in ZIP_PARTS:
                path = out / part
                files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
                for file in files:
                    if file.is_file() and not file.is_symlink():
                        z.write(file, file.relative_to(out).as_posix())
        return archive

    @user_errors
    def item(self, job_id: str, name: str) -> str | None:
        """The audio file of one item of a finished job (only names its manifest lists)."""
        if not name:
            return None
        out = self._job_dir(job_id)
        from ..dubbing.manifest import Journal

        result = Journal(out).read().get(name)
        if result is None or result.error:
            raise InputError(f"job {job_id} has no finished item {name!r}")
        return str(out / result.file)
