"""A preallocated KV cache for the PyTorch LM and its decode step, captured once as a CUDA graph and replayed.

A decode step on a GPU is dominated by launching ~400 small kernels; a CUDA graph launches them as one. A graph
replays fixed memory addresses and shapes, so the cache is one buffer per layer and kind of a fixed capacity
(`Slot`), the step's inputs (token id, position) and output (logits) are tensors that stay put, and attention
runs over the whole buffer with a mask (`CosyVoice3LM.forward_static(visible=None)`).

A slot belongs to one request at a time: a request leases it at prefill, every cache handle of the request shares
the lease, and the slot returns to its model's pool when the request's last handle is gone. A request that
outgrows its slot moves to a larger one (one copy; that slot's graph is captured on its first step).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import torch

from ..errors import InputError
from .cuda_graph import CapturedStep

# Capacity is rounded up to this many positions, so similar requests reuse a slot (and its graph).
CAPACITY_STEP = 256
class Slot:
    """The buffers of one request's cache, [1, kv_heads, capacity, head_dim] per layer and kind, plus the step."""

    def __init__(self, capacity: int, buffers: list[tuple[torch.Tensor, torch.Tensor]], token: torch.Tensor,
                 position: torch.Tensor):
        self.capacity, self.buffers = capacity, buffers
        self.token, self.position = token, position
        self.step: CapturedStep | None = None


class SlotPool:
    """Free slots per capacity; `lease` hands one out (or makes one) and takes it back when the lease dies."""

    def __init__(self, make: Callable[[int], Slot]):
        self._make = make
        self._free: dict[int, list[Slot]] = {}
        self._lock = threading.Lock()

    def lease(self, capacity: int) -> Lease:
        with self._lock:
            free = self._free.get(capacity)
            slot = free.pop() if free else None
        return Lease(self, slot or self._make(capacity))

    def _release(self, slot: Slot) -> None:
        with self._lock:
            self._free.setdefault(slot.capacity, []).append(slot)

    def free_count(self) -> int:
        with self._lock:
            return sum(len(slots) for slots in self._free.values())


class Lease:
    """One request's hold on a slot; every cache handle of the request refers to it, the last one frees it."""

    def __init__(self, pool: SlotPool, slot: Slot):
        self.slot = slot
        weakref.finalize(self, pool._release, slot)


class StaticCache:
    """Opaque cache handle of the static path: the request's lease and how many positions it holds.

    `step` consumes the handle it gets (the buffers change in place) and returns a new one; passing a consumed
    handle again raises InputError rather than silently reading a newer cache.
    """

    def __init__(self, lease: Lease, length: int):
        self.lease, self.length = lease, length
        self.consumed = False

    @property
    def slot(self) -> Slot:
        return self.lease.slot

    def take(self) -> None:
        if self.consumed:
            raise InputError("this LM cache was already passed to step(); use the cache that step returned")
        self.consumed = True


def capacity_for(needed: int, wanted: int = 0) -> int:
    """Positions to allocate: at least `needed`, `wanted` when larger, rounded up to CAPACITY_STEP."""
    return -(-max(needed, wanted) // CAPACITY_STEP) * CAPACITY_STEP
