"""Many sequential requests against a studio started by `cosyvoice-onnx studio`: the file cache stays bounded.

40 requests by default (a minute on the tiny model); STUDIO_SOAK_REQUESTS=500 runs a longer soak, which also
checks that the server's memory (RSS, printed as it goes) levels off.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

REQUESTS = int(os.environ.get("STUDIO_SOAK_REQUESTS", "40"))
CACHE_SECONDS = 3


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@pytest.fixture
def studio(tiny_model_dir, tmp_path, free_port):
    cache = tmp_path / "gradio-cache"
    port = free_port()
    env = {**os.environ, "GRADIO_TEMP_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "cosyvoice_onnx", "studio", "--model", str(tiny_model_dir), "--port", str(port),
         "--data-dir", str(tmp_path / "data"), "--models-dir", str(tmp_path / "models"),
         "--cache-minutes", str(CACHE_SECONDS / 60)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):
            if server.poll() is not None:
                pytest.fail(f"the studio stopped: {server.stdout.read()}")
            try:
                client = Client(url, verbose=False)
                break
            except Exception:   # noqa: BLE001 - not listening yet
                time.sleep(0.5)
        else:
            pytest.fail("the studio did not start within 120 s")
        yield client, server.pid, cache
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_cache_stays_bounded_over_many_requests(studio, prompt_wav):
    client, pid, cache = studio
    per_request, rss = [], {}
    for i in range(REQUESTS):
        before = folder_bytes(cache)
        # Different seeds give different clips, so Gradio cannot serve one cached file for all of them.
        try:
            client.predict("Hello there, this is the studio speaking.", handle_file(str(prompt_wav)),
                           "This is the prompt clip.", seed=i, api_name="/zero_shot")
        except AppError as exc:   # random weights: a rare seed makes no speech tokens, a message, not a failure
            assert "no speech" in str(exc)
        per_request.append(folder_bytes(cache) - before)
        if (i + 1) % max(10, REQUESTS // 8) == 0 or i + 1 == REQUESTS:
            rss[i + 1] = rss_mb(pid)
    grown = folder_bytes(cache)
    time.sleep(2 * CACHE_SECONDS + 1)   # one cleanup round after every file has aged
    left = folder_bytes(cache)
    print(f"\ncache: {grown / 1e6:.2f} MB after {REQUESTS} requests, {left / 1e6:.2f} MB after cleanup; "
          f"RSS MB by request: {', '.join(f'{n}: {mb:.0f}' for n, mb in rss.items())}")
    # Results of every request did land in the cache (the bound is not vacuous) ...
    assert max(per_request) > 10_000
    # ... and a cleanup leaves at most the few files still in use (the uploaded prompt), not one per request.
    assert left < 3 * max(per_request) and left < grown / 4
    if REQUESTS >= 200:
        # Memory levels off once the allocator hands freed blocks back (memory.py): measured 0.1 MB per request
        # over requests 100-200 with it, 0.5 without. Too noisy to judge over the suite's 40 requests.
        half = min(rss, key=lambda n: abs(n - REQUESTS // 2))
        assert (rss[REQUESTS] - rss[half]) / (REQUESTS - half) < 0.3, rss
