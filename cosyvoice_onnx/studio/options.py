"""The studio's command-line options, shared by `app.py` and `cosyvoice-onnx studio`; imports no Gradio."""

from __future__ import annotations

import argparse
from pathlib import Path

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_studio_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", type=Path, default=None, help="official model folder (the Models tab can download one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on; 0.0.0.0 exposes it to the network "
                                                       "(needs --auth, or --insecure)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link (needs --auth)")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--insecure", action="store_true",
                   help="allow --share or a non-local --host without --auth (anyone who reaches it can use it)")
    p.add_argument("--backend", default="torch", help="torch | onnx[:fp16|:int8] | lm=onnx:int8,flow=torch,...")
    p.add_argument("--device", default="auto", help="auto (a GPU where the backend sees one), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", type=Path, default=Path("studio_data"), help="saved voices and history")
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="where the Models tab downloads to")
    p.add_argument("--allow-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="another folder whose model folders the page may open (repeatable)")
    p.add_argument("--concurrency", type=int, default=0, metavar="N",
                   help="requests that run at once (default: one per 4 CPU cores, at least 1)")
    p.add_argument("--max-queue", type=int, default=0, metavar="N",
                   help="requests that may wait; more are refused with 'queue is full' "
                        "(default: 16 per running request, at least 64)")
    p.add_argument("--engine-lock", action="store_true",
                   help="make concurrent requests take turns on one loaded engine (default: they share it)")
    p.add_argument("--cache-minutes", type=float, default=10,
                   help="delete uploads and results from Gradio's file cache after this long (default 10)")
    return p


def parse_auth(text: str | None) -> tuple[str, str] | None:
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("error: --auth must look like user:password")
    return user, password


def check_exposure(args: argparse.Namespace) -> None:
    """Refuses to serve beyond this machine without a login unless --insecure says that is intended."""
    exposed = args.share or args.host not in LOCAL_HOSTS
    if exposed and args.auth is None and not args.insecure:
        where = "a public share link" if args.share else f"--host {args.host}"
        raise SystemExit(f"error: {where} without --auth would let anyone who reaches the studio use it and its "
                         "folders; add --auth user:password, or --insecure if that is really intended")


def check_numbers(args: argparse.Namespace) -> None:
    for name in ("concurrency", "max_queue"):
        if getattr(args, name) < 0:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be a positive whole number")
    if not args.cache_minutes > 0:
        raise SystemExit("error: --cache-minutes must be above 0")
