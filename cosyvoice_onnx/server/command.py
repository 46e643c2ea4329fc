"""`cosyvoice-onnx serve`: its options, the exposure check, one engine, the API app with the studio at /studio."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..lm_batching import MAX_BATCH
from ..request import DEFAULT_MAX_SECONDS
from ..scale.options import add_ray_options, check_ray_options
from ..studio.options import LOCAL_HOSTS  # the studio's rule for what counts as this machine only


def add_serve_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", required=True, type=Path, help="model folder (official layout)")
    p.add_argument("--backend", default="torch", help="torch | onnx[:fp16|:int8] | lm=onnx:int8,flow=torch,...")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on; a non-local one needs --api-key "
                                                       "(or --insecure)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("COSYVOICE_API_KEY"),
                   help="require this key ('Authorization: Bearer KEY'); default $COSYVOICE_API_KEY")
    p.add_argument("--insecure", action="store_true", help="allow a non-local --host without --api-key")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="requests synthesized at once (default 1)")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="run the LM decode steps of up to N concurrent requests as one batch (default 1: off; "
                        "raises --concurrency to N; with --ray, in each replica; an ONNX LM needs "
                        "`export --batch-decode`)")
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="requests that may wait; more get HTTP 429 (default 16)")
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                   help=f"time limit of a request, and the most one may ask for (default {DEFAULT_MAX_SECONDS:g})")
    p.add_argument("--data-dir", type=Path, default=Path("studio_data"), help="the studio's data (voices, history)")
    p.add_argument("--voices-dir", type=Path, default=None,
                   help="saved voices (default DATA_DIR/voices, the studio's own)")
    p.add_argument("--no-studio", action="store_true", help="serve the API only, without the studio at /studio")
    add_ray_options(p, "replica", "replicas", "synthesize on engine replicas on Ray Serve (no studio then)",
                    "engine replicas (default 1); --concurrency is then per replica")
    return p


def check_serve_options(args: argparse.Namespace) -> None:
    """Refuses a server reachable from the network without a key, and numbers that make no sense."""
    if args.host not in LOCAL_HOSTS and not args.api_key and not args.insecure:
        raise SystemExit(f"error: --host {args.host} without --api-key would let anyone who reaches the server use "
                         "it; add --api-key KEY, or --insecure if that is really intended")
    if args.concurrency < 1 or args.max_queue < 0:
        raise SystemExit("error: --concurrency must be at least 1 and --max-queue at least 0")
    if not 1 <= args.batch <= MAX_BATCH:
        raise SystemExit(f"error: --batch must be in 1 .. {MAX_BATCH}")
    # Batching needs the requests to decode at the same time: one worker per row.
    args.concurrency = max(args.concurrency, args.batch)
    if not 0 < args.max_seconds < float("inf"):
        raise SystemExit("error: --max-seconds must be a positive number")
    if not 0 <= args.port <= 65535:
        raise SystemExit("error: --port must be in 0 .. 65535")
    check_ray_options(args, "replica", "replicas")
    if args.ray is not None and args.replicas is None:
        args.replicas = 1


def build_server(args: argparse.Namespace):
    """The engine and the app (with the studio mounted unless --no-studio)."""
    from ..engine import CosyVoice
    from .app import ServerSettings, create_app

    engine = CosyVoice(args.model, backend=args.backend, device=args.device, batch_decode=args.batch)
    voices_dir = (args.voices_dir or args.data_dir / "voices").expanduser().resolve()
    settings = ServerSettings(model_id=Path(args.model).resolve().name, voices_dir=voices_dir,
                              api_key=args.api_key or None, concurrency=args.concurrency, max_queue=args.max_queue,
                              max_seconds=args.max_seconds)
    app = create_app(engine, settings)
    if not args.no_studio:
        mount_studio(app, engine, args)
    return app


def mount_studio(app, engine, args: argparse.Namespace) -> None:
    """The studio at /studio, sharing the server's engine; behind a login (user `api`, the key) with --api-key."""
    try:
        import gradio as gr
    except ImportError:
        print("warning: no studio at /studio: Gradio is not installed (pip install 'cosyvoice-onnx[studio]')",
              file=sys.stderr)
        return
    from ..studio import Studio, StudioSettings, build_app, launch_options
    from ..studio.media import provide_ffmpeg
    from ..studio.state import EngineCache

    provide_ffmpeg()
    model_dir = Path(args.model).expanduser().resolve()

    def load(folder: str, plan):
        if Path(folder) == model_dir and plan == engine.plan:
            return engine
        from ..engine import CosyVoice
        return CosyVoice(folder, backend=plan)

    settings = StudioSettings(model_dir=model_dir, backend=str(engine.plan), data_dir=args.data_dir,
                              concurrency=args.concurrency, max_queue=max(1, args.max_queue))
    studio = Studio(settings, cache=EngineCache(loader=load))
    options = launch_options(studio)
    gr.mount_gradio_app(app, build_app(studio), path="/studio", auth=("api", args.api_key) if args.api_key else None,
                        allowed_paths=options["allowed_paths"], max_file_size=options["max_file_size"],
                        css=options["css"], theme=options["theme"], show_error=True)


def serve(args: argparse.Namespace) -> int:
    check_serve_options(args)
    if args.ray is not None:
        return _serve_on_ray(args)
    import uvicorn

    app = build_server(args)
    where = f"http://{args.host}:{args.port}"
    studio = "" if args.no_studio else f", studio at {where}/studio"
    batch = f", LM decode batched {args.batch} at a time" if args.batch > 1 else ""
    print(f"CosyVoice speech API on {where}/v1/audio/speech{studio} ({args.concurrency} at once, "
          f"{args.max_queue} may wait{batch})", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _serve_on_ray(args: argparse.Namespace) -> int:
    """The same API in this process; synthesis on Ray Serve replicas, deleted again when the server stops."""
    from ..scale.serve_ray import ray_server

    with ray_server(args) as app:
        import uvicorn

        where = f"http://{args.host}:{args.port}"
        print(f"CosyVoice speech API on {where}/v1/audio/speech: {args.replicas} replica(s) on Ray "
              f"({args.ray}), {args.concurrency} at once each, {args.max_queue} may wait"
              f"{f', LM decode batched {args.batch} at a time in each' if args.batch > 1 else ''}; "
              "no studio in this mode",
              file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
