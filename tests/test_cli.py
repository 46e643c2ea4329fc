"""The command line as a user runs it: make a tiny model, synthesize, get clear errors."""

import subprocess
import sys

import soundfile as sf


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
    assert res.returncode == 2
    assert "model folder not found" in res.stderr and "Traceback" not in res.stderr


def test_synth_with_non_audio_prompt(tiny_model_dir, tmp_path):
    bogus = tmp_path / "notes.wav"
    bogus.write_text("this is not audio")
    res = run_cli("synth", "--model", tiny_model_dir, "--prompt-wav", bogus, "--text", "Hi.", "--out", tmp_path / "x.wav")
    assert res.returncode == 2 and "notes.wav" in res.stderr and "Traceback" not in res.stderr


def test_info_describes_the_folder(tiny_model_dir):
    res = run_cli("info", "--model", tiny_model_dir)
    assert res.returncode == 0 and "CosyVoice3" in res.stdout and "llm.pt" in res.stdout
