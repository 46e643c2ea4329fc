"""Starts the CosyVoice ONNX Studio (Gradio) on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=None, help="official model folder (the Models tab can download one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on; 0.0.0.0 exposes it to the network")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (use with --auth)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--backend", default="torch", help="torch | onnx[:fp16|:int8] | lm=onnx:int8,flow=torch,...")
    p.add_argument("--data-dir", type=Path, default=Path("studio_data"), help="saved voices and history")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where the Models tab downloads to")
    return p.parse_args(argv)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: --auth must look like user:password")
    return user, password


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = parse_auth(args.auth)
    from cosyvoice_onnx.plan import ExecutionPlan
    from cosyvoice_onnx.errors import CosyVoiceError
    from cosyvoice_onnx.studio import Studio, StudioSettings, build_app, launch_options

    try:
        ExecutionPlan.parse(args.backend)
    except CosyVoiceError as exc:
        raise SystemExit(f"error: --backend: {exc}") from exc
    if args.model is not None and not args.model.is_dir():
        print(f"warning: model folder {args.model} does not exist; the Models tab can download one", file=sys.stderr)
    if (args.share or args.host not in ("127.0.0.1", "localhost", "::1")) and auth is None:
        print("warning: serving beyond this machine without --auth: anyone who can reach it can use it",
              file=sys.stderr)
    studio = Studio(StudioSettings(model_dir=args.model, backend=args.backend, data_dir=args.data_dir,
                                   models_dir=args.models_dir))
    demo = build_app(studio)
    print(f"CosyVoice ONNX Studio: http://{args.host}:{args.port}  (data in {studio.settings.data_dir})", flush=True)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                **launch_options(studio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
