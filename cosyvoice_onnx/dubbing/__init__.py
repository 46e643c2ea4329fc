"""Batch jobs and subtitle dubbing: many texts, one job (`cosyvoice-onnx batch`, the studio's Batch tab).

The pipeline, one module each:
  source.py          bytes -> text (UTF-8/16/32, binary refused) -> a reader by kind -> ParsedInput
  read_jsonl.py, read_subtitles.py (SRT, WebVTT), read_text.py (text, Markdown chapters)
  items.py           BatchItem (one input item), Problem (a bad line: its number and reason), output names
  job.py             JobSettings (the defaults) + EngineSpec -> plan_job() -> Job of self-contained JobItems
  fitting.py         how long a subtitle cue is spoken (the rule is in its docstring)
  synthesize.py      synthesize_item(engine, item, voices) -> ItemOutcome(result: ItemResult, audio): pure,
                     never raises for a bad item, writes nothing
  runner.py          run_job(job, out_dir, executor) -> JobReport: resume, files, manifest, track, report;
                     `Executor.run(items) -> Iterator[ItemOutcome]` (LocalExecutor: sequential on one engine)
  assemble.py, manifest.py, progress_bar.py

A cluster executor (batch --ray) needs only `job.engine` (EngineSpec: `.load()` on each worker) and
`synthesize_item`; the runner does the rest the same way for every executor.
"""

from .items import BatchItem, ParsedInput, Problem
from .job import EngineSpec, Job, JobItem, JobSettings, VoiceRef, plan_job
from .runner import Executor, JobReport, LocalExecutor, run_job
from .source import parse_input, read_input_file
from .synthesize import ItemOutcome, ItemResult, VoiceCache, synthesize_item

__all__ = ["BatchItem", "EngineSpec", "Executor", "ItemOutcome", "ItemResult", "Job", "JobItem", "JobReport",
           "JobSettings", "LocalExecutor", "ParsedInput", "Problem", "VoiceCache", "VoiceRef", "parse_input",
           "plan_job", "read_input_file", "run_job", "synthesize_item"]
