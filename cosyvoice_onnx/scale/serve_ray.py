"""`cosyvoice-onnx serve --ray [ADDRESS] --replicas N`: the same API app in this process, its synthesis done by N
engine replicas of a Ray Serve deployment.

The FastAPI app stays the ingress here (same routes, errors, key and limits as a local `serve`); Ray Serve's own
HTTP proxy is not started. Voices are saved in this process's voices folder and sent to the replicas as prompt
features inside each request, so only the model folder must be at the same path on every node.
"""

from __future__ import annotations

import argparse
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from .ray_runtime import ReplicaError, ReplicaUnavailable, connected, first_line, require_ray

APP_NAME = "cosyvoice-onnx"
DEPLOYMENT = "EngineReplica"
START_TIMEOUT_S = 900.0       # loading N engines (a real-size model on a busy node takes minutes)
DESCRIBE_TIMEOUT_S = 60.0


@contextmanager
def ray_server(args: argparse.Namespace):
    """The API app over Serve replicas; on leaving, the replicas are deleted and this process leaves Ray."""
    _, serve = require_ray(serve=True)
    model_dir = _check_model(args)
    with connected(args.ray):
        try:
            handle = deploy(serve, model_dir, args)
            yield build_app(handle, serve, model_dir, args)
        finally:
            try:
                if serve.status().applications.get(APP_NAME) is not None:
                    serve.delete(APP_NAME)
            except Exception as exc:     # leaving anyway: say what may be left on the cluster
                print(f"warning: could not delete the Serve application {APP_NAME!r}: {first_line(exc)}",
                      file=sys.stderr)


def _check_model(args: argparse.Namespace) -> str:
    """The model folder and the backend spec checked here first, so a typo is one line, not N failing replicas."""
    from ..model_files import inspect_model_dir
    from ..plan import ExecutionPlan

    ExecutionPlan.parse(args.backend, device=args.device)
    model_dir = Path(args.model).expanduser().resolve()
    inspect_model_dir(model_dir)
    return str(model_dir)


def deploy(serve, model_dir: str, args: argparse.Namespace, timeout_s: float = START_TIMEOUT_S):
    """Starts the replicas and waits (bounded) until every one has loaded its engine; returns the Serve handle."""
    from .replica import EngineReplica

    deployment = serve.deployment(
        EngineReplica, name=DEPLOYMENT, num_replicas=args.replicas, max_ongoing_requests=args.concurrency,
        ray_actor_options={"num_cpus": args.replica_cpus, "num_gpus": args.replica_gpus},
        health_check_period_s=2, graceful_shutdown_timeout_s=5)
    serve.start(proxy_location="Disabled")      # this process's app is the HTTP ingress
    started: dict = {}

    def run() -> None:                            # serve.run has no time bound of its own
        try:
            bound = deployment.bind(model_dir, args.backend, args.device, args.batch)
            started["handle"] = serve.run(bound, name=APP_NAME, route_prefix=None)
        except Exception as exc:
            started["error"] = exc

    runner = threading.Thread(target=run, name="serve-deploy", daemon=True)
    runner.start()
    runner.join(timeout_s)
    if "handle" in started:
        return started["handle"]
    if "error" in started:
        raise ReplicaError(f"the replicas did not start: {_deploy_failure(started['error'])}")
    raise ReplicaUnavailable(f"the {args.replicas} replica(s) did not start within {timeout_s:g} s "
                             f"({_app_message(serve)}); check that the cluster has {args.replica_cpus:g} CPU(s)"
                             f"{f' and {args.replica_gpus:g} GPU(s)' if args.replica_gpus else ''} free per replica")


def build_app(handle, serve, model_dir: str, args: argparse.Namespace):
    from ..server.app import ServerSettings, create_app
    from .remote_engine import ReplicaEngine, ReplicaPool

    description = handle.describe.remote().result(timeout_s=DESCRIBE_TIMEOUT_S).unwrap()
    engine = ReplicaEngine(handle, description)
    voices_dir = (args.voices_dir or args.data_dir / "voices").expanduser().resolve()
    settings = ServerSettings(model_id=Path(model_dir).name, voices_dir=voices_dir, api_key=args.api_key or None,
                              concurrency=args.concurrency * args.replicas, max_queue=args.max_queue,
                              max_seconds=args.max_seconds)
    app = create_app(engine, settings, pool=ReplicaPool(settings.concurrency, settings.max_queue))
    add_replica_routes(app, engine, serve, args.replicas)
    return app


def add_replica_routes(app, engine, serve, replicas: int) -> None:
    """`GET /healthz/replicas`: the replicas' states and who served how many requests; ReplicaUnavailable -> 503."""
    from ..server.app import _error

    @app.exception_handler(ReplicaUnavailable)
    async def unavailable(_request, exc: ReplicaUnavailable):
        return _error(503, str(exc), "server_error", "replica_unavailable", {"Retry-After": "2"})

    @app.get("/healthz/replicas")
    def replica_health():           # a plain def: FastAPI runs it on a thread, serve.status() blocks
        states = {}
        try:
            app_status = serve.status().applications.get(APP_NAME)
            deployment = app_status.deployments.get(DEPLOYMENT) if app_status else None
            states = {str(state): count for state, count in (deployment.replica_states if deployment else {}).items()}
        except Exception as exc:
            states = {"unknown": first_line(exc)}
        return {"replicas": replicas, "replica_states": states, **engine.stats()}


def _app_message(serve) -> str:
    try:
        app_status = serve.status().applications.get(APP_NAME)
        messages = [app_status.message] + [d.message for d in app_status.deployments.values()]
        return "; ".join(m for m in messages if m) or str(app_status.status)
    except Exception as exc:
        return first_line(exc)


def _deploy_failure(exc: BaseException) -> str:
    """The engine's own error when a replica's constructor raised one (its line ends Serve's long message)."""
    for line in reversed(str(exc).splitlines()):
        if "Error:" in line and "cosyvoice_onnx" in line:
            return line.strip()[:500]
    return first_line(exc)

