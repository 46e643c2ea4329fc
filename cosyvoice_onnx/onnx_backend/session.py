"""ONNX Runtime sessions with settings chosen on purpose: providers, threads, graph optimisation."""

from __future__ import annotations

import os
from pathlib import Path

from ..devices import CPU, CPU_PROVIDER, CUDA_PROVIDER, Device, onnx_providers, parse_device, resolve_onnx
from ..errors import ExportError, InputError

# Today's default: the CUDA provider where this onnxruntime has it, the CPU otherwise.
AUTO = Device("auto")


def providers(device: Device = AUTO, cuda_graph: bool = False) -> list:
    """Providers for `device` (resolved: auto is CUDA when this onnxruntime has the provider; cuda without it is an
    InputError naming the missing package). CPU always follows as the fallback for unsupported nodes.

    cuda_graph turns on the CUDA provider's graph capture (`enable_cuda_graph`): the session then replays its first
    run's kernels, which needs every input and output bound to device memory at fixed addresses (IO binding).
    """
    chosen = onnx_providers(resolve_onnx(parse_device(device)))
    if cuda_graph and chosen[0] != CPU_PROVIDER:
        name, options = chosen[0]
        chosen[0] = (name, {**options, "enable_cuda_graph": "1"})
    return chosen


def session_device(session) -> Device:
    """Where a session runs: cuda:N when its first provider is CUDA, else the CPU."""
    if session.get_providers()[0] != CUDA_PROVIDER:
        return CPU
    options = session.get_provider_options().get(CUDA_PROVIDER, {})
    return Device("cuda", int(options.get("device_id", 0)))


SYSFS_CPU = Path("/sys/devices/system/cpu")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def default_threads(sysfs_cpu: Path = SYSFS_CPU, cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """One thread per physical core this process may use, for one request at a time; COSYVOICE_ORT_THREADS overrides.

    os.cpu_count() counts every logical CPU of the host. More threads than the cores this process really gets
    (its affinity mask, a container's CPU quota) spin against each other: 4 threads on 2 cores made the real-size
    int8 LM step 2.3x slower. SMT siblings share one core's FMA units, so a second thread per core adds
    contention to the GEMMs that dominate every stage.
    """
    env = os.environ.get("COSYVOICE_ORT_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = {_core_of(cpu, sysfs_cpu) for cpu in cpus}
    return max(1, min(len(cores), _cpu_quota(cgroup_cpu_max) or len(cores)))


def _core_of(cpu: int, sysfs_cpu: Path) -> str:
    """The SMT sibling list naming `cpu`'s physical core (the CPU itself where sysfs does not say)."""
    try:
        return (sysfs_cpu / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip()
    except OSError:
        return str(cpu)


def _cpu_quota(cgroup_cpu_max: Path) -> int | None:
    """CPUs a cgroup-v2 quota allows ("200000 100000" -> 2, rounded up), None without a quota."""
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        return None


SPIN_SWITCH = {"1": True, "on": True, "true": True, "0": False, "off": False, "false": False}


def allow_spinning() -> bool:
    """Whether ONNX Runtime's idle intra-op threads busy-wait for the next op (its default: on); COSYVOICE_ORT_SPIN
    = 0/off turns it off.

    Spinning keeps the LM's many small per-token ops from paying a thread wake-up each, but a spinning thread
    holds its core between ops, also while a single-threaded op (the vocoder's Sin) runs. On a machine shared
    with other jobs that costs more than it saves: the real-size vocoder at 2 threads ran 1.26x faster with it
    off on the 2-core machine under load (README, "CPU speed"). Scheduling only, so outputs are unchanged.
    """
    value = os.environ.get("COSYVOICE_ORT_SPIN", "1").strip().lower()
    if value not in SPIN_SWITCH:
        raise InputError(f"COSYVOICE_ORT_SPIN={value!r}: use 1/on or 0/off")
    return SPIN_SWITCH[value]


def make_session(path: Path, *, threads: int | None = None, device: Device | str | None = AUTO,
                 cuda_graph: bool = False):
    """Opens one exported graph on `device` (see `providers`); a missing or unreadable file is reported as a
    stale/corrupt export."""
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: missing from the export; run `cosyvoice-onnx export --model DIR` again")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or default_threads()
    # One request runs its stages one after another, so inter-op parallelism only adds contention.
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning() else "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers(device, cuda_graph))
    except Exception as exc:  # onnxruntime raises Fail / InvalidProtobuf / NoSuchFile
        raise ExportError(f"{path}: cannot be loaded ({str(exc).splitlines()[0][:200]}); "
                          "the file is corrupt or from another version: re-export") from exc
