"""Loaded engines, cached per (model folder, execution plan), so switching back and forth does not reload."""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

from ..errors import CosyVoiceError, InputError
from ..plan import ExecutionPlan

logger = logging.getLogger(__name__)


def checked_spec(spec: str | ExecutionPlan, where: str, device: str = "auto") -> ExecutionPlan:
    """The execution plan a typed backend spec names (on `device` where a stage names none, `auto` made concrete
    so history and reports name the real device), refused with an example when it does not parse."""
    try:
        plan = ExecutionPlan.parse(spec, device=device)
    except CosyVoiceError as exc:
        raise InputError(f"{where} {spec!r} is not a backend spec: {exc}. Write e.g. onnx:int8 or "
                         "lm=onnx:int8,flow=torch,vocoder=onnx") from exc
    return plan.resolved()  # a device this machine lacks is an InputError naming what is missing


class EngineCache:
    """At most `capacity` engines (A/B needs two); the least recently used one is dropped first.

    Engines keep no per-request state, so requests share one engine up to the studio's concurrency. With `lock`
    (`--engine-lock`), `use()` makes requests take turns on one engine instead (less memory per engine at once).
    """

    def __init__(self, capacity: int = 2, loader=None, lock: bool = False, notify=None):
        self.capacity = capacity
        self.lock = lock
        self._loader = loader or _load_engine
        self._notify = notify or _show_warning
        self._engines: OrderedDict[tuple[str, ExecutionPlan], tuple[object, contextlib.AbstractContextManager]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model_dir: Path, plan: ExecutionPlan | str):
        """The engine for (folder, plan): equal plans (`onnx:int8` spelled per stage, too) share one engine."""
        key = (str(Path(model_dir).resolve()), ExecutionPlan.parse(plan))
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            # Loading under the lock: two requests for a new engine must not load it twice (GBs of weights).
            entry = (self._load_and_notify(*key), threading.Lock() if self.lock else contextlib.nullcontext())
            self._engines[key] = entry
            while len(self._engines) > self.capacity:
                self._engines.popitem(last=False)
            return entry

    def _load_and_notify(self, model_dir: str, plan: ExecutionPlan):
        """Loads an engine; what the load warns about (an int8 export this CPU computes poorly) reaches the user
        who asked for it as a toast, and the server log."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine = self._loader(model_dir, plan)
        for warning in caught:
            self._notify(str(warning.message))
        return engine

    @contextmanager
    def use(self, model_dir: Path, plan: ExecutionPlan | str):
        engine, lock = self.get(model_dir, plan)
        with lock:
            yield engine

    def loaded(self) -> list[tuple[str, ExecutionPlan]]:
        with self._lock:
            return list(self._engines)

    def forget(self, model_dir: Path) -> None:
        """Drops every engine of a folder (after an export replaced its ONNX files)."""
        root = str(Path(model_dir).resolve())
        with self._lock:
            for key in [k for k in self._engines if k[0] == root]:
                del self._engines[key]


def _show_warning(message: str) -> None:
    import gradio as gr

    logger.warning(message)
    gr.Warning(message)


def _load_engine(model_dir: str, plan: ExecutionPlan):
    from ..engine import CosyVoice

    return CosyVoice(model_dir, backend=plan)
