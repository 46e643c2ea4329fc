"""Batch jobs on the tiny models: subtitle dubbing timed to the cues, resume, the manifest, item failures that
never stop the job, nothing written outside the output folder, and the `batch` command end to end."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from cosyvoice_onnx.cli import main
from cosyvoice_onnx.dubbing import (EngineSpec, JobSettings, LocalExecutor, parse_input, plan_job, run_job,
                                    synthesize_item)
from cosyvoice_onnx.dubbing.fitting import fit_cue, natural_seconds
from cosyvoice_onnx.releases import RELEASES
from cosyvoice_onnx.request import SynthesisRequest

TRANSCRIPT = "This is the prompt clip."
SRT = """1
00:00:00,200 --> 00:00:01,400
ALICE: Good morning.

2
00:00:01,600 --> 00:00:02,000
BOB: Everything that happened yesterday was a surprise to all of us here.

3
00:00:03,000 --> 00:00:02,500
Backwards.

4
00:00:12,000 --> 00:00:15,000
Hi.
"""


class Counting:
    """An executor that remembers which items it was given (to see what a rerun skips)."""

    def __init__(self, engine):
        self.inner, self.seen = LocalExecutor(engine), []

    def run(self, items):
        self.seen.extend(item.name for item in items)
        return self.inner.run(items)


@pytest.fixture(scope="module")
def engines(tiny_model_of):
    from cosyvoice_onnx import CosyVoice

    cache = {}

    def of(version):
        if version not in cache:
            cache[version] = CosyVoice(tiny_model_of(version))
        return cache[version]
    return of


@pytest.fixture(scope="module")
def voices_of(engines, prompt_wav, tmp_path_factory):
    """voices_of(version): a voices folder holding 'anna' and 'ben' saved with that release's tiny model."""
    def of(version):
        root = tmp_path_factory.getbasetemp() / f"batch-voices-cv{version}"
        if not root.exists():
            engine = engines(version)
            store = engine.voice_store(root)
            store.save("anna", engine.prompt_from_audio(prompt_wav, TRANSCRIPT))
            store.save("ben", engine.prompt_from_audio(prompt_wav, ""))
        return root
    return of


def settings(version, tiny_model_of, voices_of, **overrides):
    return JobSettings(EngineSpec(tiny_model_of(version)), voices_dir=str(voices_of(version)),
                       **{"voice": "anna", **overrides})


@pytest.mark.parametrize("version", sorted(RELEASES), ids=lambda v: f"CV{v}")
def test_subtitles_are_fitted_and_placed_at_their_cues(version, engines, voices_of, tiny_model_of, tmp_path):
    engine = engines(version)
    job = plan_job(parse_input(SRT.encode(), "film.srt"),
                   settings(version, tiny_model_of, voices_of, voice_map={"alice": "anna", "BOB": "ben"}))
    assert [(i.name, i.voice.name, i.text) for i in job.items] == [
        ("cue-0001", "anna", "Good morning."),
        ("cue-0002", "ben", "Everything that happened yesterday was a surprise to all of us here."),
        ("cue-0004", "anna", "Hi.")]
    report = run_job(job, tmp_path, LocalExecutor(engine))
    by_name = {r.name: r for r in report.results}
    assert by_name["cue-0003"].error.startswith("cue 3 ends") and by_name["cue-0003"].line == 10
    track, rate = sf.read(tmp_path / "track.wav", dtype="int16")
    cover = np.zeros(len(track), dtype=np.int64)       # how many cues sound at each sample
    placed = {}
    for item in job.items:
        result = by_name[item.name]
        fit = fit_cue(natural_seconds(engine, item.text), item.end - item.start)
        assert (result.status, result.target_seconds) == (fit.status, pytest.approx(fit.target, abs=1e-4))
        audio, _ = sf.read(tmp_path / result.file, dtype="int16")
        assert len(audio) == round(fit.target * rate)                   # exactly the fitted length
        at = round(item.start * rate)
        placed[item.name] = (at, audio)
        cover[at:at + len(audio)] += 1
    for at, audio in placed.values():          # where a cue sounds alone, the track is exactly that cue
        alone = cover[at:at + len(audio)] == 1
        np.testing.assert_array_equal(track[at:at + len(audio)][alone], audio[alone])
        assert alone.sum() > len(audio) // 2
    assert by_name["cue-0002"].status == "overran" and by_name["cue-0004"].status == "short"
    assert len(track) == round(15.0 * rate) and np.all(track[cover == 0] == 0)
    text = (tmp_path / "report.txt").read_text()
    assert "line 6 (cue-0002): overran" in text and "line 10 (cue-0003): failed" in text


def test_an_item_is_the_engine_request_it_describes(engines, voices_of, tiny_model_of):
    """Same text, voice, seed and fitted length -> the same samples as a direct SynthesisRequest."""
    engine = engines(3)
    job = plan_job(parse_input(SRT.encode(), "film.srt"), settings(3, tiny_model_of, voices_of, seed=5))
    item = job.items[0]
    outcome = synthesize_item(engine, item)
    voice = engine.voice_store(voices_of(3)).load("anna")
    target = fit_cue(natural_seconds(engine, item.text), item.end - item.start).target
    direct = engine.synthesize(SynthesisRequest(text=item.text, voice=voice, seed=5, duration=target))
    np.testing.assert_array_equal(outcome.audio, direct.audio)


def jsonl(*rows):
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def test_resume_skips_finished_items_by_content_and_settings(engines, voices_of, tiny_model_of, tmp_path):
    engine = engines(3)
    rows = [{"text": "First line.", "duration": 1.0}, {"text": "Second line.", "duration": 1.0, "name": "two"}]
    make = lambda rows, **kw: plan_job(parse_input(jsonl(*rows), "job.jsonl"),  # noqa: E731
                                       settings(3, tiny_model_of, voices_of, **kw))
    first = Counting(engine)
    run_job(make(rows), tmp_path, first)
    assert first.seen == ["line-0001", "two"]
    again = Counting(engine)
    report = run_job(make(rows), tmp_path, again)
    assert again.seen == [] and [r.resumed for r in report.results] == [True, True]
    changed = Counting(engine)
    run_job(make([rows[0], {**rows[1], "seed": 9}]), tmp_path, changed)          # content changed
    assert changed.seen == ["two"]
    other_voice = Counting(engine)
    run_job(make([rows[0], {**rows[1], "seed": 9}], voice="ben"), tmp_path, other_voice)   # settings changed
    assert other_voice.seen == ["line-0001", "two"]
    (tmp_path / "items" / "two.wav").write_bytes(b"RIFF")                        # a damaged file is made again
    damaged = Counting(engine)
    run_job(make([rows[0], {**rows[1], "seed": 9}], voice="ben"), tmp_path, damaged)
    assert damaged.seen == ["two"]
    fresh = Counting(engine)
    run_job(make(rows), tmp_path, fresh, resume=False)
    assert fresh.seen == ["line-0001", "two"]


def test_manifest_rows_and_item_failures(engines, voices_of, tiny_model_of, tmp_path):
    rows = [{"text": "Good.", "duration": 1.0, "seed": 3}, {"text": "Both.", "duration": 1.0, "speed": 1.5},
            {"text": "Who?", "voice": "nobody"}, {"text": "Mode.", "mode": "zero_shot", "voice": "ben"}, "{bad"]
    data = b"".join(json.dumps(r).encode() + b"\n" if isinstance(r, dict) else r.encode() + b"\n" for r in rows)
    job = plan_job(parse_input(data, "job.jsonl"), settings(3, tiny_model_of, voices_of))
    report = run_job(job, tmp_path, LocalExecutor(engines(3)))
    manifest = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    with open(tmp_path / "manifest.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [m["item"] for m in manifest] == [t["item"] for t in table] == [f"line-000{i}" for i in range(1, 6)]
    good = manifest[0]
    assert (good["file"], good["seconds"], good["seed"], good["backend"], good["error"]) == (
        "items/line-0001.wav", 1.0, 3, "torch", "") and good["rtf"] > 0
    assert table[0]["seconds"] == "1.0" and table[0]["rtf"] == str(good["rtf"])
    errors = {m["line"]: m["error"] for m in manifest if m["error"]}
    assert "either a duration or a speed" in errors[2] and "unknown voice 'nobody'" in errors[3]
    assert "mode zero_shot needs a transcript" in errors[4] and "not valid JSON" in errors[5]
    assert len(report.failed) == 4 and sorted(p.name for p in (tmp_path / "items").iterdir()) == ["line-0001.wav"]


def test_output_names_used_twice_fail_the_later_line(voices_of, tiny_model_of):
    job = plan_job(parse_input(jsonl({"text": "a", "name": "Intro"}, {"text": "b", "name": "intro"}), "j.jsonl"),
                   settings(3, tiny_model_of, voices_of))
    assert [i.name for i in job.items] == ["Intro"]
    assert [(p.line, p.reason) for p in job.problems] == [(2, "output name 'intro' is used by line 1 already")]


def test_nothing_is_written_through_a_planted_link(engines, voices_of, tiny_model_of, tmp_path):
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    os.symlink(outside, out / "items")
    job = plan_job(parse_input(jsonl({"text": "Hi.", "duration": 1.0}), "j.jsonl"),
                   settings(3, tiny_model_of, voices_of))
    report = run_job(job, out, LocalExecutor(engines(3)))
    assert "outside the output folder" in report.results[0].error and list(outside.iterdir()) == []


def test_text_becomes_chapters_and_one_book(engines, voices_of, tiny_model_of, tmp_path):
    md = b"# One\n\nShort.\n\n# Two\n\nAlso short.\n"
    job = plan_job(parse_input(md, "book.md"), settings(3, tiny_model_of, voices_of, join="silence", join_ms=100))
    report = run_job(job, tmp_path, LocalExecutor(engines(3)))
    assert not report.failed and report.track.name == "book.wav"
    book, rate = sf.read(tmp_path / "book.wav", dtype="int16")
    one, _ = sf.read(tmp_path / "items" / "chapter-001.wav", dtype="int16")
    two, _ = sf.read(tmp_path / "items" / "chapter-002.wav", dtype="int16")
    pause = round(1.5 * rate)
    assert len(book) == len(one) + pause + len(two)
    np.testing.assert_array_equal(book[len(one) + pause:], two)


def test_a_track_too_long_is_reported_and_the_items_and_manifest_stay(engines, voices_of, tiny_model_of, tmp_path,
                                                                       monkeypatch):
    from cosyvoice_onnx.dubbing import assemble

    monkeypatch.setattr(assemble, "MAX_TRACK_SECONDS", 0.01)
    md = b"# One\n\nShort.\n\n# Two\n\nAlso short.\n"
    report = run_job(plan_job(parse_input(md, "book.md"), settings(3, tiny_model_of, voices_of)), tmp_path,
                     LocalExecutor(engines(3)))
    assert report.track is None and not (tmp_path / "book.wav").exists()
    assert "no assembled track: the track would be" in report.lines()[-1]
    assert (tmp_path / "items" / "chapter-002.wav").exists() and (tmp_path / "manifest.csv").exists()


# ------------------------------------------------------------------ the command


def run_cli(capsys, *argv):
    code = main(["batch", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_batch_command_end_to_end(tiny_model_dir, voices_of, tmp_path, capsys):
    voices_of(3)
    srt = tmp_path / "film.srt"
    srt.write_text(SRT, encoding="utf-16")
    out = tmp_path / "out"
    args = [srt, "--out", out, "--model", tiny_model_dir, "--voice", "anna", "--voices-dir", voices_of(3),
            "--voice-map", "BOB=ben"]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 1, err               # cue 3 is reversed: reported, the rest made
    assert "line 10 (cue-0003): failed: cue 3 ends" in err and "ETA" in err and "track.wav" in stdout
    assert sorted(p.name for p in (out / "items").iterdir()) == ["cue-0001.wav", "cue-0002.wav", "cue-0004.wav"]
    code, _, err = run_cli(capsys, *args)
    assert "3 done (3 resumed)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.srt", "out"]     # nothing beside --out


def test_batch_command_all_good_is_status_0(tiny_model_dir, voices_of, prompt_wav, tmp_path, capsys):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "me.wav").write_bytes(prompt_wav.read_bytes())
    job = tmp_path / "job.jsonl"       # a line's clip path is relative to the JSONL file, not the working folder
    job.write_bytes(jsonl({"text": "Fine.", "duration": 1.0, "name": "sub/fine"},
                          {"text": "Mine.", "duration": 1.0, "prompt_wav": "clips/me.wav", "prompt_text": TRANSCRIPT}))
    code, _, err = run_cli(capsys, job, "--out", tmp_path / "o", "--model", tiny_model_dir, "--voice", "anna",
                           "--voices-dir", voices_of(3), "--no-glossary")
    assert code == 0, err
    assert (tmp_path / "o" / "items" / "sub" / "fine.wav").is_file()
    rows = [json.loads(line) for line in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert [(r["item"], r["voice"], r["error"]) for r in rows] == [("sub/fine", "anna", ""),
                                                                   ("line-0002", "me.wav", "")]


@pytest.mark.parametrize("case, match", [
    ("binary", "looks like a binary file|not text"), ("missing", "not found"),
    ("unknown-voice", "unknown voice 'nobody'"), ("bad-map", "--voice-map 'ALICE': write SPEAKER=VOICE"),
    ("both", "either --voice or --prompt-wav"), ("no-voice", "no voice: give --voice")])
def test_batch_usage_errors_are_one_line_with_status_2(case, match, tiny_model_dir, voices_of, prompt_wav, tmp_path,
                                                       capsys):
    src = tmp_path / ("in.wav" if case == "binary" else "in.srt")
    if case == "binary":
        src.write_bytes(prompt_wav.read_bytes())
    elif case != "missing":
        src.write_text(SRT)
    voice = {"unknown-voice": ["--voice", "nobody"], "bad-map": ["--voice", "anna", "--voice-map", "ALICE"],
             "both": ["--voice", "anna", "--prompt-wav", prompt_wav], "no-voice": []}.get(case, ["--voice", "anna"])
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, src, "--out", out, "--model", tiny_model_dir, "--voices-dir", voices_of(3), *voice)
    if case == "no-voice":                  # every item fails on its own: a runtime outcome, reported per line
        assert code == 1 and err.count("no voice: give --voice") == 3
        return
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert __import__("re").search(match, err), err
    assert not out.exists()
