"""`batch --ray`: the job runner's items on an actor pool on a local two-CPU Ray cluster. A Ray run makes the
files, manifest, track and report of a local run item by item (same seeds -> identical audio), through the
command and through `run_job`; a worker killed mid-job costs no item; an item past its time limit fails alone
and a model that does not load is one line; every wait is bounded and the cluster is shut down afterwards."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cosyvoice_onnx.cli import main
from cosyvoice_onnx.dubbing import EngineSpec, JobSettings, LocalExecutor, parse_input, plan_job, run_job

TRANSCRIPT = "This is the prompt clip."
JSONL = "".join(json.dumps(row) + "\n" for row in [
    {"text": "First line.", "duration": 1.0},
    {"text": "Its own seed.", "seed": 11, "duration": 1.2, "name": "part/two"},
    {"text": "Nobody saved me.", "voice": "nobody"},
    "not an object",
    {"text": "Fifth line.", "seed": 4, "duration": 0.8},
    {"text": "One more.", "seed": 9, "duration": 0.9}])
SRT = """1
00:00:00,200 --> 00:00:01,400
Good morning.

2
00:00:01,600 --> 00:00:02,900
It was a long night.

3
00:00:03,000 --> 00:00:02,500
Backwards.

4
00:00:04,000 --> 00:00:05,200
See you soon.
"""
INPUTS = {"jsonl": ("job.jsonl", JSONL), "srt": ("film.srt", SRT)}
ROOT = str(Path(__file__).resolve().parent.parent)       # the checkout whose package the subprocess runs


@pytest.fixture(scope="module")
def voices(tiny_engine, prompt_wav, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-ray-voices")
    tiny_engine.voice_store(root).save("anna", tiny_engine.prompt_from_audio(prompt_wav, TRANSCRIPT))
    return root


def _job(kind, folder, tiny_model_dir, voices, **settings):
    name, text = INPUTS[kind]
    source = folder / name
    source.write_text(text, encoding="utf-8")
    return source, plan_job(parse_input(source.read_bytes(), name),
                            JobSettings(EngineSpec(tiny_model_dir), voices_dir=str(voices), voice="anna",
                                        base_dir=str(folder), **settings))


def _manifest(out) -> list[dict]:
    """The manifest without the timing (rtf), which no two runs share."""
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "rtf"} for row in rows]


def _same_outputs(local, remote) -> None:
    rows = _manifest(local)
    assert rows == _manifest(remote)
    made = [row for row in rows if not row["error"]]
    assert len(made) >= 3 and len(made) < len(rows)           # items made, and failures reported the same way
    for row in made:                                          # item by item: the same samples
        assert (local / row["file"]).read_bytes() == (remote / row["file"]).read_bytes(), row["item"]
    for extra in ("track.wav", "book.wav"):
        assert (local / extra).exists() == (remote / extra).exists()
        if (local / extra).exists():
            assert (local / extra).read_bytes() == (remote / extra).read_bytes()
    summary = lambda out: (out / "report.txt").read_text().splitlines()[1:]   # noqa: E731 (line 1 has the time)
    assert summary(local) == summary(remote)


def test_the_command_in_a_fresh_process_starts_and_stops_its_own_ray(tiny_engine, tiny_model_dir, voices, tmp_path):
    """`batch --ray` with no cluster around: a private Ray for the job, stopped when the command returns (first in
    this module, so it never runs beside the module's own cluster)."""
    source, job = _job("jsonl", tmp_path, tiny_model_dir, voices)
    run_job(job, tmp_path / "local", LocalExecutor(tiny_engine))
    done = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "batch", str(source), "--out", str(tmp_path / "ray"),
                           "--model", str(tiny_model_dir), "--voices-dir", str(voices), "--voice", "anna", "--ray",
                           "--workers", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])})
    assert done.returncode == 1, done.stderr[-2000:]                 # the two bad lines, as locally
    _same_outputs(tmp_path / "local", tmp_path / "ray")
    assert "Started a local Ray instance" in done.stderr


@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_the_batch_command_on_ray_makes_the_local_runs_outputs(kind, ray_cluster, tiny_engine, tiny_model_dir,
                                                                voices, tmp_path):
    source, job = _job(kind, tmp_path, tiny_model_dir, voices)
    run_job(job, tmp_path / "local", LocalExecutor(tiny_engine))
    code = main(["batch", str(source), "--out", str(tmp_path / "ray"), "--model", str(tiny_model_dir),
                 "--voices-dir", str(voices), "--voice", "anna", "--ray", "--workers", "2"])
    assert code == 1                                # some items failed (on purpose), the rest were made
    _same_outputs(tmp_path / "local", tmp_path / "ray")


def test_run_job_on_the_ray_executor_uses_both_workers_and_resumes(ray_cluster, tiny_engine, tiny_model_dir,
                                                                   voices, tmp_path):
    from cosyvoice_onnx.scale.batch_ray import RayExecutor, RaySettings

    _, job = _job("jsonl", tmp_path, tiny_model_dir, voices)
    run_job(job, tmp_path / "local", LocalExecutor(tiny_engine))
    executor = RayExecutor(job.engine, RaySettings(workers=2))
    report = run_job(job, tmp_path / "ray", executor)
    _same_outputs(tmp_path / "local", tmp_path / "ray")
    assert sum(executor.served.values()) == len(job.items) and len(executor.served) == 2
    assert (executor.retried, executor.lost) == (0, 0)
    again = RayExecutor(job.engine, RaySettings(workers=2))
    rerun = run_job(job, tmp_path / "ray", again)        # everything made is resumed, nothing sent to Ray
    assert not again.served and len(rerun.resumed) == len(report.results) - len(report.failed)


def test_a_worker_killed_mid_job_costs_no_item(ray_cluster, tiny_engine, tiny_model_dir, voices, tmp_path):
    from cosyvoice_onnx.scale.batch_ray import RayExecutor, RaySettings

    ray, _ = ray_cluster
    _, job = _job("jsonl", tmp_path, tiny_model_dir, voices)
    items = job.items * 2                                     # enough left after the kill to need the lost worker
    expected = {outcome.result.name: outcome for outcome in LocalExecutor(tiny_engine).run(job.items)}
    executor = RayExecutor(job.engine, RaySettings(workers=2))
    outcomes = []
    for outcome in executor.run(items):
        if not outcomes:          # a worker in the middle of an item (or, if none is, any): its items go elsewhere
            busy = [task.worker for task in executor.pool.running.values()] or executor.pool.workers
            ray.kill(busy[0], no_restart=True)
        outcomes.append(outcome)
    assert len(outcomes) == len(items)
    for outcome in outcomes:
        want = expected[outcome.result.name]
        assert outcome.result.error == want.result.error
        if want.audio is not None:
            assert outcome.audio.tobytes() == want.audio.tobytes()
    assert executor.lost >= 1 and executor.retried >= 1


def test_an_item_past_its_time_limit_fails_alone_and_its_worker_is_replaced(ray_cluster, tiny_model_dir, voices,
                                                                             tmp_path):
    from cosyvoice_onnx.scale.batch_ray import RayExecutor, RaySettings

    _, job = _job("jsonl", tmp_path, tiny_model_dir, voices)
    executor = RayExecutor(job.engine, RaySettings(workers=2, item_timeout_s=0.001))
    report = run_job(job, tmp_path / "out", executor)
    late = [r for r in report.results if "item time limit" in r.error]
    assert len(late) == len(job.items) and executor.lost >= len(job.items)
    assert not (tmp_path / "out" / "items").exists()                 # nothing half-made was written
    assert any(r.error.startswith("unknown voice 'nobody'") for r in report.results)   # planning errors as ever


def test_a_model_that_does_not_load_on_the_workers_is_one_line(ray_cluster, tiny_model_dir, voices, tmp_path):
    from cosyvoice_onnx.errors import CosyVoiceError
    from cosyvoice_onnx.scale.batch_ray import RayExecutor, RaySettings

    _, job = _job("jsonl", tmp_path, tiny_model_dir, voices)
    missing = EngineSpec(tmp_path / "not-there")
    with pytest.raises(CosyVoiceError, match="a Ray worker could not load the model: .*not-there") as caught:
        list(RayExecutor(missing, RaySettings(workers=1, start_timeout_s=120)).run(job.items))
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--workers", "2"], "--workers needs --ray"),
    (["--item-timeout", "5"], "--item-timeout needs --ray"),
    (["--ray", "--workers", "0"], "--workers must be at least 1"),
    (["--ray", "--worker-cpus", "-1"], "--worker-cpus and --worker-gpus at least 0"),
    (["--ray", "--item-timeout", "0"], "--item-timeout must be a positive number")])
def test_bad_ray_options_are_usage_errors(argv, message, tiny_model_dir, voices, tmp_path, capsys):
    source, _ = _job("jsonl", tmp_path, tiny_model_dir, voices)
    assert main(["batch", str(source), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                 "--voices-dir", str(voices), "--voice", "anna", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and not (tmp_path / "out" / "items").exists()


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch, tiny_model_dir, voices, tmp_path, capsys):
    source, _ = _job("jsonl", tmp_path, tiny_model_dir, voices)
    monkeypatch.setitem(sys.modules, "ray", None)       # `import ray` now fails as if it were not installed
    assert main(["batch", str(source), "--out", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                 "--voices-dir", str(voices), "--voice", "anna", "--ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "pip install 'cosyvoice-onnx[ray]'" in err[-1]

