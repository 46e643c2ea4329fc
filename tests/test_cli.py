"""The command line as a user runs it: make a tiny model, synthesize, get clear errors."""

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from cosyvoice_onnx import cli
from cosyvoice_onnx.cli_args import writable_problem


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cosyvoice_onnx", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def test_make_tiny_model_then_synth_both_modes(tmp_path):
    model, prompt_wav = tmp_path / "tiny", tmp_path / "prompt.wav"
    made = run_cli("make-tiny-model", model, "--seed", "1")
    assert made.returncode == 0, made.stderr
    assert (model / "cosyvoice3.yaml").exists()
    assert run_cli("make-test-clip", prompt_wav).returncode == 0
    assert sf.info(str(prompt_wav)).duration == 4.0
    for extra, out in (([], tmp_path / "a.wav"), (["--stream"], tmp_path / "b.wav")):
        res = run_cli("synth", "--model", model, "--prompt-wav", prompt_wav, "--prompt-text", "a test clip",
                      "--text", "Hello there.", "--seed", "4", "--out", out, *extra)
        assert res.returncode == 0, res.stderr
        audio, rate = sf.read(out)
        assert rate == 24000 and len(audio) > 0 and len(audio) % 960 == 0
        assert "wrote" in res.stdout
    assert "first audio after" in res.stderr


def test_synth_with_missing_model_prints_one_clear_error(tmp_path, prompt_wav):
    res = run_cli("synth", "--model", tmp_path / "missing", "--prompt-wav", prompt_wav, "--text", "Hi.",
                  "--out", tmp_path / "x.wav")
    assert res.returncode == 1
    assert "model folder not found" in res.stderr and "Traceback" not in res.stderr


def test_synth_with_non_audio_prompt(tiny_model_dir, tmp_path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio")
    res = run_cli("synth", "--model", tiny_model_dir, "--prompt-wav", bogus, "--text", "Hi.", "--out", tmp_path / "x.wav")
    assert res.returncode == 2 and "notes.wav" in res.stderr and "Traceback" not in res.stderr


def test_info_describes_the_folder(tiny_model_dir):
    res = run_cli("info", "--model", tiny_model_dir)
    assert res.returncode == 0 and "CosyVoice3" in res.stdout and "llm.pt" in res.stdout


# ---------------------------------------------------------------- errors: one line, distinct exit codes


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def unwritable_dir():
    """A folder even root cannot create files in (permission bits do not stop root)."""
    folder = Path("/sys")
    if writable_problem(folder) is None:
        pytest.skip("no unwritable folder on this system")
    return folder


SYNTH = "synth --model {tmp}/no-such-model --text Hi. --out {tmp}/x.wav"   # usage errors need no model


@pytest.mark.parametrize("argv,expected", [
    (SYNTH + " --seed 18446744073709551616", "--seed: seed 18446744073709551616 is outside 0 .. 2**64-1"),
    (SYNTH + " --seed -1", "--seed"),
    (SYNTH + " --seed 1.5", "--seed: '1.5' is not a whole number"),
    (SYNTH + " --speed nan", "--speed: must be a number between 0.5 and 2, got nan"),
    (SYNTH + " --speed 3", "--speed"),
    (SYNTH + " --duration -1", "--duration: must be a number greater than 0, got -1"),
    (SYNTH + " --duration inf", "--duration"),
    (SYNTH + " --mix 2", "--mix"),
    (SYNTH + " --join-ms -5", "--join-ms"),
    ("synth --model {tmp}/m --text Hi. --out {tmp}/nowhere/x.wav", "folder {tmp}/nowhere does not exist"),
    ("synth --model {tmp}/m --text Hi. --out {tmp}", "{tmp} is a folder; give a file name"),
    ("synth --model {tmp}/m --text Hi.", "required: --out"),
    ("make-test-clip {tmp}/c.wav --seconds -1", "--seconds"),
    ("make-test-clip {tmp}/c.wav --seconds nan", "--seconds"),
    ("make-test-clip {tmp}/nowhere/c.wav", "does not exist"),
    ("make-tiny-model {tmp}/m --seed 18446744073709551616", "--seed"),
    ("make-tiny-model {tmp}/file.txt", "{tmp}/file.txt is a file, not a folder"),
    ("parity --model {tmp}/m --max-tokens 0", "--max-tokens: must be a whole number from 1 to"),
    ("parity --model {tmp}/m --json {tmp}/nowhere/r.json", "--json"),
    ("bench --threads 0", "--threads"),
    ("bench --repeats 0", "--repeats"),
    ("bench --json {tmp}", "is a folder"),
    ("download --name bogus", "--name: invalid choice"),
    ("voices list --voices-dir {tmp}/file.txt", "is a file, not a folder"),
    ("export --model {tmp}/m --out {tmp}/file.txt", "--out: {tmp}/file.txt is a file, not a folder"),
    ("pronounce", "give --text, --pinyin or --arpabet"),
    ("no-such-command", "invalid choice"),
])
def test_usage_errors_are_one_line_with_status_2(tmp_path, capsys, argv, expected):
    (tmp_path / "file.txt").write_text("not a folder")
    assert cli.main(argv.format(tmp=tmp_path).split()) == 2
    assert expected.format(tmp=tmp_path) in one_error_line(capsys)


def test_malformed_backend_spec_is_a_usage_error(tiny_model_dir, prompt_wav, tmp_path, capsys):
    code = cli.main(["synth", "--model", str(tiny_model_dir), "--prompt-wav", str(prompt_wav), "--text", "Hi.",
                     "--out", str(tmp_path / "x.wav"), "--backend", "lm=onnx,bogus"])
    assert code == 2
    assert "'bogus' is not stage=backend" in one_error_line(capsys)
    assert not (tmp_path / "x.wav").exists()


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, capsys, monkeypatch, unwritable_dir):
    monkeypatch.setattr("cosyvoice_onnx.export.exporter.export_model", lambda *a, **k: pytest.fail("exported"))
    assert cli.main(["synth", "--model", str(tmp_path), "--text", "Hi.", "--out", str(unwritable_dir / "x.wav")]) == 2
    assert f"cannot write in folder {unwritable_dir}" in one_error_line(capsys)
    assert cli.main(["export", "--model", str(tmp_path), "--out", str(unwritable_dir / "onnx")]) == 2
    assert f"cannot write in folder {unwritable_dir}" in one_error_line(capsys)


def test_export_default_folder_is_checked_first(tmp_path, capsys, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "onnx").write_text("a file where the export folder would go")
    monkeypatch.setattr("cosyvoice_onnx.export.exporter.export_model", lambda *a, **k: pytest.fail("exported"))
    assert cli.main(["export", "--model", str(model)]) == 2
    assert "onnx is a file, not a folder" in one_error_line(capsys)


@pytest.mark.parametrize("argv", [
    ["synth", "--model", "{missing}", "--text", "Hi.", "--out", "{tmp}/x.wav"],
    ["info", "--model", "{missing}"],
    ["export", "--model", "{missing}", "--no-parity"],
    ["voices", "save", "me", "--model", "{missing}", "--prompt-wav", "{tmp}/p.wav", "--voices-dir", "{tmp}/v"],
])
def test_runtime_errors_are_one_line_with_status_1(tmp_path, capsys, argv):
    argv = [a.format(missing=tmp_path / "no-such-model", tmp=tmp_path) for a in argv]
    assert cli.main(argv) == 1
    assert "model folder not found" in one_error_line(capsys)


def test_bad_prompt_audio_is_a_usage_error(tiny_model_dir, tmp_path, capsys):
    for prompt, expected in ((tmp_path, "is not a file"), (tmp_path / "missing.wav", "not found")):
        code = cli.main(["synth", "--model", str(tiny_model_dir), "--prompt-wav", str(prompt), "--text", "Hi.",
                         "--out", str(tmp_path / "x.wav")])
        assert code == 2 and expected in one_error_line(capsys)


def failing_tiny_model(monkeypatch, exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr("cosyvoice_onnx.tools.tiny.make_tiny_model", fail)


@pytest.mark.parametrize("exc,code,expected", [
    (ZeroDivisionError("boom"), 1,
     "error: internal error (ZeroDivisionError: boom); rerun with --debug for the traceback"),
    (ValueError("two\nlines"), 1, "error: internal error (ValueError: two; lines); rerun with --debug"),
    (MemoryError(), 1, "error: out of memory; try a shorter text"),
    (KeyboardInterrupt(), 130, "error: interrupted"),
    (PermissionError(13, "Permission denied", "/x/y.onnx"), 1, "error: Permission denied: /x/y.onnx"),
])
def test_unexpected_failures_are_one_line(tmp_path, capsys, monkeypatch, exc, code, expected):
    failing_tiny_model(monkeypatch, exc)
    assert cli.main(["make-tiny-model", str(tmp_path / "m")]) == code
    assert one_error_line(capsys).startswith(expected)


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch, where):
    failing_tiny_model(monkeypatch, ZeroDivisionError("boom"))
    argv = ["make-tiny-model", str(tmp_path / "m")]
    argv = {"before": ["--debug", *argv], "after": [*argv, "--debug"], "env": argv}[where]
    if where == "env":
        monkeypatch.setenv("COSYVOICE_DEBUG", "1")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: boom" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error (ZeroDivisionError: boom)")


def test_no_traceback_from_the_real_command(tmp_path):
    res = run_cli("synth", "--model", tmp_path, "--text", "Hi.", "--seed", 2 ** 64, "--out", tmp_path / "x.wav")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        "error: argument --seed: seed 18446744073709551616 is outside 0 .. 2**64-1 (18446744073709551615) "
        "(see `cosyvoice-onnx synth --help`)"]
    res = run_cli("make-test-clip", tmp_path / "nowhere" / "c.wav")
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.startswith("error: ")


def test_a_file_given_as_the_model_folder_is_named_as_a_file(tmp_path, capsys):
    not_a_folder = tmp_path / "cosyvoice3.yaml"
    not_a_folder.write_text("llm: {}\n")
    assert cli.main(["info", "--model", str(not_a_folder)]) == 1
    assert "is a file; --model takes the model folder" in one_error_line(capsys)
