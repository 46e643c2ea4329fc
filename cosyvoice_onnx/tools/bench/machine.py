"""This machine's measured limits: GEMM rates in ONNX Runtime and numpy, memory bandwidth, CPU description."""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np

SGEMM_SHAPE = (512, 1024, 4096)       # M, K, N: the flow's linear layers at ~a quarter of a 10 s request
BANDWIDTH_BYTES = 256 << 20


def _best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs after a warm-up: what the machine can do when nothing else gets in the way."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _matmul_model(path: Path, m: int, k: int, n: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32) * 0.05
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def measure_machine(threads: int, repeats: int = 7) -> dict:
    """GEMM rates (ONNX Runtime fp32 MatMul, dynamic-int8 MatMul, numpy) and memory bandwidth, best of `repeats`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ...onnx_backend.session import make_session

    m, k, n = SGEMM_SHAPE
    flops = 2.0 * m * k * n
    a = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
    out = {}
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = _matmul_model(Path(scratch) / "gemm.onnx", m, k, n)
        int8 = Path(scratch) / "gemm.int8.onnx"
        # The quantizer logs a pre-processing hint on the root logger; it does not apply to one MatMul.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
        finally:
            root.setLevel(level)
        for name, path in (("ort_sgemm_gflops", fp32), ("ort_int8_gops", int8)):
            session = make_session(path, threads=threads, device="cpu")
            out[name] = flops / _best_time(lambda s=session: s.run(None, {"a": a}), repeats) / 1e9
    w = np.random.default_rng(2).standard_normal((k, n), dtype=np.float32)
    out["numpy_sgemm_gflops"] = flops / _best_time(lambda: a @ w, repeats) / 1e9
    out.update(_bandwidth(threads, repeats))
    return out


def _bandwidth(threads: int, repeats: int) -> dict:
    """GB/s of reading a large array (a sum: how weights stream through a GEMV) and of copying it (read + write
    counted), split over `threads` threads; numpy releases the GIL in both."""
    src = np.ones(BANDWIDTH_BYTES // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    edges = np.linspace(0, src.size, max(1, threads) + 1).astype(int)
    parts = list(zip(edges[:-1], edges[1:]))
    with ThreadPoolExecutor(len(parts)) as pool:
        read = _best_time(lambda: list(pool.map(lambda b: src[b[0]:b[1]].sum(), parts)), repeats)
        copy = _best_time(lambda: list(pool.map(lambda b: np.copyto(dst[b[0]:b[1]], src[b[0]:b[1]]), parts)),
                          repeats)
    return {"read_gbps": src.nbytes / read / 1e9, "copy_gbps": 2 * src.nbytes / copy / 1e9}


def best_rates(*measurements: dict) -> dict:
    """Per figure the best of several measurements (taken before and after the backends, so that a burst of load
    from elsewhere during one of them does not lower the bounds)."""
    return {key: max(m[key] for m in measurements) for key in measurements[0]}


def describe_machine() -> dict:
    """CPU model and instruction sets, cores, RAM, versions and the load average, for the report's header."""
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
        info["cpu"] = names[0] if names else info["cpu"]
        info["isa"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                                   "amx_int8") if f in flags]
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()
        info["ram_gb"] = round(int(mem[1]) / 1e6, 1)
    except (OSError, IndexError, ValueError):
        pass
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    for package in ("numpy", "onnxruntime", "torch"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    info["load_average"] = list(os.getloadavg())
    return info

