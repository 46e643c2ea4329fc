"""One engine, several requests at once: each request's randomness is its own, so threads reproduce solo runs."""

import threading

import numpy as np
import pytest

from cosyvoice_onnx.releases import RELEASES

TRANSCRIPT = "hello there this is a test"
TEXT = "Hello world, this is a tiny test. And a second sentence follows it here."


@pytest.fixture(scope="module", params=sorted(RELEASES))
def exported_model(request, tmp_path_factory):
    from cosyvoice_onnx.export.exporter import export_model
    from cosyvoice_onnx.tools.tiny import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("models") / f"tiny-v{request.param}", version=request.param,
                            seed=0)
    export_model(model, precisions="fp32", parity=False, progress=lambda _: None)
    return model


def _run(engine, voice, seed: int, stream: bool) -> np.ndarray:
    if stream:
        chunks = list(engine.synthesize(TEXT, voice=voice, seed=seed, max_len=45, stream=True))
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return engine.synthesize(TEXT, voice=voice, seed=seed, max_len=45)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_two_threads_on_one_engine_give_each_seeds_solo_audio(exported_model, prompt_wav, backend):
    from cosyvoice_onnx import CosyVoice

    engine = CosyVoice(exported_model, backend=backend)
    voice = engine.prompt_from_audio(prompt_wav, TRANSCRIPT)
    jobs = [(1, True), (2, True), (3, False), (4, False)]
    solo = {job: _run(engine, voice, *job) for job in jobs}
    assert not np.array_equal(solo[(1, True)][:1000], solo[(2, True)][:1000]), "the seeds must make different audio"
    together: dict = {}
    start = threading.Barrier(len(jobs))
    errors = []

    def worker(job):
        try:
            start.wait()
            together[job] = _run(engine, voice, *job)
        except Exception as exc:  # reported below with the job that raised it
            errors.append((job, exc))

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for job in jobs:
        np.testing.assert_array_equal(together[job], solo[job], err_msg=f"seed {job[0]}, stream {job[1]}")
