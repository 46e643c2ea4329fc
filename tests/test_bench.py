"""`cosyvoice-onnx bench`: the analytic cost model against torch's FLOP counter, and a quick smoke run."""

import json
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from cosyvoice_onnx.tools.bench import prepare
from cosyvoice_onnx.tools.bench.cost import flow_cost, flow_weight_matmul_cost, lm_decode_cost, lm_prefill_cost, vocoder_cost
from cosyvoice_onnx.tools.bench.stages import STAGES
from cosyvoice_onnx.tools.bench.workload import Workload
from cosyvoice_onnx.config_readers import load_config
from cosyvoice_onnx.torch_backend.loader import build_modules


@pytest.fixture(scope="module")
def tiny_modules(tiny_model_dir):
    cfg = load_config(tiny_model_dir)
    modules = build_modules(cfg)
    for module in modules.values():
        module.eval()
    return cfg, modules


def counted_flops(fn) -> int:
    """FLOPs torch's counter sees; the math SDPA backend spells attention as matmuls, so it is counted too."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_weight_count(modules) -> int:
    """Elements of every Linear/Conv weight: what the cost model counts as weights."""
    return sum(m.weight.numel() for m in modules if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)))


def test_lm_costs_match_the_flop_counter_and_the_parameter_count(tiny_modules):
    cfg, modules = tiny_modules
    lm, c = modules["lm"], cfg.llm
    length = 23
    prefix = torch.randn(1, length, c.hidden_size)
    flops = counted_flops(lambda: lm.logits(lm.forward_hidden(prefix)[0][:, -1]))
    # torch counts the full L x L attention; the model counts only the causal half the math needs.
    masked_half = c.num_layers * 4 * c.num_heads * c.head_dim * (length * length - length * (length + 1) / 2)
    assert flops == pytest.approx(lm_prefill_cost(c, length, 4).flops + masked_half, rel=1e-9)

    _, cache = lm.forward_hidden(prefix)
    step = lm.embed_speech(torch.tensor([5]))
    flops = counted_flops(lambda: lm.logits(lm.forward_hidden(step, cache)[0][:, -1]))
    assert flops == pytest.approx(lm_decode_cost(c, length + 1, 4).flops, rel=1e-9)

    layers = list(lm.backbone.layers.modules()) + [lm.llm_decoder]
    cache_bytes = c.num_layers * 2 * c.num_kv_heads * c.head_dim * (length + 1) * 4
    assert lm_decode_cost(c, length + 1, 1).bytes == matmul_weight_count(layers) + cache_bytes


def test_flow_cost_matches_the_flop_counter_and_the_parameter_count(tiny_modules):
    cfg, modules = tiny_modules
    f, flow = cfg.flow, modules["flow"]
    tokens = 17
    frames = tokens * f.token_mel_ratio
    x, mu, cond = (torch.randn(2, f.mel_dim, frames) for _ in range(3))
    args = (x, torch.ones(2, 1, frames), mu, torch.rand(2), torch.randn(2, f.mel_dim), cond)
    estimator = counted_flops(lambda: flow.estimator(*args))
    encoder = counted_flops(lambda: flow.encode_tokens(torch.randint(0, 100, (1, tokens)), True))
    assert flow_cost(f, tokens).flops == pytest.approx(f.n_timesteps * estimator + encoder, rel=1e-9)
    # Every estimator weight is read once per solver step, the encoder's once.
    weights = (f.n_timesteps * matmul_weight_count(flow.estimator.modules())
               + matmul_weight_count(flow.pre_lookahead_layer.modules()))
    assert flow_cost(f, tokens).bytes == 4 * weights


def test_flow_weight_matmul_cost_counts_the_layers_the_int8_estimator_quantizes(tiny_modules):
    cfg, modules = tiny_modules
    f, estimator = cfg.flow, modules["flow"].estimator
    tokens = 17
    frames = tokens * f.token_mel_ratio
    # Per-frame Linear layers (q, k, v, out, feed-forward, input projection, proj_out): the adaLN and time MLPs
    # see one row per batch item and stay fp32.
    per_row = ("time_embed", "attn_norm", "norm_out")
    layers = [(name, m) for name, m in estimator.named_modules()
              if isinstance(m, torch.nn.Linear) and not any(part in name for part in per_row)]
    assert len(layers) == 6 * f.dit_depth + 2
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(2 * i[0].numel() * m.out_features))
             for _, m in layers]
    x, mu, cond = (torch.randn(2, f.mel_dim, frames) for _ in range(3))
    with torch.no_grad():
        estimator(x, torch.ones(2, 1, frames), mu, torch.rand(2), torch.randn(2, f.mel_dim), cond)
    for hook in hooks:
        hook.remove()
    cost = flow_weight_matmul_cost(f, tokens)
    assert cost.flops == pytest.approx(f.n_timesteps * sum(seen), rel=1e-9)
    assert cost.bytes == f.n_timesteps * 4 * sum(m.weight.numel() for _, m in layers)
    assert cost.flops < flow_cost(f, tokens).flops


def test_vocoder_cost_matches_the_flop_counter(tiny_modules):
    cfg, modules = tiny_modules
    hift = modules["vocoder"]
    hift.stft.use_torch_fft = False  # the DFT convolutions are what the counter can see (and what ONNX runs)
    frames = 12
    noise = torch.rand(1, frames * cfg.hift.hop_samples, cfg.hift.nb_harmonics + 1)
    flops = counted_flops(lambda: hift(torch.randn(1, cfg.hift.in_channels, frames), True, noise))
    # Left out of the model on purpose: the NSF source's 9->1 linear and the f0 head (per sample / per frame), the
    # iSTFT's window-envelope transposed conv, and conv_post over the one reflect-padded extra sample.
    assert vocoder_cost(cfg.hift, frames).flops == pytest.approx(flops, rel=0.01)
    assert vocoder_cost(cfg.hift, frames).flops < flops


def test_quick_workload_streams_its_whole_request_as_the_first_chunk(tiny_model_dir):
    cfg = load_config(tiny_model_dir)
    quick, default = Workload.quick(), Workload()
    assert default.stream_first_tokens(cfg) == 28 and default.stream_first_frames(cfg) == 50
    assert default.stream_first_tokens(cfg, 10) == 13 and default.stream_first_frames(cfg, 10) == 20
    assert quick.stream_first_tokens(cfg) == 28 and quick.prefill_len == 1 + 5 + 1 + 15


def test_bench_cli_quick_run_reports_every_stage_and_reuses_its_export(tmp_path):
    work, report_path = tmp_path / "work", tmp_path / "bench.json"
    result = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "bench", "--size", "tiny", "--quick",
                             "--work", work, "--threads", "1", "--json", report_path],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report_path.read_text())
    int8_lm_only = "lm=onnx:int8,flow=onnx,vocoder=onnx"
    assert set(report["backends"]) == {"torch", "onnx", "onnx:int8", int8_lm_only}
    timed = {"torch": set(STAGES), "onnx": set(STAGES), "onnx:int8": set(STAGES) - {"vocoder"},
             int8_lm_only: {"e2e", "stream", "stream_serial", "ttfa", "ttfa_first_chunk"}}
    for name, stages in report["backends"].items():
        expected = timed[name]
        assert expected <= set(stages), name
        assert all(stages[s]["median_s"] > 0 for s in expected)
        assert stages["e2e"]["audio_s"] == pytest.approx(2.0)
        if "convert" in expected:
            # The 2 s source comes back as its tokens' worth of audio in the target voice.
            assert stages["convert"]["audio_s"] == pytest.approx(2.0, abs=0.1)
        assert stages["peak_rss_bytes"] > 10 << 20
        # The LM decoding ahead makes the serial stream's audio; the first-chunk option's differs, measurably.
        assert stages["stream_serial"]["same_audio"] is True
        assert 0 < stages["ttfa_first_chunk"]["snr_db"] < float("inf")
    for precision in ("fp32", "int8"):
        assert all(b["seconds"] > 0 for b in report["bounds"][precision].values())
    assert report["rates"]["ort_sgemm_gflops"] > 0 and report["rates"]["copy_gbps"] > 0
    for label in report["labels"].values():
        assert label in result.stdout
    assert "PyTorch/ONNX int8 LM" in result.stdout

    messages = []
    prepare("tiny", work, ["fp32", "int8"], progress=messages.append)
    assert messages == [f"reusing the export in {work / 'model-tiny' / 'onnx'}"]


def test_default_threads_count_physical_cores_within_the_cpu_quota(tmp_path, monkeypatch):
    from cosyvoice_onnx.onnx_backend.session import default_threads

    monkeypatch.delenv("COSYVOICE_ORT_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    sysfs = tmp_path / "cpu"
    for cpu, siblings in {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"}.items():
        (sysfs / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").write_text(siblings + "\n")
    quota = tmp_path / "cpu.max"
    assert default_threads(sysfs, quota) == 2          # 4 logical CPUs, 2 cores, no cgroup file
    quota.write_text("max 100000\n")
    assert default_threads(sysfs, quota) == 2
    quota.write_text("50000 100000\n")
    assert default_threads(sysfs, quota) == 1          # half a CPU of quota still gets one thread
    assert default_threads(tmp_path / "no-sysfs", tmp_path / "none") == 4  # unknown topology: one per CPU
    monkeypatch.setenv("COSYVOICE_ORT_THREADS", "3")
    assert default_threads(sysfs, quota) == 3


def test_unmodelled_stages_get_no_bound_but_the_lm_keeps_its_own():
    from cosyvoice_onnx.tools.bench.cost import bounds
    from cosyvoice_onnx.config import FlowConfig, HiFTConfig, ModelConfig

    cfg = ModelConfig(version=2, yaml_name="cosyvoice2.yaml", speech_tokenizer_file="speech_tokenizer_v2.onnx",
                      flow=FlowConfig(kind="conformer_unet"), hift=HiFTConfig(causal=False))
    rates = {"ort_sgemm_gflops": 100.0, "numpy_sgemm_gflops": 50.0, "ort_int8_gops": 400.0, "read_gbps": 10.0}
    result = bounds(cfg, Workload(), rates)["fp32"]
    assert all(result[s]["seconds"] is None for s in ("flow", "vocoder", "e2e", "ttfa"))
    # The decode step streams every LM weight once: at 10 GB/s its bound is bytes / 1e10.
    decode = lm_decode_cost(cfg.llm, Workload().prefill_len + 1, 4)
    assert result["lm_decode"]["seconds"] == pytest.approx(decode.bytes / 1e10, rel=0.01)


def test_a_streaming_flow_chunk_costs_its_frames_without_the_look_ahead(tiny_modules):
    cfg, modules = tiny_modules
    f, flow = cfg.flow, modules["flow"]
    tokens = 20
    frames = (tokens - f.pre_lookahead_len) * f.token_mel_ratio
    x, mu, cond = (torch.randn(2, f.mel_dim, frames) for _ in range(3))
    args = (x, torch.ones(2, 1, frames), mu, torch.rand(2), torch.randn(2, f.mel_dim), cond)
    estimator = counted_flops(lambda: flow.estimator(*args, streaming=True))
    encoder = counted_flops(lambda: flow.encode_tokens(torch.randint(0, 100, (1, tokens)), False))
    assert flow_cost(f, tokens, finalize=False).flops == pytest.approx(f.n_timesteps * estimator + encoder, rel=1e-9)


def test_backend_columns_keep_a_per_stage_plan_whole():
    from cosyvoice_onnx.tools.bench.cli import backend_columns

    assert backend_columns("torch,onnx:int8") == ["torch", "onnx:int8"]
    assert backend_columns("onnx:int8,lm=onnx:int8,flow=onnx,vocoder=onnx,torch") == [
        "onnx:int8", "lm=onnx:int8,flow=onnx,vocoder=onnx", "torch"]
    assert backend_columns("lm=onnx,flow=torch") == ["lm=onnx,flow=torch"]
    assert backend_columns("lm=onnx,flow=torch; lm=torch,flow=onnx") == ["lm=onnx,flow=torch", "lm=torch,flow=onnx"]


def test_thread_counts_parse_a_sweep_with_all_cores(monkeypatch):
    import argparse

    from cosyvoice_onnx.tools.bench.cli import thread_counts

    monkeypatch.setenv("COSYVOICE_ORT_THREADS", "3")  # what default_threads() answers, so "all" is known here
    assert thread_counts("1,2,all") == [1, 2, 3]
    assert thread_counts("4") == [4]
    assert thread_counts("2, 2,ALL,3") == [2, 3]
    for bad in ("0", "1,x", "", "1,,2", "2000"):
        with pytest.raises(argparse.ArgumentTypeError, match="whole number from 1 to 1024 or 'all'"):
            thread_counts(bad)


def test_scaling_table_gives_each_stage_the_speed_up_from_the_fewest_to_the_most_threads():
    from cosyvoice_onnx.tools.bench.report import format_scaling

    labels = {stage: f"label {stage}" for stage in STAGES}

    def report(threads: int, flow_s: float) -> dict:
        return {"threads": threads, "labels": labels,
                "backends": {"onnx": {"flow": {"median_s": flow_s}, "vocoder": {"median_s": 0.5}}}}

    table = format_scaling([report(1, 8.0), report(2, 5.0), report(4, 2.0)]).splitlines()
    assert "1, 2, 4 threads" in table[0]
    assert table[1].split() == ["stage", "ONNX", "fp32", "@1", "ONNX", "fp32", "@2", "ONNX", "fp32", "@4", "ONNX",
                                "fp32", "1->4"]
    flow = next(line for line in table if line.startswith("label flow"))
    assert flow.split()[2:] == ["8.00", "s", "5.00", "s", "2.00", "s", "4.00x"]
    vocoder = next(line for line in table if line.startswith("label vocoder"))
    assert vocoder.split()[2:] == ["500.0", "ms", "500.0", "ms", "500.0", "ms", "1.00x"]
    assert not any(line.startswith("label lm_decode") for line in table)  # a stage no run timed has no row


def test_bench_cli_thread_sweep_times_each_count_in_one_run(tmp_path):
    report_path = tmp_path / "sweep.json"
    result = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "bench", "--size", "tiny", "--quick",
                             "--work", tmp_path / "work", "--backends", "onnx", "--threads", "1,2",
                             "--json", report_path], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = json.loads(report_path.read_text())["sweep"]
    assert [r["threads"] for r in sweep] == [1, 2]
    assert all(set(STAGES) <= set(r["backends"]["onnx"]) for r in sweep)
    assert "scaling over 1, 2 threads" in result.stdout and "ONNX fp32 1->2" in result.stdout
    assert result.stdout.count("1 threads;") == 1 and result.stdout.count("2 threads;") == 1


def test_bench_cli_refuses_a_bad_thread_count_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "bench", "--threads", "1,zero"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "'zero'" in result.stderr and "Traceback" not in result.stderr


def test_bench_cli_times_only_the_chosen_stages(tmp_path):
    report_path = tmp_path / "stages.json"
    result = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "bench", "--size", "tiny", "--quick",
                             "--work", tmp_path / "work", "--backends", "onnx,onnx:int8", "--threads", "1",
                             "--stages", "vocoder,convert", "--json", report_path],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    backends = json.loads(report_path.read_text())["backends"]
    timed = {name: {s for s in STAGES if s in stages} for name, stages in backends.items()}
    # int8 runs the fp32 vocoder, so it times conversion only.
    assert timed == {"onnx": {"vocoder", "convert"}, "onnx:int8": {"convert"}}
    assert backends["onnx"]["convert"]["audio_s"] > 0
    assert "RuntimeWarning" not in result.stderr  # the worker runs from the package's __main__
    assert "voice conversion" in result.stdout and "LM decode" not in result.stdout


def test_bench_cli_refuses_an_unknown_stage_in_one_line():
    result = subprocess.run([sys.executable, "-m", "cosyvoice_onnx", "bench", "--stages", "flow,decoder"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown stage 'decoder'" in result.stderr and "Traceback" not in result.stderr
