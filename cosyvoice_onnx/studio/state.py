"""Loaded engines, cached per (model folder, backend spec), so switching back and forth does not reload."""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from ..backends import parse_backend
from ..errors import CosyVoiceError, InputError


def backend_key(spec: str) -> str:
    """A canonical spelling, so `onnx:int8` and `lm=onnx:int8,flow=onnx,vocoder=onnx` share one engine."""
    choices = parse_backend(spec)
    return ",".join(f"{stage}={choice}" for stage, choice in choices.items())


def checked_spec(spec: str, where: str) -> str:
    """A backend spec as typed, refused with an example when it does not parse."""
    try:
        backend_key(spec)
    except (CosyVoiceError, ValueError) as exc:
        detail = str(exc) if isinstance(exc, CosyVoiceError) else "each part must look like stage=backend[:precision]"
        raise InputError(f"{where} {spec!r} is not a backend spec: {detail}. Write e.g. onnx:int8 or "
                         "lm=onnx:int8,flow=torch,vocoder=onnx") from exc
    return spec


class EngineCache:
    """At most `capacity` engines (A/B needs two); the least recently used one is dropped first.

    With `lock` (the default, `--no-engine-lock` turns it off), `use()` also makes requests take turns on one
    engine, for engines that keep per-request state in their stages; requests on different engines still run
    side by side up to the studio's concurrency.
    """

    def __init__(self, capacity: int = 2, loader=None, lock: bool = True):
        self.capacity = capacity
        self.lock = lock
        self._loader = loader or _load_engine
        self._engines: OrderedDict[tuple[str, str], tuple[object, contextlib.AbstractContextManager]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_dir: Path, backend: str):
        key = (str(Path(model_dir).resolve()), backend_key(backend))
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            # Loading under the lock: two requests for a new engine must not load it twice (GBs of weights).
            entry = (self._loader(key[0], backend), threading.Lock() if self.lock else contextlib.nullcontext())
            self._engines[key] = entry
            while len(self._engines) > self.capacity:
                self._engines.popitem(last=False)
            return entry

    @contextmanager
    def use(self, model_dir: Path, backend: str):
        engine, lock = self.get(model_dir, backend)
        with lock:
            yield engine

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._engines)

    def forget(self, model_dir: Path) -> None:
        """Drops every engine of a folder (after an export replaced its ONNX files)."""
        root = str(Path(model_dir).resolve())
        with self._lock:
            for key in [k for k in self._engines if k[0] == root]:
                del self._engines[key]


def _load_engine(model_dir: str, backend: str):
    from ..engine import CosyVoice

    return CosyVoice(model_dir, backend=backend)
