"""The Ray options of `serve --ray` and `batch --ray`: one address argument, a count, and what each one reserves."""

from __future__ import annotations

import argparse

from ..errors import InputError
from .ray_runtime import RAY_EXTRA


def add_ray_options(p: argparse.ArgumentParser, unit: str, count: str, ray_help: str, count_help: str,
                    shared: str = "--model must be a path"):
    """--ray [ADDRESS], --COUNT N, --UNIT-cpus C, --UNIT-gpus G (e.g. unit `replica`, count `replicas`)."""
    r = p.add_argument_group(f"Ray ({RAY_EXTRA})")
    r.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help=f"{ray_help}: a private Ray on this machine, or the cluster at ADDRESS (auto, HOST:PORT); "
                        f"{shared} every node sees")
    r.add_argument(f"--{count}", type=int, default=None, metavar="N", help=count_help)
    r.add_argument(f"--{unit}-cpus", type=float, default=1.0, metavar="C", help=f"CPUs each {unit} reserves "
                                                                                "(default 1)")
    r.add_argument(f"--{unit}-gpus", type=float, default=0.0, metavar="G", help=f"GPUs each {unit} reserves "
                                                                                "(default 0)")
    return r


def check_ray_options(args: argparse.Namespace, unit: str, count: str) -> None:
    """A count without --ray, or a count, CPU or GPU figure that makes no sense: a usage error."""
    number = getattr(args, count)
    if args.ray is None:
        if number is not None:
            raise InputError(f"--{count} needs --ray ({count} run on Ray)")
        return
    cpus, gpus = getattr(args, f"{unit}_cpus"), getattr(args, f"{unit}_gpus")
    if (number is not None and number < 1) or not (0 <= cpus < float("inf") and 0 <= gpus < float("inf")):
        raise InputError(f"--{count} must be at least 1, --{unit}-cpus and --{unit}-gpus at least 0")
