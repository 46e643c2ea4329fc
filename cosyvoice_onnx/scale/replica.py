"""One engine replica of `serve --ray`: a plain class that `serve_ray.deploy` turns into a Ray Serve deployment.

Each replica loads its own `CosyVoice` from a model path every node sees. Requests arrive as `SynthesisRequest`
objects that already hold the voice's prompt features (the server reads its voices store and sends the features),
so replicas need no voices folder. Every answer is a `Reply` naming the replica, which lets the server count who
served what and raise the engine's own error types.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..request import SynthesisRequest
from .ray_runtime import Reply, capture, worker_name


class EngineReplica:
    def __init__(self, model_dir: str, backend: str, device: str, batch_decode: int = 1):
        from ..engine import CosyVoice

        # batch_decode > 1: the concurrent requests of this replica (Serve runs them on its threads, up to
        # max_ongoing_requests) share batched LM decode steps, as in a local `serve --batch N`.
        self.engine = CosyVoice(model_dir, backend=backend, device=device, batch_decode=batch_decode)
        self.name = worker_name()

    def describe(self) -> Reply:
        """What the API reports about the model (plan, rate), the fingerprint its voices store checks, and how many
        LM decode steps ran with more than one request in them (0 without batch_decode)."""
        from ..voices import model_fingerprint

        files = self.engine.files
        sizes = getattr(self.engine.stages.lm, "batch_sizes", {})
        return capture(self.name, lambda: {"plan": str(self.engine.plan), "sample_rate": self.engine.sample_rate,
                                           "fingerprint": model_fingerprint(files.campplus, files.speech_tokenizer),
                                           "batched_steps": sum(n for rows, n in sizes.items() if rows > 1)})

    def synthesize(self, request: SynthesisRequest) -> Reply:
        return capture(self.name, self.engine.synthesize, request)

    def prompt_from_audio(self, clip: bytes, transcript: str) -> Reply:
        return capture(self.name, self.engine.prompt_from_audio, clip, transcript)

    def stream(self, request: SynthesisRequest) -> Iterator[Reply]:
        """One Reply per chunk; an error ends the stream as a last Reply that carries it."""
        started = capture(self.name, self.engine.stream, request)
        if started.error is not None:
            yield started
            return
        chunks = started.value
        try:
            while True:
                step = capture(self.name, next, chunks, None)
                if step.error is None and step.value is None:
                    return
                yield step
                if step.error is not None:
                    return
        finally:           # the caller went away or the stream ended: stop making audio nobody takes
            chunks.close()
