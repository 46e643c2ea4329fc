"""Batch-job throughput: a generated JSONL or SRT job run by the job runner (local sequential executor), timed.

    python tools/bench_dubbing.py --items 100                       # tiny CV3 model made in --work, JSONL items
    python tools/bench_dubbing.py --model DIR --backend onnx:int8 --kind srt --items 20

Prints items per second and seconds of audio per wall second (the model load is timed apart and left out).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SENTENCES = ["The morning train was late again, so everyone waited on the platform.",
             "She opened the letter slowly and read it twice before she spoke.",
             "Nobody expected the storm to reach the coast before midnight.",
             "He put the kettle on and asked whether anyone wanted tea.",
             "The results were better than last year, but not by much."]
CUES = ["Good morning.", "Thank you.", "See you soon.", "Not today.", "Over here!", "Wait for me."]
CUE_SECONDS = 2.5      # each cue's slot; cues follow one another with 0.5 s gaps


def srt_time(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def write_input(path: Path, kind: str, count: int) -> Path:
    if kind == "jsonl":
        path = path / "job.jsonl"
        path.write_text("".join(json.dumps({"text": SENTENCES[i % len(SENTENCES)], "seed": i}) + "\n"
                                for i in range(count)), encoding="utf-8")
    else:
        path = path / "job.srt"
        blocks = [f"{i + 1}\n{srt_time(i * (CUE_SECONDS + 0.5))} --> {srt_time(i * (CUE_SECONDS + 0.5) + CUE_SECONDS)}"
                  f"\n{CUES[i % len(CUES)]}\n" for i in range(count)]
        path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def generated_job(args, prefix: str):
    """(work folder, the planned job): args.kind/items generated in args.work (default a new temporary folder),
    spoken in a synthetic prompt voice by args.model (default a tiny CV3 model made there) on args.backend."""
    from cosyvoice_onnx.audio import write_wav
    from cosyvoice_onnx.dubbing import EngineSpec, JobSettings, parse_input, plan_job
    from cosyvoice_onnx.tools.tiny import make_tiny_model, synthetic_voice

    work = args.work or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or (work / "tiny" if (work / "tiny").is_dir() else make_tiny_model(work / "tiny", version=3))
    clip = work / "prompt.wav"
    write_wav(clip, synthetic_voice(4.0, 24000, seed=1), 24000)
    source = write_input(work, args.kind, args.items)
    return work, plan_job(parse_input(source.read_bytes(), source.name),
                          JobSettings(EngineSpec(model, args.backend), voices_dir=str(work / "voices"),
                                      prompt_wav=str(clip), prompt_text="This is the prompt clip."))


def job_parser(description: str) -> argparse.ArgumentParser:
    """The options of the generated job (also tools/bench_dubbing_ray.py's)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: a tiny CV3 model in --work)")
    p.add_argument("--backend", default="torch")
    p.add_argument("--kind", choices=["jsonl", "srt"], default="jsonl")
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--work", type=Path, default=None, help="folder for the tiny model, the input and the output")
    return p


def main() -> None:
    args = job_parser(__doc__).parse_args()

    from cosyvoice_onnx.dubbing import LocalExecutor, run_job

    work, job = generated_job(args, "bench-batch-")
    start = time.perf_counter()
    engine = job.engine.load()
    loaded = time.perf_counter()
    report = run_job(job, work / f"out-{args.kind}-{args.items}", LocalExecutor(engine), resume=False)
    wall = time.perf_counter() - loaded
    made = len(report.results) - len(report.failed)
    print(f"{args.kind}, {args.items} items, {engine.plan}: load {loaded - start:.1f} s; {made} made, "
          f"{len(report.failed)} failed in {wall:.1f} s = {made / wall:.2f} items/s; {report.audio_seconds:.1f} s of "
          f"audio = {report.audio_seconds / wall:.2f} s of audio per wall second")
    statuses = {}
    for r in report.results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    print("statuses:", statuses)


if __name__ == "__main__":
    main()
