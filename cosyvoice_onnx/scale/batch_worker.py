"""One worker of `batch --ray`: a plain class that `batch_ray` turns into a Ray actor, one engine per actor.

The actor loads the job's `EngineSpec` (a model path every node sees) once and runs the runner's own
`synthesize_item` on each item it is given, with its own voice cache, so a Ray item is made by exactly the code a
local run uses. Voices are read where the item names them (a saved voice's folder, a prompt clip), so those
paths must be visible on every node too. Every answer is a `Reply`: a load failure or a bug reaches the driver as
one line, never a remote traceback.
"""

from __future__ import annotations

from ..dubbing.job import EngineSpec, JobItem
from ..dubbing.synthesize import VoiceCache, synthesize_item
from .ray_runtime import Reply, capture, worker_name


class BatchWorker:
    def __init__(self, spec: EngineSpec):
        self.name = worker_name()
        self.loaded = capture(self.name, spec.load)      # kept, so ready() can say why the engine did not load
        self.voices = VoiceCache(self.loaded.value) if self.loaded.error is None else None

    def ready(self) -> Reply:
        """The engine's execution plan once it has loaded, or the error that stopped it."""
        if self.loaded.error is not None:
            return self.loaded
        return Reply(self.name, str(self.voices.engine.plan))

    def run(self, item: JobItem) -> Reply:
        """The item's ItemOutcome (a bad item is the outcome's error, as in a local run)."""
        return capture(self.name, synthesize_item, self.voices.engine, item, self.voices)
