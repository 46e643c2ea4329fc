"""The execution plan: for each stage (LM, flow, vocoder) its backend, precision and device, parsed once.

This module alone knows which stage runs in which precision on which backend and how an ONNX export names its
graph files; everything else takes an `ExecutionPlan` and reads it. `str(plan)` is the one canonical spelling
(for history entries, cache keys, reports) and parses back to an equal plan.

Syntax: `torch`, `onnx`, `onnx:int8` (every stage), or per stage `lm=onnx:int8,flow=torch,vocoder=onnx`
(stages left out run on torch in fp32). Any choice may name a device after `@`: `onnx:fp16@cuda:0`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from .devices import CPU, Device, parse_device, resolve_onnx, resolve_torch
from .errors import InputError

STAGES = ("lm", "flow", "vocoder")
BACKENDS = ("torch", "onnx")
# Precisions each backend runs per stage. The vocoder runs in fp32 on both backends at every precision: its f0
# predictor overflows fp16, bf16 loses the NSF phase's pitch, and int8 audibly degrades a waveform.
SUPPORTED = {
    ("torch", "lm"): ("fp32", "bf16", "fp16"),
    ("torch", "flow"): ("fp32", "bf16", "fp16"),
    ("torch", "vocoder"): ("fp32",),
    ("onnx", "lm"): ("fp32", "fp16", "int8"),
    ("onnx", "flow"): ("fp32", "fp16", "int8"),
    ("onnx", "vocoder"): ("fp32",),
}
# A global or per-stage reduced-precision choice leaves the vocoder in fp32 rather than refusing it.
VOCODER_STAYS_FP32 = ("int8", "fp16", "bf16")
# Precisions an ONNX export can be made in (fp32 first: the other precisions derive from its graphs).
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
PRECISIONS = tuple(dict.fromkeys(p for options in SUPPORTED.values() for p in options))
SYNTAX = ("torch | onnx[:fp16|:int8] | lm=onnx:int8,flow=torch,vocoder=onnx "
          "(optionally @cpu|@cuda[:N] after a choice)")


def _precision_suffix(precision: str) -> str:
    return "" if precision == "fp32" else f".{precision}"


def graph_files(stage: str, precision: str, causal_vocoder: bool = True) -> dict[str, str]:
    """The ONNX graph files of one stage at one export precision, by role.

    The LM has a prefill and a decode-step graph per precision; the flow's token encoder stays fp32 (it is tiny
    and feeds every frame of mu) while its estimator follows the precision; the vocoder is fp32 at every
    precision: the causal (CV3) HiFT has a finalizing and a look-ahead graph, the non-causal (CV2) one a single
    graph that takes the previous chunk's source.
    """
    if precision not in EXPORT_PRECISIONS:
        raise InputError(f"unknown export precision {precision!r}; choose one of {', '.join(EXPORT_PRECISIONS)}")
    suffix = _precision_suffix(precision)
    if stage == "lm":
        return {"lm_prefill": f"lm_prefill{suffix}.onnx", "lm_decode": f"lm_decode{suffix}.onnx"}
    if stage == "flow":
        return {"flow_encoder": "flow_encoder.onnx", "flow_estimator": f"flow_estimator{suffix}.onnx"}
    if stage == "vocoder":
        if causal_vocoder:
            return {"hift_final": "hift_final.onnx", "hift_stream": "hift_stream.onnx"}
        return {"hift_cached": "hift_cached.onnx"}
    raise InputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")


def parse_precisions(text: str | list[str]) -> list[str]:
    """An export's precisions from `fp32,int8` (or a list); fp32 always comes first, since the others derive from it."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [p.strip() for p in items if p.strip()]
    bad = [p for p in items if p not in EXPORT_PRECISIONS]
    if bad or not items:
        raise InputError(f"unknown precision {', '.join(bad) or '(none)'}; choose from {', '.join(EXPORT_PRECISIONS)}")
    return ["fp32"] + [p for p in EXPORT_PRECISIONS[1:] if p in items]


@dataclass(frozen=True)
class StagePlan:
    """Where and how one stage runs."""

    backend: str = "torch"
    precision: str = "fp32"
    device: Device = CPU

    def __str__(self) -> str:
        text = self.backend if self.precision == "fp32" else f"{self.backend}:{self.precision}"
        return text if self.device == CPU else f"{text}@{self.device}"


def _parse_choice(stage: str, text: str, device: Device) -> StagePlan:
    """One choice `backend[:precision][@device]` for `stage`, checked against SUPPORTED."""
    choice, at, device_text = text.strip().partition("@")
    if at:
        device = parse_device(device_text)
    backend, colon, precision = choice.strip().partition(":")
    backend, precision = backend.strip(), precision.strip()
    if colon and not precision:
        raise InputError(f"{stage}={text.strip()!r}: a precision must follow ':' ({SYNTAX})")
    return stage_plan(stage, backend, precision or "fp32", device)


def stage_plan(stage: str, backend: str, precision: str = "fp32", device: Device = CPU) -> StagePlan:
    """The plan of one stage, checked against SUPPORTED; the vocoder stays fp32 under every reduced precision."""
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r} for {stage}; choose torch or onnx ({SYNTAX})")
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r} for {stage}; choose one of {', '.join(PRECISIONS)}")
    if stage == "vocoder" and precision in VOCODER_STAYS_FP32:
        precision = "fp32"
    allowed = SUPPORTED[(backend, stage)]
    if precision not in allowed:
        raise InputError(f"the {stage} on {backend} runs in {', '.join(allowed)}, not {precision}")
    return StagePlan(backend, precision, device)


@dataclass(frozen=True)
class ExecutionPlan:
    """Backend, precision and device per stage. Frozen and hashable: engine caches key on it."""

    lm: StagePlan = StagePlan()
    flow: StagePlan = StagePlan()
    vocoder: StagePlan = StagePlan()

    @classmethod
    def parse(cls, spec: str | Mapping | ExecutionPlan | None = "torch",
              device: str | Device | None = "cpu") -> ExecutionPlan:
        """A plan from a spec string, a {stage: choice} mapping, or a plan (returned as is).

        `device` applies to every stage that does not name its own after `@`.
        """
        if isinstance(spec, ExecutionPlan):
            return spec
        default_device = parse_device(device if device is not None else "cpu")
        if spec is None or (isinstance(spec, str) and not spec.strip()):
            spec = "torch"
        if isinstance(spec, Mapping):
            items = [(str(k), str(v)) for k, v in spec.items()]
        elif isinstance(spec, str):
            if "=" not in spec:
                return cls(**{s: _parse_choice(s, spec, default_device) for s in STAGES})
            items = [_split_item(part) for part in spec.split(",")]
        else:
            raise InputError(f"a backend is a string or a mapping, not {type(spec).__name__} ({SYNTAX})")
        stages: dict[str, StagePlan] = {}
        for stage, value in items:
            stage = stage.strip()
            if stage not in STAGES:
                raise InputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)} ({SYNTAX})")
            if stage in stages:
                raise InputError(f"stage {stage} is given twice ({SYNTAX})")
            if not value.strip():
                raise InputError(f"{stage}= needs a backend ({SYNTAX})")
            stages[stage] = _parse_choice(stage, value, default_device)
        return cls(**{s: stages.get(s, StagePlan(device=default_device)) for s in STAGES})

    @classmethod
    def everywhere(cls, backend: str, precision: str = "fp32", device: str | Device | None = "cpu") -> ExecutionPlan:
        """Every stage on one backend in one precision (the vocoder stays fp32 under every reduced precision)."""
        device = parse_device(device if device is not None else "cpu")
        return cls(**{s: stage_plan(s, backend, precision, device) for s in STAGES})

    def stages(self) -> dict[str, StagePlan]:
        return {s: getattr(self, s) for s in STAGES}

    def on(self, backend: str) -> dict[str, StagePlan]:
        """The stages that run on `backend`."""
        return {s: p for s, p in self.stages().items() if p.backend == backend}

    def uses(self, backend: str) -> bool:
        return bool(self.on(backend))

    def with_device(self, device: str | Device) -> ExecutionPlan:
        device = parse_device(device)
        return ExecutionPlan(**{s: replace(p, device=device) for s, p in self.stages().items()})

    def resolved(self) -> ExecutionPlan:
        """The same plan with every `auto` device made concrete: a GPU where the stage's backend sees one, else the
        CPU (torch and onnxruntime see GPUs apart); asking for CUDA where the backend has none raises InputError."""
        resolve = {"torch": resolve_torch, "onnx": resolve_onnx}
        return ExecutionPlan(**{s: replace(p, device=resolve[p.backend](p.device)) for s, p in self.stages().items()})

    def __str__(self) -> str:
        """`onnx:int8` when one choice spelled alone gives this plan, else `lm=...,flow=...,vocoder=...`."""
        lm = self.lm
        alone = str(lm)
        try:
            if ExecutionPlan.parse(alone) == self:
                return alone
        except InputError:
            pass
        return ",".join(f"{s}={p}" for s, p in self.stages().items())


def _split_item(part: str) -> tuple[str, str]:
    stage, eq, value = part.partition("=")
    if not eq:
        raise InputError(f"{part.strip()!r} is not stage=backend ({SYNTAX})")
    if not stage.strip():
        raise InputError(f"{part.strip()!r} names no stage before '=' ({SYNTAX})")
    return stage, value

