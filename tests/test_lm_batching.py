"""Batched LM decode across concurrent requests (lm_batching.py): each request gets the tokens it gets alone."""

import gc
import threading

import numpy as np
import pytest

from cosyvoice_onnx.errors import ExportError, InputError
from cosyvoice_onnx.releases import RELEASES
from cosyvoice_onnx.sampling import make_sampler

BACKENDS = ("torch", "onnx")
# (seed, text length, max_len): different seeds, prompts and lengths, one that stops early on its max_len.
JOBS = [(1, 5, None), (2, 9, None), (3, 3, 4), (4, 12, None)]
# Long enough that the requests' steps overlap: the scheduler then waits for every active request's step.
PATIENT_S = 0.5


@pytest.fixture(scope="module", params=sorted(RELEASES))
def model(request, tmp_path_factory):
    """A tiny model of each release with its fp32 export and the batched decode graph beside it."""
    from cosyvoice_onnx.export.exporter import export_model
    from cosyvoice_onnx.export.lm import export_batch_decode
    from cosyvoice_onnx.tools.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("models") / f"tiny-v{request.param}", version=request.param,
                             seed=0)
    export_model(folder, precisions="fp32", parity=False, progress=lambda _: None)
    export_batch_decode(folder, progress=lambda _: None)
    return folder


@pytest.fixture(scope="module")
def engines(model):
    """engines(backend) -> (plain engine, engine with batch_decode=4), loaded once per backend."""
    from cosyvoice_onnx import CosyVoice

    loaded = {}

    def of(backend):
        if backend not in loaded:
            batched = CosyVoice(model, backend=backend, batch_decode=4)
            batched.stages.lm.max_wait_s = PATIENT_S
            loaded[backend] = (CosyVoice(model, backend=backend), batched)
        return loaded[backend]
    return of


def _inputs(engine, seed: int, length: int):
    rng = np.random.default_rng(seed)
    text = [int(t) for t in rng.integers(10, 200, length)]
    if engine.cfg.requires_endofprompt:
        text.append(engine.end_of_prompt_id)
    return text, [], [int(t) for t in rng.integers(0, 100, 7)]


def _tokens(engine, seed, length, max_len, lm=None, sampler=None):
    text, prompt_text, speech = _inputs(engine, seed, length)
    options = {} if max_len is None else {"max_len": max_len}
    return engine.generate_tokens(text, prompt_text, speech, sampler or make_sampler("torch", seed, engine.cfg.llm),
                                  lm=lm, **options)


def _together(fn, jobs):
    """fn(job) for every job on its own thread, all started at once -> ({job: result}, [(job, error)])."""
    results, errors = {}, []
    start = threading.Barrier(len(jobs))

    def worker(job):
        try:
            start.wait()
            results[job] = fn(job)
        except Exception as exc:  # reported by the caller with the job that raised it
            # Without its traceback: the frames in it would keep the failed request's cache (and slot) alive.
            errors.append((job, exc.with_traceback(None)))

    threads = [threading.Thread(target=worker, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a batched request hung"
    return results, errors


def _settled(lm) -> None:
    """Every request has left the scheduler and (ONNX) given its slot back."""
    gc.collect()
    assert lm.active == 0
    from cosyvoice_onnx.onnx_backend.lm_batch import OnnxBatchedLM

    if isinstance(lm.lm, OnnxBatchedLM):
        assert lm.lm.free_slots() == lm.lm.slots


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_requests_get_their_solo_tokens(engines, backend):
    plain, batched = engines(backend)
    solo = {job: _tokens(plain, *job) for job in JOBS}
    assert len({tuple(tokens) for tokens in solo.values()}) == len(JOBS), "the jobs must differ"
    assert len(solo[JOBS[2]]) <= 4
    lm = batched.stages.lm
    before = sum(count for size, count in lm.batch_sizes.items() if size > 1)
    together, errors = _together(lambda job: _tokens(batched, *job), JOBS)
    assert not errors, errors
    for job in JOBS:
        assert together[job] == solo[job], f"job {job}"
    assert sum(count for size, count in lm.batch_sizes.items() if size > 1) > before, "no step ran batched"
    _settled(lm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_synthesis_gives_each_request_its_solo_audio(engines, prompt_wav, backend):
    plain, batched = engines(backend)
    voice = plain.prompt_from_audio(prompt_wav, "hello there this is a test")
    text = "Hello world, this is a tiny test."
    jobs = [(1, False), (2, True), (3, False)]

    def run(engine, seed, stream):
        out = engine.synthesize(text, voice=voice, seed=seed, max_len=30, stream=stream)
        return np.concatenate(list(out)) if stream else out

    solo = {job: run(plain, *job) for job in jobs}
    together, errors = _together(lambda job: run(batched, *job), jobs)
    assert not errors, errors
    for job in jobs:
        np.testing.assert_allclose(together[job], solo[job], atol=1e-5, err_msg=f"job {job}")
    _settled(batched.stages.lm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cancelled_and_a_failing_request_leave_the_others_alone(engines, backend):
    plain, batched = engines(backend)
    lm = batched.stages.lm
    solo = {job: _tokens(plain, *job) for job in JOBS[:2]}

    class Failing:
        """A sampler that gives up after a few tokens, like a request whose time limit runs out."""

        def __init__(self, seed):
            self.inner, self.calls = make_sampler("torch", seed, plain.cfg.llm), 0

        def sample(self, logits, decoded, mask_ids):
            self.calls += 1
            if self.calls > 4:
                raise TimeoutError("out of time")
            return self.inner.sample(logits, decoded, mask_ids)

    def run(job):
        if job == "cancelled":
            text, prompt_text, speech = _inputs(batched, 7, 8)
            tokens = batched.iter_tokens(text, prompt_text, speech, make_sampler("torch", 7, batched.cfg.llm),
                                         max_len=50)
            first = [next(tokens) for _ in range(3)]
            tokens.close()  # the client went away
            return first
        if job == "failing":
            return _tokens(batched, 8, 8, 50, sampler=Failing(8))
        return _tokens(batched, *job)

    together, errors = _together(run, [*JOBS[:2], "cancelled", "failing"])
    assert [(job, type(exc)) for job, exc in errors] == [("failing", TimeoutError)]
    for job in JOBS[:2]:
        assert together[job] == solo[job], f"job {job}"
    _settled(lm)


def test_a_finished_request_frees_its_slot_at_once(engines):
    _, batched = engines("onnx")
    lm = batched.stages.lm
    text, prompt_text, speech = _inputs(batched, 5, 6)
    tokens = batched.iter_tokens(text, prompt_text, speech, make_sampler("torch", 5, batched.cfg.llm), max_len=40)
    next(tokens)
    assert (lm.active, lm.lm.free_slots()) == (1, lm.lm.slots - 1)
    list(tokens)
    del tokens
    assert (lm.active, lm.lm.free_slots()) == (0, lm.lm.slots)


def test_requests_beyond_the_slots_or_their_capacity_continue_alone(model, engines):
    """Two slots of 24 positions for four requests: two start outside the slots, the others outgrow theirs."""
    from cosyvoice_onnx.lm_batching import batching_lm

    plain, _ = engines("onnx")
    lm = batching_lm(plain.stages.lm, 2, model / "onnx", max_wait_s=PATIENT_S, slot_capacity=24)
    jobs = [(seed, 4, 40) for seed in (11, 12, 13, 14)]
    solo = {job: _tokens(plain, *job) for job in jobs}
    assert max(len(t) for t in solo.values()) + 14 > 24, "some request must outgrow its slot"
    together, errors = _together(lambda job: _tokens(plain, *job, lm=lm), jobs)
    assert not errors, errors
    for job in jobs:
        assert together[job] == solo[job], f"job {job}"
    _settled(lm)


def test_torch_rows_match_the_single_step(engines):
    """Row b of a batched step is row b alone up to GEMM-vs-GEMV rounding; a batch of one is the same numbers."""
    plain, _ = engines("torch")
    lm = plain.stages.lm
    caches, tokens = [], [3, 17, 42]
    for seed, length in ((1, 4), (2, 9), (3, 6)):
        text, _, speech = _inputs(plain, seed, length)
        caches.append(lm.prefill(np.asarray(text), np.asarray(speech))[1])
    alone = [lm.step(token, cache) for token, cache in zip(tokens, caches)]
    rows = lm.step_batch(tokens, caches)
    for (logits, cache), (want, want_cache) in zip(rows, alone):
        np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)
        assert cache[0][0].shape == want_cache[0][0].shape
    one = lm.step_batch(tokens[:1], caches[:1])[0][0]
    np.testing.assert_array_equal(one, alone[0][0])


def test_batch_decode_is_off_by_default_and_checked(model):
    from cosyvoice_onnx import CosyVoice
    from cosyvoice_onnx.lm_batching import BatchingLM

    for batch in (None, 1):
        assert not isinstance(CosyVoice(model, batch_decode=batch).stages.lm, BatchingLM)
    for batch in (0, 65):
        with pytest.raises(InputError, match="batch_decode must be in 1 .. 64"):
            CosyVoice(model, batch_decode=batch)


def test_a_missing_or_foreign_batched_graph_is_refused_by_name(model, tmp_path):
    import shutil

    import onnx

    from cosyvoice_onnx import CosyVoice
    from cosyvoice_onnx.onnx_backend.lm_batch import SOURCE_KEY

    export = tmp_path / "onnx"
    shutil.copytree(model / "onnx", export)
    graph = export / "lm_decode_batch.onnx"
    proto = onnx.load(str(graph))
    for prop in proto.metadata_props:
        if prop.key == SOURCE_KEY:
            prop.value = "0" * 64
    onnx.save(proto, str(graph))
    with pytest.raises(ExportError, match="another LM checkpoint"):
        CosyVoice(model, backend="onnx", export_dir=export, batch_decode=2)
    graph.unlink()
    with pytest.raises(ExportError, match="--batch-decode"):
        CosyVoice(model, backend="onnx", export_dir=export, batch_decode=2)


def test_the_server_batches_concurrent_speech_requests(engines, prompt_wav, tmp_path):
    """The API on a batched engine answers concurrent requests with the audio the plain engine's API gives."""
    import asyncio

    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from cosyvoice_onnx.server.app import ServerSettings, create_app

    plain, batched = engines("torch")
    lm = batched.stages.lm
    before = sum(count for size, count in lm.batch_sizes.items() if size > 1)

    async def speak(engine, seeds):
        settings = ServerSettings(model_id="tiny", voices_dir=tmp_path / "voices", concurrency=4, max_queue=0)
        transport = httpx.ASGITransport(app=create_app(engine, settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as client:
            if not (await client.get("/v1/voices")).json()["data"]:
                res = await client.post("/v1/voices", data={"name": "alice", "transcript": "hello there this is a test"},
                                        files={"file": ("me.wav", prompt_wav.read_bytes(), "audio/wav")})
                assert res.status_code == 201, res.text
            replies = await asyncio.gather(*(client.post("/v1/audio/speech", json={
                "model": "tiny", "input": "Hello world, this is a tiny test.", "voice": "alice",
                "response_format": "pcm", "seed": seed, "max_len": 30}) for seed in seeds))
        assert [r.status_code for r in replies] == [200] * len(seeds), [r.text for r in replies]
        return [np.frombuffer(r.content, np.int16) for r in replies]

    seeds = [1, 2, 3, 4]
    solo = [asyncio.run(speak(plain, [seed]))[0] for seed in seeds]
    together = asyncio.run(speak(batched, seeds))
    for seed, got, want in zip(seeds, together, solo):
        assert np.abs(got.astype(int) - want).max(initial=0) <= 1 and len(got) == len(want), f"seed {seed}"
    assert sum(count for size, count in lm.batch_sizes.items() if size > 1) > before, "no step ran batched"
    _settled(lm)


@pytest.mark.parametrize("argv,concurrency,refused", [
    (["--batch", "4"], 4, None),
    (["--batch", "2", "--concurrency", "3"], 3, None),
    (["--batch", "0"], None, "--batch"),
    (["--batch", "65"], None, "--batch"),
    (["--batch", "2", "--ray"], 2, None),
])
def test_serve_batch_option(argv, concurrency, refused):
    import argparse

    from cosyvoice_onnx.server.command import add_serve_arguments, check_serve_options

    args = add_serve_arguments(argparse.ArgumentParser()).parse_args(["--model", "m", *argv])
    if refused:
        with pytest.raises(SystemExit, match=refused):
            check_serve_options(args)
        return
    check_serve_options(args)
    assert args.concurrency == concurrency


def test_an_idle_scheduler_lets_its_thread_go(engines, monkeypatch):
    import time

    from cosyvoice_onnx import lm_batching

    plain, batched = engines("torch")
    monkeypatch.setattr(lm_batching, "IDLE_EXIT_S", 0.05)
    lm = batched.stages.lm
    _tokens(batched, 1, 4, 5)
    deadline = time.monotonic() + 10
    while lm._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lm._thread is None
    assert _tokens(batched, 1, 4, 5) == _tokens(plain, 1, 4, 5)  # and starts again for the next request


def test_a_failed_batched_step_frees_every_requests_place_without_a_gc_pass():
    """The failed step's error reaches each request without a traceback tying the batch's caches (and so their
    places and ONNX slots) into a reference cycle that only the garbage collector would break."""
    import gc

    from cosyvoice_onnx.lm_batching import BatchingLM

    class BrokenLM:
        backend = "torch"

        def prefill(self, text_ids, prompt_speech_ids):
            return np.zeros(4, np.float32), object()

        def step_batch(self, token_ids, caches):
            raise RuntimeError("the device fell over")

    lm = BatchingLM(BrokenLM(), 4, max_wait_s=0.5)
    errors = []

    def request():
        _, cache = lm.prefill(None, None)
        try:
            lm.step(1, cache)
        except RuntimeError as exc:
            errors.append(str(exc))

    gc.disable()
    try:
        threads = [threading.Thread(target=request) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert errors == ["the device fell over"] * 3
        assert lm.active == 0
    finally:
        gc.enable()


def test_the_torch_static_cache_is_refused_for_batching():
    from cosyvoice_onnx.lm_batching import batching_lm

    class StaticCacheLM:
        backend, static_cache = "torch", True

    with pytest.raises(InputError, match="static .CUDA graph. cache"):
        batching_lm(StaticCacheLM(), 4)


def test_the_batched_graph_is_not_exported_from_another_lm_checkpoint(tiny_model_of, tiny_export_of, tmp_path):
    import shutil

    from cosyvoice_onnx.export.lm import export_batch_decode

    export = shutil.copytree(tiny_export_of(3), tmp_path / "onnx")
    with pytest.raises(ExportError, match=r"another LM checkpoint than llm.rl.pt \(--llm rl\)"):
        export_batch_decode(tiny_export_of(3).parent, export, llm_variant="rl", progress=lambda _: None)
    assert not (export / "lm_decode_batch.onnx").exists()
