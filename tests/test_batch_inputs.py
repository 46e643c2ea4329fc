"""Batch inputs without a model: the readers (JSONL, SRT, WebVTT, text/Markdown), encodings, bad lines, output
names, the cue-fitting rule, the timed track and the voice map."""

import codecs
import json

import numpy as np
import pytest

from cosyvoice_onnx.dubbing.job import parse_voice_map
from cosyvoice_onnx.dubbing.assemble import chapter_track, timed_track
from cosyvoice_onnx.dubbing.fitting import PACE_RANGE, fit_cue
from cosyvoice_onnx.dubbing.items import check_output_name
from cosyvoice_onnx.dubbing.source import MAX_INPUT_BYTES, decode_text, detect_kind, parse_input
from cosyvoice_onnx.dubbing.synthesize import text_parts
from cosyvoice_onnx.errors import InputError

SRT = """1
00:00:01,000 --> 00:00:03,500
ALICE: Hello there.
<i>How are you?</i>

2
00:00:03,000 --> 00:00:05,000
BOB: Fine, thanks.

3
00:00:07,000 --> 00:00:06,000
Backwards.

4
00:00:08,000 --> 00:00:08,000
Nothing.

5
no timing here

6
00:00:09,000 --> 00:00:10,250
Note: plain text.
"""

VTT = """WEBVTT - a title

NOTE a comment block
that spans lines

intro
00:01.000 --> 00:02.500 align:start
<v Alice>Hi <b>there</b>.</v>

00:00:03.000 --> 00:00:04.000
Second cue.
"""


def lines(problems):
    return [(p.line, p.fatal) for p in problems]


def test_srt_cues_slots_speakers_and_problems():
    parsed = parse_input(SRT.encode(), "film.srt")
    assert parsed.kind == "srt"
    assert [(i.name, i.start, i.end, i.speaker) for i in parsed.items] == [
        ("cue-0001", 1.0, 3.5, "ALICE"), ("cue-0002", 3.0, 5.0, "BOB"), ("cue-0006", 9.0, 10.25, "Note")]
    assert parsed.items[0].text == "ALICE: Hello there. How are you?"       # tags gone, lines joined
    reasons = {p.line: p.reason for p in parsed.problems}
    assert "starts 0.500 s before cue-0001 ends" in reasons[7] and "ends (00:00:06.000) before it starts" in reasons[11]
    assert "0 s long" in reasons[15] and "no timing line" in reasons[18]
    assert lines(parsed.problems) == [(7, False), (11, True), (15, True), (18, True)]


def test_vtt_voice_tags_short_timestamps_and_skipped_blocks():
    parsed = parse_input(VTT.encode(), "talk.vtt")
    assert [(i.text, i.speaker, i.start, i.end) for i in parsed.items] == [
        ("Hi there.", "Alice", 1.0, 2.5), ("Second cue.", None, 3.0, 4.0)]
    with pytest.raises(InputError, match="starts with the line WEBVTT"):
        parse_input(b"00:01.000 --> 00:02.000\nHi\n", "x.vtt")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-8-sig", "utf-32"])
def test_srt_in_other_unicode_encodings_is_read(encoding):
    data = SRT.replace("Hello", "Héllo 你好").encode(encoding)
    if encoding == "utf-16-be":   # no byte-order mark: told apart by where the zero bytes are
        assert not data.startswith(codecs.BOM_UTF16_BE)
    parsed = parse_input(data, "film.srt")
    assert parsed.items[0].text.startswith("ALICE: Héllo 你好")


@pytest.mark.parametrize("data, match", [
    (bytes(range(256)) * 40, "binary|not text"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00\x01" * 500, "binary|not text"),
    (b"\xff\xd8\xff\xe0" + bytes(range(200, 256)) * 30, "not text"),
    (b"", "empty"),
])
def test_binary_and_empty_files_are_refused(data, match):
    with pytest.raises(InputError, match=match):
        parse_input(data, "upload.srt")


def test_oversized_input_is_refused_without_decoding():
    with pytest.raises(InputError, match=f"at most {MAX_INPUT_BYTES >> 20} MB"):
        decode_text(b"a" * (MAX_INPUT_BYTES + 1), "big.txt")


def test_jsonl_lines_override_defaults_and_bad_lines_say_why():
    rows = [{"text": "One.", "name": "intro/one", "seed": 7, "voice": "anna"},
            {"text": "Two.", "mode": "cross_lingual", "prompt_text": ""},
            "not json", ["a", "list"], {"txt": "typo"}, {"text": ""}, {"text": "x", "seed": -1},
            {"text": "x", "name": "../../etc/passwd"}, {"text": "x", "name": "/abs"}, {"text": "x", "speed": "fast"},
            {"text": "x", "mode": "instruct"}, {"text": "x", "mode": "zero_shot", "prompt_text": ""},
            {"text": "x", "voice": "a", "prompt_wav": "b.wav"}, {"text": "x", "duration_method": "warp"}]
    text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n\n"
    parsed = parse_input(text.encode(), "job.jsonl")
    assert [(i.line, i.name, i.seed, i.voice, i.mode) for i in parsed.items] == [
        (1, "intro/one", 7, "anna", None), (2, "line-0002", None, None, "cross_lingual")]
    reasons = [(p.line, p.reason) for p in parsed.problems]
    expected = ["not valid JSON", "expected a JSON object", "unknown field(s) txt", "no text to speak", "seed must be",
                "would leave the output folder", "would leave the output folder", "speed must be a finite number",
                "needs an \"instruct\"", "does not match the prompt_text", "either voice or prompt_wav",
                "unknown duration_method"]
    assert [line for line, _ in reasons] == list(range(3, 15))
    for (_, reason), want in zip(reasons, expected):
        assert want in reason


def test_jsonl_prompt_paths_can_be_refused():
    parsed = parse_input(b'{"text": "x", "prompt_wav": "/etc/hostname"}\n', "up.jsonl", allow_paths=False)
    assert not parsed.items and "not accepted here" in parsed.problems[0].reason


def test_markdown_chapters_split_on_headings_and_markup_is_dropped():
    md = ("Preface line one\ncontinues here.\n\n# Chapter *One*\n\nSome **bold** text with a [link](http://x).\n\n"
          "```\ncode = 1\n```\n- a list item\n\nChapter Two\n===========\n\n![img](a.png)\nLast paragraph.\n")
    parsed = parse_input(md.encode(), "book.md")
    assert [(i.name, i.line, i.text) for i in parsed.items] == [
        ("chapter-001", 1, "Preface line one continues here."),
        ("chapter-002", 4, "Chapter One\nSome bold text with a link.\na list item"),
        ("chapter-003", 13, "Chapter Two\nLast paragraph.")]
    assert [i.text for i in parse_input(b"Just one paragraph.\n\nAnd another.", "notes.txt").items] == [
        "Just one paragraph.\nAnd another."]


def test_kind_from_suffix_or_content():
    assert detect_kind("a.SRT", "") == "srt" and detect_kind("a.markdown", "") == "text"
    assert detect_kind("upload", "WEBVTT\n") == "vtt" and detect_kind("upload", '{"text": 1}') == "jsonl"
    assert detect_kind("upload", "1\n00:00:01,000 --> 00:00:02,000\nx") == "srt"
    assert detect_kind("upload", "plain words") == "text"


@pytest.mark.parametrize("name", ["../x", "a/../../b", "/etc/x", "C:/x", "a\\..\\..\\b", "", ".hidden", "a//b",
                                  "x" * 65, "a/b/c/d/e", "ends.", "CON", "a/NUL.txt"])
def test_output_names_that_leave_or_misbehave_are_refused(name):
    with pytest.raises(InputError):
        check_output_name(name)


def test_good_output_names_are_kept():
    assert check_output_name("chapter 01/intro-a.b") == "chapter 01/intro-a.b"
    assert check_output_name("a\\b") == "a/b"


@pytest.mark.parametrize("natural, slot, status, target", [
    (2.0, 2.0, "fit", 2.0), (2.1, 2.0, "fit", 2.0), (2.4, 2.0, "squeezed", 2.0), (1.7, 2.0, "slowed", 2.0),
    (3.0, 2.0, "overran", 3.0 / PACE_RANGE[1]), (1.0, 2.0, "short", 1.0 / PACE_RANGE[0]),
    (2.5, 2.0, "squeezed", 2.0), (1.6, 2.0, "slowed", 2.0)])
def test_cue_fitting_rule(natural, slot, status, target):
    fit = fit_cue(natural, slot)
    assert (fit.status, fit.target) == (status, pytest.approx(target))
    assert PACE_RANGE[0] - 1e-9 <= fit.pace <= PACE_RANGE[1] + 1e-9
    assert fit.overrun == pytest.approx(max(target - slot, 0.0))


def test_timed_track_places_every_cue_and_mixes_overlaps():
    rate = 100
    a, b = np.full(50, 0.25, np.float32), np.full(100, 0.5, np.float32)
    track = timed_track([(0.1, a), (0.4, b)], rate, 2.0)
    assert len(track) == 200
    assert np.all(track[:10] == 0) and np.all(track[10:40] == 0.25) and np.all(track[40:60] == 0.75)
    assert np.all(track[60:140] == 0.5) and np.all(track[140:] == 0)
    assert len(timed_track([(1.9, b)], rate, 2.0)) == 290            # an overrun lengthens the track
    assert np.max(timed_track([(0, b), (0, b), (0, b)], rate, 1)) == 1.0   # the sum is clipped
    book = chapter_track([a, b], rate)
    assert len(book) == 50 + 150 + 100 and np.all(book[50:200] == 0)


def test_long_chapters_are_cut_into_request_sized_parts():
    text = "\n".join(["Sentence number one. " * 30] * 5)
    parts = text_parts(text, limit=700)
    assert all(len(p) <= 700 for p in parts) and len(parts) >= 5
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())
    assert text_parts("word " * 50, limit=32) and all(len(p) <= 32 for p in text_parts("word " * 50, limit=32))


def test_voice_map_parsing():
    assert parse_voice_map(["ALICE=anna, Bob = ben", "Dr Who=the doctor"]) == {
        "ALICE": "anna", "Bob": "ben", "Dr Who": "the doctor"}
    for bad in (["ALICE"], ["=anna"], ["A=../x"], ["A=x,a=y"]):
        with pytest.raises(InputError):
            parse_voice_map(bad)


def test_job_items_travel_whole_and_keys_follow_content(tmp_path):
    """JobItems pickle (a cluster executor ships them) and their keys change with what shapes the audio only."""
    import pickle

    from cosyvoice_onnx.dubbing import EngineSpec, JobSettings, plan_job
    from cosyvoice_onnx.glossary import Glossary, GlossaryEntry

    clip = tmp_path / "me.wav"
    clip.write_bytes(b"RIFF-not-decoded-here")
    glossary = Glossary((GlossaryEntry("SQL", "sequel", "respell"),))
    base = dict(voices_dir=str(tmp_path / "voices"), prompt_wav=str(clip), prompt_text="hi", glossary=glossary)

    def keys(rows, **overrides):
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        job = plan_job(parse_input(data, "j.jsonl"), JobSettings(EngineSpec(tmp_path), **{**base, **overrides}))
        assert pickle.loads(pickle.dumps(job.items)) == job.items
        return [item.key for item in job.items]

    one, renamed, reseeded = keys([{"text": "a"}, {"text": "a", "name": "other"}, {"text": "a", "seed": 1}])
    assert one == renamed != reseeded
    assert keys([{"text": "a"}], seed=0) == [one] != keys([{"text": "a"}], join="silence")
    assert keys([{"text": "a"}], glossary=None) != [one]
    clip.write_bytes(b"RIFF-another-clip")
    assert keys([{"text": "a"}]) != [one]


def test_a_chapter_longer_than_an_item_is_split_between_paragraphs():
    from cosyvoice_onnx.dubbing.read_text import MAX_ITEM_CHARS, read_text

    paragraph = "word " * (MAX_ITEM_CHARS // 25)          # five paragraphs make one item
    text = "# One\n\n" + "\n\n".join([paragraph] * 12) + "\n\n" + "x" * (MAX_ITEM_CHARS + 1) + "\n\n# Two\n\nEnd.\n"
    parsed = read_text(text)
    assert [i.name for i in parsed.items] == ["chapter-001", "chapter-001-2", "chapter-001-3", "chapter-002"]
    assert all(len(i.text) <= MAX_ITEM_CHARS for i in parsed.items)
    assert "".join(i.text for i in parsed.items[:3]).count("word") == 12 * (MAX_ITEM_CHARS // 25)
    [problem] = parsed.problems
    assert problem.line == 27 and f"at most {MAX_ITEM_CHARS}" in problem.reason
