"""Batch on Ray vs local: one generated job run by the job runner twice, sequentially on one engine here and on a
private Ray cluster on this machine with N workers (one engine each), then compared item by item.

    python tools/bench_dubbing_ray.py --items 100 --workers 2          # tiny CV3 model made in --work, JSONL items

Prints items per second for both runs, their ratio, and how many items came out with identical samples. The local
engine load and the Ray cluster start are timed apart and left out; the Ray job's time includes its workers
loading their engines (that is part of what a Ray run costs).
"""

from __future__ import annotations

import time

from bench_dubbing import generated_job, job_parser      # the same generated job as tools/bench_dubbing.py


def main() -> None:
    p = job_parser(__doc__)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    import ray

    from cosyvoice_onnx.dubbing import LocalExecutor, run_job
    from cosyvoice_onnx.scale.batch_ray import RayExecutor, RaySettings

    work, job = generated_job(args, "bench-batch-ray-")
    outs = {"local": work / "out-local", "ray": work / "out-ray"}

    start = time.perf_counter()
    engine = job.engine.load()
    loaded = time.perf_counter()
    local = run_job(job, outs["local"], LocalExecutor(engine), resume=False)
    local_s = time.perf_counter() - loaded
    del engine

    cluster = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    try:
        up = time.perf_counter()
        executor = RayExecutor(job.engine, RaySettings(workers=args.workers))
        remote = run_job(job, outs["ray"], executor, resume=False)
        ray_s = time.perf_counter() - up
    finally:
        ray.shutdown()

    def rate(report, seconds):
        made = len(report.results) - len(report.failed)
        return made, made / seconds

    same = sum((outs["local"] / r.file).read_bytes() == (outs["ray"] / r.file).read_bytes()
               for r in local.results if not r.error)
    (made_l, ips_l), (made_r, ips_r) = rate(local, local_s), rate(remote, ray_s)
    print(f"{args.kind}, {args.items} items, {job.engine.backend}; engine load {loaded - start:.1f} s, Ray start "
          f"{up - cluster:.1f} s (neither counted)")
    print(f"local sequential: {made_l} made, {len(local.failed)} failed in {local_s:.1f} s = {ips_l:.3f} items/s")
    print(f"ray, {args.workers} workers:  {made_r} made, {len(remote.failed)} failed in {ray_s:.1f} s = "
          f"{ips_r:.3f} items/s (served {dict(executor.served)}, retried {executor.retried})")
    print(f"ratio ray / local: {ips_r / ips_l:.2f}x; items with identical samples: {same}/{made_l}")


if __name__ == "__main__":
    main()
