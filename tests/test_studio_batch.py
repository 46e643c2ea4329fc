"""The studio's Batch tab through gradio_client: a subtitle file run with a saved voice, resume, one item played,
the ZIP, and bad uploads refused with one line."""

import json
import zipfile

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from cosyvoice_onnx.studio.batch_job import MAX_ITEMS  # noqa: E402
from test_studio_api import launch  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]
SRT = """1
00:00:00,500 --> 00:00:02,000
ALICE: Good morning.

2
00:00:02,000 --> 00:00:01,000
Backwards.

3
00:00:03,000 --> 00:00:04,500
Hello again.
"""


@pytest.fixture(scope="module")
def server(tiny_model_dir, tiny_engine, prompt_wav, tmp_path_factory, free_port):
    data_dir = tmp_path_factory.mktemp("batch-studio")
    tiny_engine.voice_store(data_dir / "voices").save("anna", tiny_engine.prompt_from_audio(
        prompt_wav, "This is the prompt clip."))
    demo, url, studio = launch(tiny_model_dir, data_dir, free_port())
    yield Client(url, verbose=False), data_dir
    demo.close()


def run(client, path, **kwargs):
    return client.predict(upload=handle_file(str(path)), saved_voice="anna", api_name="/batch", **kwargs)


def test_batch_endpoint_runs_a_subtitle_file(server, tmp_path):
    client, data_dir = server
    assert {"/batch", "/batch_item"} <= set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    srt = tmp_path / "film.srt"
    srt.write_text(SRT, encoding="utf-8")
    report, job_id, item, archive, track = run(client, srt, voice_map="ALICE=anna")
    assert "3 item(s): 2 done (0 resumed), 1 failed" in report and "line 6 (cue-0002): failed" in report
    assert item["value"] == "cue-0001" and [c[0] for c in item["choices"]] == ["cue-0001", "cue-0003"]
    assert track.endswith(".wav")
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
        manifest = [json.loads(line) for line in z.read("manifest.jsonl").decode().splitlines()]
    assert {"items/cue-0001.wav", "items/cue-0003.wav", "track.wav", "manifest.csv", "report.txt"} <= names
    assert [(m["item"], bool(m["error"])) for m in manifest] == [("cue-0001", False), ("cue-0002", True),
                                                                 ("cue-0003", False)]
    played = client.predict(job_id, "cue-0003", api_name="/batch_item")
    assert open(played, "rb").read() == (data_dir / "batch" / job_id / "items" / "cue-0003.wav").read_bytes()
    again = run(client, srt, voice_map="ALICE=anna")
    assert again[1] == job_id and "2 done (2 resumed)" in again[0]
    with pytest.raises(AppError, match="no finished item"):
        client.predict(job_id, "cue-0002", api_name="/batch_item")
    with pytest.raises(AppError, match="no such batch job"):
        client.predict("../../etc", "cue-0001", api_name="/batch_item")


@pytest.mark.parametrize("case, match", [
    ("binary", "binary file|not text"), ("many", f"at most {MAX_ITEMS} are run"),
    ("voice", "unknown voice 'nobody'"), ("none", "no file")])
def test_bad_batch_uploads_are_one_line(server, tmp_path, prompt_wav, case, match):
    client, _ = server
    path = tmp_path / ("in.srt" if case != "many" else "in.jsonl")
    if case == "binary":
        path.write_bytes(prompt_wav.read_bytes())
    elif case == "many":
        path.write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(MAX_ITEMS + 1)))
    else:
        path.write_text(SRT)
    kwargs = {"voice_map": "ALICE=nobody"} if case == "voice" else {}
    if case == "none":
        with pytest.raises(AppError, match=match):
            client.predict(upload=None, saved_voice="anna", api_name="/batch")
        return
    with pytest.raises(AppError, match=match):
        run(client, path, **kwargs)


def test_jsonl_clip_paths_are_refused_per_line(server, tmp_path):
    client, _ = server
    path = tmp_path / "job.jsonl"
    path.write_text(json.dumps({"text": "x", "prompt_wav": "/etc/hostname"}) + "\n"
                    + json.dumps({"text": "Fine.", "duration": 1.0}) + "\n")
    report = run(client, path)[0]
    assert "line 1 (line-0001): failed: prompt_wav paths are not accepted here" in report
    assert "2 item(s): 1 done" in report


def test_only_the_newest_job_folders_are_kept(tmp_path):
    import os

    from cosyvoice_onnx.studio.batch_job import MAX_JOBS, BatchJobs

    jobs = BatchJobs.__new__(BatchJobs)          # the folder logic alone, no studio needed
    jobs.root = tmp_path
    for age in range(MAX_JOBS + 3):
        folder = tmp_path / f"job{age:02d}"
        folder.mkdir()
        (tmp_path / f"job{age:02d}.zip").write_bytes(b"zip")
        os.utime(folder, (1000 + age, 1000 + age))
    jobs._prune(keep="job00")                    # the running job stays, however old
    kept = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert kept == ["job00"] + [f"job{age:02d}" for age in range(4, MAX_JOBS + 3)]
    assert sorted(p.name for p in tmp_path.glob("*.zip")) == [f"{name}.zip" for name in kept]
