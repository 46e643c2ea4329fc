"""Running a job: skip what a previous run finished (resume), hand the rest to an executor, write each item's
file and journal row as it arrives, then the manifest, the assembled track and the report.

The executor is the only part that differs between a local run and a cluster run:

    class Executor(Protocol):
        def run(self, items: Sequence[JobItem]) -> Iterator[ItemOutcome]: ...

It yields one ItemOutcome per item, in any order, and never raises for a bad item (synthesize_item turns every
item failure into the result's `error`). LocalExecutor runs `synthesize_item(engine, item, voices)` one item
after another; a Ray executor runs the same function on actors that each load `job.engine.load()`. Every file
is written here, by the driver, inside the output folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import soundfile as sf

from ..audio import write_wav
from ..errors import InputError
from .assemble import CHAPTER_PAUSE_SECONDS, chapter_track, check_track_seconds, timed_track
from .fitting import REPORTED
from .items import Problem
from .job import Job, JobItem
from .manifest import Journal, write_manifest, write_atomic
from .synthesize import ItemOutcome, ItemResult, VoiceCache, synthesize_item

TRACKS = {"srt": "track.wav", "vtt": "track.wav", "text": "book.wav"}
REPORT = "report.txt"
OnResult = Callable[[int, int, ItemResult], None]


class Executor(Protocol):
    def run(self, items: Sequence[JobItem]) -> Iterator[ItemOutcome]: ...


class LocalExecutor:
    """Items one after another on one loaded engine (the default)."""

    def __init__(self, engine):
        self.engine = engine

    def run(self, items: Sequence[JobItem]) -> Iterator[ItemOutcome]:
        voices = VoiceCache(self.engine)
        for item in items:
            yield synthesize_item(self.engine, item, voices)


@dataclass
class JobReport:
    kind: str
    out_dir: Path
    results: list[ItemResult]
    warnings: list[Problem] = field(default_factory=list)
    track: Path | None = None
    track_error: str = ""        # why no track was assembled (the items and the manifest are still written)
    elapsed: float = 0.0

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.error]

    @property
    def resumed(self) -> list[ItemResult]:
        return [r for r in self.results if r.resumed]

    @property
    def audio_seconds(self) -> float:
        return sum(r.seconds for r in self.results if not r.error)

    def lines(self) -> list[str]:
        """The report: one summary line, then one line per failed, squeezed or overrunning item and warning."""
        made = len(self.results) - len(self.failed)
        lines = [f"{len(self.results)} item(s): {made} done ({len(self.resumed)} resumed), {len(self.failed)} "
                 f"failed; {self.audio_seconds:.1f} s of audio in {self.elapsed:.1f} s"]
        for r in self.results:
            if r.error:
                lines.append(f"line {r.line} ({r.name}): failed: {r.error}")
            elif r.status in REPORTED:
                over = f", {r.target_seconds - (r.end - r.start):.2f} s past its end" if r.status == "overran" else ""
                lines.append(f"line {r.line} ({r.name}): {r.status}: {r.natural_seconds:.2f} s of speech in a "
                             f"{r.end - r.start:.2f} s cue, spoken in {r.target_seconds:.2f} s{over}")
        lines.extend(f"{w} ({w.name})" for w in self.warnings)
        if self.track is not None:
            lines.append(f"assembled track: {self.track.name}")
        if self.track_error:
            lines.append(f"no assembled track: {self.track_error}")
        return lines


def output_path(out_dir: Path, relative: str) -> Path:
    """`relative` under `out_dir`, refused if it would lead elsewhere (e.g. through a planted symbolic link)."""
    root = Path(out_dir).resolve()
    path = (root / relative).resolve()
    if root not in path.parents:
        raise InputError(f"{relative!r} would be written outside the output folder; refused")
    return path


def _finished(previous: ItemResult | None, item: JobItem, out_dir: Path) -> ItemResult | None:
    """The previous run's result when it made this item with the same key and its file is still whole."""
    if previous is None or previous.error or previous.key != item.key:
        return None
    try:
        info = sf.info(str(output_path(out_dir, item.file)))
    except (RuntimeError, OSError, InputError):
        return None
    if abs(info.frames / info.samplerate - previous.seconds) > 1e-3:
        return None
    return replace(previous, name=item.name, line=item.line, resumed=True)


def run_job(job: Job, out_dir: str | Path, executor: Executor, *, resume: bool = True,
            on_result: OnResult | None = None) -> JobReport:
    """Runs every item of `job` not finished by an earlier run into `out_dir`; returns the report (also written
    as report.txt beside manifest.jsonl, manifest.csv, items/ and the assembled track)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(out_dir)
    previous = journal.read() if resume else {}
    results: dict[str, ItemResult] = {}
    total = len(job.items) + sum(p.fatal for p in job.problems)
    done = 0

    def record(result: ItemResult) -> None:
        nonlocal done
        results[result.name] = result
        done += 1
        if on_result is not None:
            on_result(done, total, result)

    for problem in (p for p in job.problems if p.fatal):
        record(ItemResult(problem.name, problem.line, error=problem.reason))
    pending = []
    for item in job.items:
        finished = _finished(previous.get(item.name), item, out_dir)
        if finished is not None:
            record(finished)
        else:
            pending.append(item)
    for outcome in executor.run(pending):
        result = outcome.result
        if outcome.audio is not None:
            try:
                path = output_path(out_dir, result.file)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_wav(path, outcome.audio, outcome.sample_rate)
            except (OSError, InputError) as exc:
                result.error, result.status = f"could not write {result.file}: {exc}", "failed"
        journal.append(result)
        record(result)
    ordered = sorted(results.values(), key=lambda r: (r.line, r.name))
    report = JobReport(job.kind, out_dir, ordered, [p for p in job.problems if not p.fatal])
    try:
        report.track = _assemble(job, out_dir, ordered)
    except InputError as exc:
        report.track_error = str(exc)
    write_manifest(out_dir, ordered)
    journal.rewrite([r for r in ordered if not r.error])
    report.elapsed = time.perf_counter() - start
    write_atomic(out_dir / REPORT, "\n".join(report.lines()) + "\n")
    return report


def _assemble(job: Job, out_dir: Path, results: list[ItemResult]) -> Path | None:
    """The timed track (subtitles) or the book (text), from the item files on disk; None for JSONL jobs."""
    name = TRACKS.get(job.kind)
    made = [r for r in results if not r.error]
    if name is None or not made:
        return None
    if job.kind == "text":
        check_track_seconds(sum(r.seconds for r in made) + CHAPTER_PAUSE_SECONDS * (len(made) - 1))
    else:
        check_track_seconds(max((r.start or 0.0) + r.seconds for r in made))
    pieces, rate = [], None
    for r in made:
        audio, rate = sf.read(str(output_path(out_dir, r.file)), dtype="float32")
        pieces.append((r.start or 0.0, audio))
    if job.kind == "text":
        track = chapter_track([audio for _, audio in pieces], rate)
    else:
        track = timed_track(pieces, rate, max(item.end for item in job.items if item.timed))
    path = out_dir / name
    write_wav(path, track, rate)
    return path
