"""The GPU code paths, run on the CPU: the static KV cache, the capture/replay wrapper's eager path, weight dtypes."""

import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from cosyvoice_onnx.errors import InputError
from cosyvoice_onnx.flow_solver import solve_cfm, token_to_mel
from cosyvoice_onnx.model_files import inspect_model_dir
from cosyvoice_onnx.releases import RELEASES
from cosyvoice_onnx.torch_backend import loader, static_cache
from cosyvoice_onnx.torch_backend.llm import TorchLanguageModel
from cosyvoice_onnx.torch_backend.precision import place, torch_dtype
from cosyvoice_onnx.torch_backend.cuda_graph import CapturedStep
from cosyvoice_onnx.torch_backend.static_cache import StaticCache
from tests.test_llm import TINY, TINY_CV2, random_model

TEXT, PROMPT = np.array([5, 9, 11]), np.arange(6)
FED = [int(t) for t in np.random.default_rng(3).integers(0, 40, 40)]


def _logits(lm: TorchLanguageModel, steps=FED) -> np.ndarray:
    logits, cache = lm.prefill(TEXT, PROMPT)
    seq = [logits]
    for token in steps:
        logits, cache = lm.step(token, cache)
        seq.append(logits)
    return np.stack(seq)


@pytest.mark.parametrize("cfg", [TINY, TINY_CV2], ids=["cv3", "cv2"])
def test_static_cache_gives_the_list_cache_logits_exactly(cfg):
    model = random_model(cfg)
    reference = _logits(TorchLanguageModel(model))
    static = TorchLanguageModel(model, static_cache=True, cuda_graph=False)
    np.testing.assert_array_equal(_logits(static), reference)


@pytest.mark.parametrize("cfg", [TINY, TINY_CV2], ids=["cv3", "cv2"])
def test_graph_step_eager_replay_matches_within_float_rounding(cfg):
    """The fixed-shape step (what a CUDA graph captures) attends over the whole buffer with a mask; the softmax
    then also sums the masked positions' zeros, in another order: float32 rounding, not a different result."""
    model = random_model(cfg)
    reference = _logits(TorchLanguageModel(model))
    graphed = TorchLanguageModel(model, static_cache=True, cuda_graph=True)
    got = _logits(graphed)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())
    assert np.argmax(got, axis=1).tolist() == np.argmax(reference, axis=1).tolist()
    slot = graphed.slots.lease(static_cache.CAPACITY_STEP).slot
    assert slot.step.use_graph is False and not slot.step.captured  # CPU: eager replay, never captured


def test_request_outgrowing_its_slot_moves_to_a_larger_one(monkeypatch):
    monkeypatch.setattr(static_cache, "CAPACITY_STEP", 16)
    model = random_model(TINY)
    steps = FED * 2  # prefill 11 positions + 80 steps: several growths from 32 positions
    reference = _logits(TorchLanguageModel(model), steps)
    for graph in (False, True):
        lm = TorchLanguageModel(model, static_cache=True, cuda_graph=graph)
        logits, cache = lm.prefill(np.array([5]), PROMPT)
        assert cache.slot.capacity == 32
        got = _logits(lm, steps)
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-5 * np.abs(reference).max())


def test_static_cache_handle_is_consumed_and_its_slot_returns_to_the_pool():
    lm = TorchLanguageModel(random_model(TINY), static_cache=True)
    _, cache = lm.prefill(TEXT, PROMPT)
    assert isinstance(cache, StaticCache) and lm.slots.free_count() == 0
    _, newer = lm.step(3, cache)
    with pytest.raises(InputError, match="already passed to step"):
        lm.step(3, cache)
    slot = newer.slot
    del cache, newer
    assert lm.slots.free_count() == 1
    _, again = lm.prefill(TEXT, PROMPT)
    assert again.slot is slot  # reused (on CUDA: with its captured graph)


def test_captured_step_runs_eagerly_on_cpu_static_buffers():
    inputs = (torch.tensor([2.0]), torch.tensor([3.0]))
    step = CapturedStep(lambda a, b: a * b, inputs, use_graph=True)
    assert float(step.run()) == 6.0
    inputs[0].fill_(5.0)
    assert float(step.run()) == 15.0 and not step.captured


def test_default_cpu_lm_keeps_the_list_cache():
    lm = TorchLanguageModel(random_model(TINY))
    assert not lm.static_cache and not lm.cuda_graph
    assert isinstance(lm.prefill(TEXT, PROMPT)[1], list)


class _Mixed(nn.Module):
    keep_dtype = ("precise", "table")

    def __init__(self):
        super().__init__()
        self.main = nn.Linear(3, 3)
        self.precise = nn.Linear(3, 3).double()
        self.register_buffer("table", torch.tensor([1000.5, 2000.25]))


def test_place_converts_once_and_keeps_listed_parts_unrounded():
    module = _Mixed()
    precise = module.precise.weight.detach().clone()
    place(module, torch.device("cpu"), torch.bfloat16)
    assert module.main.weight.dtype == torch.bfloat16
    assert module.precise.weight.dtype == torch.float64
    torch.testing.assert_close(module.precise.weight.detach(), precise, rtol=0, atol=0)
    assert module.table.dtype == torch.float32 and module.table.tolist() == [1000.5, 2000.25]
    assert "precise" in module._modules and "table" in module._buffers


def test_unknown_torch_precision_is_named():
    with pytest.raises(ValueError, match="no precision 'int8'"):
        torch_dtype("int8")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_weights_converted_at_load(tiny_model_dir, precision):
    files = inspect_model_dir(tiny_model_dir)
    stages = loader.load(files, ["lm", "flow"], precision=precision)
    dtype = torch_dtype(precision)
    lm_dtypes = {p.dtype for p in stages["lm"].model.parameters()}
    assert lm_dtypes == {dtype}
    flow = stages["flow"].flow
    assert {p.dtype for p in flow.estimator.parameters()} == {dtype}
    assert flow.estimator.rotary_embed.inv_freq.dtype == torch.float32
    assert flow.input_embedding.weight.dtype == torch.float32
    logits, cache = stages["lm"].prefill(TEXT, PROMPT)
    logits, _ = stages["lm"].step(1, cache)
    assert logits.dtype == np.float32 and np.isfinite(logits).all()
    frames = 12
    x = np.random.default_rng(0).standard_normal((2, 80, frames), dtype=np.float32)
    velocity = stages["flow"].estimate(x, np.ones((2, 1, frames), np.float32), x, np.full(2, 0.5, np.float32),
                                       np.zeros((2, 80), np.float32), x, False)
    reference = loader.load(files, ["flow"])["flow"].estimate(
        x, np.ones((2, 1, frames), np.float32), x, np.full(2, 0.5, np.float32), np.zeros((2, 80), np.float32), x,
        False)
    assert velocity.dtype == np.float32
    # Half precision on random weights: close to fp32 in the large, not bit for bit.
    assert np.abs(velocity - reference).mean() < 0.05 * np.abs(reference).mean()


def test_vocoder_refuses_half_precision(tiny_model_dir):
    files = inspect_model_dir(tiny_model_dir)
    with pytest.raises(ValueError, match="fp32 only"):
        loader.load(files, ["vocoder"], precision="bf16")
    hift = loader.load(files, ["vocoder"])["vocoder"].hift
    assert hift.f0_predictor.classifier.weight.dtype == torch.float64


def test_failed_capture_falls_back_to_eager_with_a_warning(monkeypatch):
    inputs = (torch.tensor([2.0]), torch.tensor([3.0]))
    step = CapturedStep(lambda a, b: a + b, inputs, use_graph=False)
    step.use_graph = True  # as on a CUDA tensor

    def refuse():
        raise RuntimeError("operation not permitted when stream is capturing\ndetails")

    monkeypatch.setattr(step, "_capture", refuse)
    with pytest.warns(UserWarning, match="running the step eagerly: operation not permitted"):
        assert float(step.run()) == 5.0
    assert not step.use_graph and step.capture_error.startswith("operation not permitted")
    assert float(step.run()) == 5.0


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("version", sorted(RELEASES, reverse=True), ids=lambda v: f"CV{v}")
def test_resident_flow_solve_matches_the_numpy_solver(tiny_model_of, version, precision):
    """The solve kept on the device (what a CUDA flow runs) against the numpy reference solver, on the CPU: the same
    estimator inputs and the same float32 Euler update, so the same bits."""
    files = inspect_model_dir(tiny_model_of(version))
    flow = loader.load(files, ["flow"], precision=precision)["flow"]
    assert flow.resident_solve is False  # on the CPU the engine keeps the numpy solver
    frames, rng = 60, np.random.default_rng(7)
    mu, cond = (rng.standard_normal((1, 80, frames), dtype=np.float32) for _ in range(2))
    cond[:, :, 20:] = 0
    spks, mask = rng.standard_normal((1, 80), dtype=np.float32), np.ones((1, 1, frames), np.float32)
    noise = loader.flow_noise()[:, :, :frames]
    for streaming in (False, True):
        want = solve_cfm(flow, mu, mask, spks, cond, noise, 10, 0.7, streaming)
        # cuda_graph on: the estimator runs through its fixed-input step (eagerly here, what CUDA would capture)
        for graph in (False, True):
            flow.cuda_graph = graph
            got = flow.solve_resident(mu, mask, spks, cond, noise, 10, 0.7, streaming)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)
        assert np.abs(got - noise).max() > 0.1  # the estimator moved x: the comparison is not of two noises


class _FakeCuda:
    """Stands in for torch.cuda's stream and graph API, recording what a capture asks of it."""

    def __init__(self):
        self.modes, self.replays = [], 0
        fake = self

        class Graph:
            def replay(self):
                fake.replays += 1

        class Capture:
            def __init__(self, graph, capture_error_mode="global"):
                fake.modes.append(capture_error_mode)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        class Stream:
            def wait_stream(self, other):
                pass

        self.Graph, self.Capture, self.Stream = Graph, Capture, Stream


def test_capture_warms_up_as_asked_and_leaves_other_threads_free(monkeypatch):
    """The capture path itself (CUDA only) with torch.cuda's API faked: the warm-up count is the caller's (the flow
    asks for one, each being a whole estimator call), and the capture is thread-local so the LM decoding ahead on
    another thread is not broken by it."""
    fake = _FakeCuda()
    monkeypatch.setattr(torch.cuda, "Stream", fake.Stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", fake.Stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", fake.Graph)
    monkeypatch.setattr(torch.cuda, "graph", fake.Capture)
    calls = []
    step = CapturedStep(lambda a: calls.append(float(a)) or a * 2, (torch.tensor(1.0),), use_graph=False,
                        warmup_runs=1)
    step.use_graph = True  # as if the inputs were on a GPU
    step.run()
    step.run()
    assert calls == [1.0, 1.0]  # one warm-up and the capture's recording, then replays only
    assert fake.modes == ["thread_local"] and fake.replays == 2 and step.captured


@pytest.mark.parametrize("version", sorted(RELEASES, reverse=True), ids=lambda v: f"CV{v}")
def test_token_to_mel_uses_the_resident_solve_when_the_stage_offers_it(tiny_model_of, version, monkeypatch):
    files = inspect_model_dir(tiny_model_of(version))
    flow, cfg = loader.load(files, ["flow"])["flow"], files.config.flow
    rng = np.random.default_rng(2)
    args = (rng.integers(0, cfg.vocab_size, (1, 30)), rng.integers(0, cfg.vocab_size, (1, 10)),
            rng.standard_normal((1, 20, 80), dtype=np.float32), rng.standard_normal((1, 192), dtype=np.float32),
            loader.flow_noise())
    want = token_to_mel(flow, *args, streaming=False, finalize=True, cfg=cfg)
    flow.resident_solve = True  # as on CUDA
    monkeypatch.setattr(flow, "estimate", lambda *a: pytest.fail("the numpy solver ran"))
    got = token_to_mel(flow, *args, streaming=False, finalize=True, cfg=cfg)
    np.testing.assert_array_equal(got, want)
