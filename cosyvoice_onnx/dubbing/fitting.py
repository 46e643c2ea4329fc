"""Cue fitting: how long each subtitle cue is spoken.

The rule. `pace` = natural length / cue length, where the natural length is the engine's own estimate from
the text (duration.py: ~7 speech tokens per text token at 25 tokens/s).
- pace within PACE_RANGE (0.8 .. 1.25, i.e. up to 25 % faster or 20 % slower than natural): the cue is spoken
  in exactly its slot. Within 1 ± NOTICEABLE (10 %) that is `fit`; beyond, `squeezed` (faster) or `slowed`.
- pace above 1.25: spoken at 1.25x (natural / 1.25 s, the nearest length that still sounds natural); it runs
  past the cue's end: `overran` by the difference (the track mixes it over what follows).
- pace below 0.8: spoken at 0.8x; silence fills the rest of the slot: `short`.
The exact length itself comes from the engine's duration control (method `tokens` by default).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..duration import estimate_tokens

PACE_RANGE = (0.8, 1.25)
NOTICEABLE = 0.10
RULE = f"pace {PACE_RANGE[0]}..{PACE_RANGE[1]}, noticeable {NOTICEABLE}"   # part of every cue's resume key
REPORTED = ("squeezed", "overran")       # statuses the job's report lists


@dataclass(frozen=True)
class CueFit:
    natural: float        # seconds, estimated
    slot: float           # seconds the cue allows
    target: float         # seconds it is spoken in
    status: str           # fit, squeezed, slowed, overran, short

    @property
    def pace(self) -> float:
        return self.natural / self.target

    @property
    def overrun(self) -> float:
        return max(self.target - self.slot, 0.0)


def fit_cue(natural: float, slot: float) -> CueFit:
    low, high = PACE_RANGE
    pace = natural / slot
    if pace > high:
        return CueFit(natural, slot, natural / high, "overran")
    if pace < low:
        return CueFit(natural, slot, natural / low, "short")
    status = "fit" if abs(pace - 1) <= NOTICEABLE else "squeezed" if pace > 1 else "slowed"
    return CueFit(natural, slot, slot, status)


def natural_seconds(engine, text: str, glossary=None) -> float:
    """The engine's estimate of how long `text` takes at its natural pace (what exact durations are checked
    against), from the same sentences and tokens it will speak."""
    segments = engine.frontend.text_segments(text, glossary=glossary)
    tokens = [len(engine.frontend.encode(segment)) for segment in segments]
    return estimate_tokens(tokens) / engine.cfg.features.token_frame_rate
