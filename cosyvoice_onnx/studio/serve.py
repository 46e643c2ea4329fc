"""Starts the studio from parsed options: checks them, finds ffmpeg, builds the page, serves it."""

from __future__ import annotations

import argparse
import os
import sys

from .options import add_studio_arguments, check_exposure, check_numbers, parse_auth

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def settings_from_args(args: argparse.Namespace):
    from .settings import StudioSettings

    return StudioSettings(model_dir=args.model, backend=args.backend, device=args.device, data_dir=args.data_dir,
                          models_dir=args.models_dir, allow_dirs=args.allow_dir, concurrency=args.concurrency,
                          max_queue=args.max_queue, engine_lock=args.engine_lock,
                          cache_seconds=max(1, round(args.cache_minutes * 60)))


def serve(args: argparse.Namespace) -> int:
    auth = parse_auth(args.auth)
    check_exposure(args)
    check_numbers(args)
    from ..errors import CosyVoiceError
    from .media import provide_ffmpeg
    from .state import checked_spec

    try:
        checked_spec(args.backend, "--backend", args.device)
    except CosyVoiceError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if args.model is not None and not args.model.is_dir():
        print(f"warning: model folder {args.model} does not exist; the Models tab can download one", file=sys.stderr)
    ffmpeg = provide_ffmpeg()
    if ffmpeg is None:
        print("warning: no ffmpeg (pip install imageio-ffmpeg): the live player shows the clip so far per chunk",
              file=sys.stderr)

    from . import Studio, build_app, launch_options

    studio = Studio(settings_from_args(args))
    demo = build_app(studio)
    s = studio.settings
    print(f"CosyVoice ONNX Studio: http://{args.host}:{args.port}  (data in {s.data_dir}; "
          f"{s.concurrency} request(s) at once, {s.max_queue} may wait)", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                **launch_options(studio))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="app.py", description="Starts the CosyVoice ONNX Studio (Gradio) on 127.0.0.1 "
                                                          "unless told otherwise.")
    return serve(add_studio_arguments(p).parse_args(argv))
