"""`batch --ray [ADDRESS]`: the job runner's items spread over an actor pool on a Ray cluster.

`RayExecutor` is an executor for `dubbing.run_job` (`run(items) -> Iterator[ItemOutcome]`), so resume, the
files, the manifest, the track and the report are the runner's, written by this process exactly as in a local
run; only where `synthesize_item` runs differs (`batch_worker.BatchWorker`, one engine per actor).

Each worker holds one item at a time (an item takes seconds; the round trip is milliseconds), so an item's wait
is its own run. Every wait is bounded: a worker that has not loaded within `start_timeout_s` is dropped, an item
running past `item_timeout_s` fails and its worker is replaced. An item whose worker dies (killed, node lost) is
sent to another one, up to `retries` times; a lost worker is replaced while the replacement budget lasts.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..dubbing.job import EngineSpec, JobItem
from ..dubbing.synthesize import ItemOutcome, item_result
from ..errors import CosyVoiceError, InputError
from ..request import DEFAULT_MAX_SECONDS
from .options import add_ray_options, check_ray_options
from .ray_runtime import connected, first_line, retryable_errors

ITEM_TIMEOUT_S = 3 * DEFAULT_MAX_SECONDS    # an item may be a chapter in several parts, each under the engine's limit
START_TIMEOUT_S = 600.0                     # loading an engine (a real-size model on a busy node takes minutes)
LONGEST_WAIT_S = 5.0                        # the loop wakes at least this often to check its deadlines


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide: `address` None/`local` (a private Ray on this machine), `auto` or HOST:PORT; `workers`
    None: as many as the cluster's CPUs allow at `worker_cpus` each (at most one per item)."""

    address: str | None = None
    workers: int | None = None
    worker_cpus: float = 1.0
    worker_gpus: float = 0.0
    item_timeout_s: float = ITEM_TIMEOUT_S
    start_timeout_s: float = START_TIMEOUT_S
    retries: int = 2

    def __post_init__(self):
        if self.workers is not None and self.workers < 1:
            raise InputError("--workers must be at least 1")
        if not (self.worker_cpus >= 0 and self.worker_gpus >= 0):
            raise InputError("--worker-cpus and --worker-gpus must be at least 0")
        if not (0 < self.item_timeout_s < float("inf") and 0 < self.start_timeout_s < float("inf")):
            raise InputError("--item-timeout must be a positive number of seconds")
        if self.retries < 0:
            raise InputError("retries must be at least 0")


class RayExecutor:
    """Runs items on `settings.workers` Ray actors; joins (or starts) the cluster for the run and leaves it after.
    After a run: `served` (worker -> items), `retried` (items sent again), `lost` (workers that died or hung)."""

    def __init__(self, engine: EngineSpec, settings: RaySettings | None = None):
        self.engine = engine
        self.settings = settings or RaySettings()
        self.served: Counter[str] = Counter()
        self.retried = 0
        self.lost = 0
        self.pool: _ActorPool | None = None      # the live pool during a run (its workers, for inspection)

    def run(self, items: Iterable[JobItem]) -> Iterator[ItemOutcome]:
        items = list(items)
        if not items:
            return
        # A private cluster keeps its logs: the workers' errors come back as values, not as printed lines.
        with connected(self.settings.address, log_to_driver=False) as ray:
            self.pool = _ActorPool(ray, self, len(items))
            try:
                yield from self.pool.outcomes(items)
            finally:
                self.pool.close()
                self.pool = None


@dataclass
class _Task:
    worker: Any
    item: JobItem
    tries: int
    deadline: float


class _ActorPool:
    def __init__(self, ray, executor: RayExecutor, items: int):
        from .batch_worker import BatchWorker

        self.ray, self.executor, self.settings = ray, executor, executor.settings
        self.retryable = retryable_errors()
        self.actor = ray.remote(BatchWorker).options(
            num_cpus=self.settings.worker_cpus, num_gpus=self.settings.worker_gpus, max_restarts=0,
            max_task_retries=0)          # this pool retries items itself, on whichever worker is free
        self.count = min(items, self.settings.workers or self._fitting_workers())
        self.spare = self.count * self.settings.retries     # replacements for workers that die or hang
        self.backend = self.executor.engine.backend
        self.idle: list[Any] = []
        self.starting: dict[Any, tuple[Any, float]] = {}     # ready() ref -> (worker, deadline)
        self.running: dict[Any, _Task] = {}                  # run() ref -> task
        self.last_loss = ""
        for _ in range(self.count):
            self._start()

    def _fitting_workers(self) -> int:
        cpus = self.ray.available_resources().get("CPU", 1.0)
        return max(1, int(cpus // self.settings.worker_cpus)) if self.settings.worker_cpus > 0 else 1

    @property
    def workers(self) -> list[Any]:
        """The live workers (loaded or loading)."""
        return self.idle + [t.worker for t in self.running.values()] + [w for w, _ in self.starting.values()]

    def _start(self) -> None:
        worker = self.actor.remote(self.executor.engine)
        self.starting[worker.ready.remote()] = (worker, time.monotonic() + self.settings.start_timeout_s)

    def _replace(self, worker, why: str, restart: bool = True) -> None:
        """Kills `worker` (lost or hung) and starts another while the budget lasts."""
        self.executor.lost += 1
        self.last_loss = why
        self.ray.kill(worker, no_restart=True)
        if worker in self.idle:
            self.idle.remove(worker)
        if restart and self.spare > 0:
            self.spare -= 1
            self._start()

    # ---------------------------------------------------------------- the loop

    def outcomes(self, items: list[JobItem]) -> Iterator[ItemOutcome]:
        queue: deque[tuple[JobItem, int]] = deque((item, 0) for item in items)
        while queue or self.running:
            while queue and self.idle:
                item, tries = queue.popleft()
                worker = self.idle.pop()
                self.running[worker.run.remote(item)] = _Task(worker, item, tries,
                                                              time.monotonic() + self.settings.item_timeout_s)
            if not self.running and not self.starting:
                for item, _ in queue:
                    yield self._failed(item, f"no Ray worker is left to run it ({self.last_loss})")
                return
            done, _ = self.ray.wait([*self.running, *self.starting], num_returns=1, timeout=self._wait_s())
            for ref in done:
                if ref in self.starting:
                    self._started(ref)
                else:
                    outcome = self._finished(ref, queue)
                    if outcome is not None:
                        yield outcome
            yield from self._past_deadlines()

    def _wait_s(self) -> float:
        deadlines = [t.deadline for t in self.running.values()] + [d for _, d in self.starting.values()]
        return min(LONGEST_WAIT_S, max(0.01, min(deadlines) - time.monotonic()))

    def _started(self, ref) -> None:
        worker, _ = self.starting.pop(ref)
        try:
            reply = self.ray.get(ref)
        except self.retryable as exc:
            self._replace(worker, f"a worker died while loading: {first_line(exc)}")
            return
        if reply.error is not None:       # the model does not load there: every item would fail the same way
            raise CosyVoiceError(f"a Ray worker could not load the model: {reply.error[1]}")
        self.backend = reply.value
        self.idle.append(worker)

    def _finished(self, ref, queue: deque) -> ItemOutcome | None:
        task = self.running.pop(ref)
        try:
            reply = self.ray.get(ref)
        except self.retryable as exc:
            self._replace(task.worker, f"{type(exc).__name__}: {first_line(exc)}")
            if task.tries < self.settings.retries:
                self.executor.retried += 1
                queue.appendleft((task.item, task.tries + 1))
                return None
            return self._failed(task.item, f"its Ray worker was lost {task.tries + 1} times (last: "
                                           f"{self.last_loss})")
        except self.ray.exceptions.RayError as exc:       # not the worker's absence: this item fails, it goes on
            self.idle.append(task.worker)
            return self._failed(task.item, f"Ray failed on it ({type(exc).__name__}: {first_line(exc)})")
        self.idle.append(task.worker)
        self.executor.served[reply.worker] += 1
        if reply.error is not None:
            return self._failed(task.item, reply.error[1])
        return reply.value

    def _past_deadlines(self) -> Iterator[ItemOutcome]:
        now = time.monotonic()
        for ref, (worker, deadline) in list(self.starting.items()):
            if deadline <= now:
                del self.starting[ref]
                # not replaced: a worker that cannot be placed (too few free CPUs) would wait just as long
                self._replace(worker, f"a worker did not load within {self.settings.start_timeout_s:g} s",
                              restart=False)
                if not self.idle and not self.running and not self.starting:
                    raise CosyVoiceError(
                        f"no Ray worker loaded the model within {self.settings.start_timeout_s:g} s; check that "
                        f"the cluster has {self.settings.worker_cpus:g} CPU(s)"
                        f"{f' and {self.settings.worker_gpus:g} GPU(s)' if self.settings.worker_gpus else ''} "
                        f"free per worker and sees {self.executor.engine.model_dir}")
        for ref, task in list(self.running.items()):
            if task.deadline <= now:
                del self.running[ref]
                self._replace(task.worker, f"an item ran past {self.settings.item_timeout_s:g} s")
                yield self._failed(task.item, f"it ran past the {self.settings.item_timeout_s:g} s item time "
                                              "limit (its worker was replaced)")

    def _failed(self, item: JobItem, error: str) -> ItemOutcome:
        return ItemOutcome(item_result(item, self.backend, error))

    def close(self) -> None:
        """Ends every worker of this run (a shared cluster keeps running)."""
        for worker in self.workers:
            try:
                self.ray.kill(worker, no_restart=True)
            except Exception:       # already gone: nothing to end
                pass
        self.idle.clear()
        self.running.clear()
        self.starting.clear()


# ---------------------------------------------------------------- the `batch` command's side

def add_batch_ray_arguments(p) -> None:
    r = add_ray_options(p, "worker", "workers", "speak the items on an actor pool on Ray, one engine per worker",
                        "workers (default: as many as the cluster's free CPUs allow, at most one per item)",
                        shared="--model, the voices folder and prompt clips must be at paths")
    r.add_argument("--item-timeout", type=float, default=None, metavar="S",
                   help=f"an item running longer fails and its worker is replaced (default {ITEM_TIMEOUT_S:g})")


def check_batch_ray_args(args) -> None:
    """Ray options without --ray, or figures that make no sense: a usage error (before any input is read)."""
    check_ray_options(args, "worker", "workers")
    if args.ray is None and args.item_timeout is not None:
        raise InputError("--item-timeout needs --ray")


def ray_executor(args, job) -> RayExecutor | None:
    """The run's RayExecutor when --ray is given, else None."""
    check_batch_ray_args(args)
    if args.ray is None:
        return None
    return RayExecutor(job.engine, RaySettings(args.ray, args.workers, args.worker_cpus, args.worker_gpus,
                                               ITEM_TIMEOUT_S if args.item_timeout is None else args.item_timeout))
