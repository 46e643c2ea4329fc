"""What the Ray replicas and actors share: the lazy import, connecting, and replies that carry errors as values.

A worker never lets an exception cross Ray: Ray would wrap it in a RayTaskError whose text is the remote
traceback. It returns a `Reply` instead, and the caller raises the engine's own error type with its one-line
message, so an InputError on a replica is still an HTTP 400 (or a manifest error) with the engine's words.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import CosyVoiceError

RAY_EXTRA = "pip install 'cosyvoice-onnx[ray]'"


class ReplicaUnavailable(CosyVoiceError):
    """No replica could take or finish the request (they died or are restarting): HTTP 503."""


class ReplicaError(CosyVoiceError):
    """A replica failed on a request in a way that is not the request's fault: HTTP 500."""


def require_ray(serve: bool = False):
    """`ray` (and `ray.serve` with serve=True), or a one-line error naming the extra to install."""
    try:
        import ray
        if serve:
            from ray import serve as ray_serve
            return ray, ray_serve
    except ImportError as exc:
        what = "Ray Serve" if serve else "Ray"
        raise CosyVoiceError(f"{what} is not installed ({exc.name or exc}): {RAY_EXTRA}") from None
    return ray


def connect(address: str | None, **local_options):
    """Joins the cluster at `address` (`auto`, `HOST:PORT`, `ray://...`), or starts a private one on this machine
    when it is None or `local` (never silently joining someone else's). Returns the ray module."""
    ray = require_ray()
    if address not in (None, "local"):
        _check_reachable(address)
    if ray.is_initialized():
        # Already in a cluster (a caller that manages Ray itself): only that same cluster may be meant.
        current = ray.get_runtime_context().gcs_address
        if address not in (None, "local", "auto", current):
            raise CosyVoiceError(f"this process is already connected to the Ray cluster at {current}, not "
                                 f"{address}")
    elif address in (None, "local"):
        ray.init(address="local", include_dashboard=False, **local_options)
    else:
        try:
            ray.init(address=address)
        except (ConnectionError, ValueError) as exc:
            raise CosyVoiceError(f"cannot join the Ray cluster at {address!r}: {first_line(exc)} (start one "
                                 "with `ray start --head`, then pass `auto` or its HOST:PORT)") from None
    return ray


@contextmanager
def connected(address: str | None, **local_options):
    """`connect` for a block: leaves Ray afterwards (stopping a private cluster) unless this process was already
    connected before, in which case whoever connected it leaves."""
    ray = require_ray()
    joined_here = not ray.is_initialized()
    connect(address, **local_options)
    try:
        yield ray
    finally:
        if joined_here:
            ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT that nothing answers on is refused here: Ray's own connect retries for minutes."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return                                      # `auto` and ray:// addresses are Ray's to resolve
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise CosyVoiceError(f"nothing answers at the Ray address {address} ({exc.strerror or exc}); start the "
                             "cluster with `ray start --head` and pass its HOST:PORT, or `auto` on a node of it") \
            from None


def retryable_errors() -> tuple[type[BaseException], ...]:
    """The failures that mean the worker (not the request) went away: worth a retry on another one."""
    import ray.exceptions as rex

    kinds = [rex.RayActorError, rex.WorkerCrashedError, rex.ObjectLostError, rex.NodeDiedError]
    try:
        from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError
        kinds += [ReplicaUnavailableError, DeploymentUnavailableError]
    except ImportError:
        pass
    return tuple(kinds)


def first_line(exc: BaseException | str, limit: int = 500) -> str:
    """The first line of an error's text (a Ray error's later lines are the remote traceback)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


@dataclass(frozen=True)
class Reply:
    """One answer from a worker: the value, or the error it raised (its type when it is ours, and the message)."""

    worker: str
    value: Any = None
    error: tuple[type[CosyVoiceError], str] | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            kind, message = self.error
            raise kind(message)
        return self.value


def capture(worker: str, fn: Callable[..., Any], *args: Any) -> Reply:
    """fn(*args) as a Reply; an unexpected exception becomes a ReplicaError naming the worker."""
    try:
        return Reply(worker, fn(*args))
    except CosyVoiceError as exc:
        return Reply(worker, error=(type(exc), str(exc)))
    except Exception as exc:
        return Reply(worker, error=(ReplicaError, f"internal error on {worker} ({type(exc).__name__}: "
                                                  f"{first_line(exc)})"))


def worker_name() -> str:
    """This actor's name (a Serve replica's is `SERVE_REPLICA::app#deployment#id`), else its actor id."""
    import ray

    context = ray.get_runtime_context()
    return context.get_actor_name() or context.get_actor_id() or "driver"
