"""What the subcommands share: the user error, number types for flags, the shared training flags,
and small helpers. Imports nothing heavier than argparse at module level."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldmodel.errors import UserError
from worldmodel.train.presets import PRESET_NAMES

Command = Callable[[argparse.Namespace], None]
Subparsers = Any
"""argparse's `add_subparsers()` result (its class, _SubParsersAction, is private)."""


class CliError(UserError):
    """A user-facing failure the command line finds itself: printed as one line, exit status 2."""


def add_command(subparsers: Subparsers, name: str, run: Command, *, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that runs `run(args)`; errors are reported as `PROG: error: ...` with its full name."""
    parser = subparsers.add_parser(name, help=help, description=description)
    parser.set_defaults(run=run, command_prog=parser.prog)
    return parser


# -- number types: a bad value is argparse's usage error, before any work ----------------------------


def bounded_number(kind: type[int] | type[float], minimum: float, *, strict: bool = False,
                   maximum: float | None = None) -> Callable[[str], Any]:
    """An argparse `type`: `kind` parsed from text, finite, >= minimum (> when strict), <= maximum."""
    bound = f"> {minimum}" if strict else f">= {minimum}"
    what = f"{'an integer' if kind is int else 'a number'} {bound}" + (f" and <= {maximum}" if maximum is not None else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        too_low = value <= minimum if strict else value < minimum
        if not math.isfinite(value) or too_low or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type by it in its messages
    return parse


positive_int = bounded_number(int, 1)
non_negative_int = bounded_number(int, 0)
positive_float = bounded_number(float, 0.0, strict=True)
non_negative_float = bounded_number(float, 0.0)
seed_int = bounded_number(int, 0, maximum=2**32 - 1)
"""numpy, gymnasium and CMA-ES take seeds in [0, 2^32)."""


# -- the flags every training command shares (DESIGN.md: CLI conventions) --------------------------


@dataclass(frozen=True)
class TrainingFlags:
    """How one trainer words the shared flags; the flags themselves are the same for every trainer."""

    length_flag: str = "--max-steps"
    """--max-steps (gradient steps), --generations (CMA-ES) or --iterations (RLlib)."""
    length_help: str = "training steps"
    workers_help: str = "Ray Train workers (DDP)"
    workers_default: int | None = 1
    """None: the preset's."""
    workers_minimum: int = 1
    gpus_help: str = "GPUs per Ray Train worker"
    resume_help: str = "continue from the latest checkpoint in --out"


def add_training_arguments(parser: argparse.ArgumentParser, flags: TrainingFlags = TrainingFlags()) -> None:
    """--out, --preset, the length flag, --workers, --gpus-per-worker, --resume and --seed."""
    parser.add_argument("--out", required=True, help="run directory (every output goes there)")
    parser.add_argument("--preset", default="small", choices=PRESET_NAMES,
                        help="tiny: seconds on a CPU (tests); small: the CPU demo; paper: the published sizes, for GPUs "
                        "(default: small)")
    parser.add_argument(flags.length_flag, type=positive_int, default=None, help=f"{flags.length_help} (default: the preset's)")
    workers_type = positive_int if flags.workers_minimum >= 1 else non_negative_int
    default = "the preset's" if flags.workers_default is None else flags.workers_default
    parser.add_argument("--workers", type=workers_type, default=flags.workers_default,
                        help=f"{flags.workers_help} (default: {default})")
    parser.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0, help=f"{flags.gpus_help} (default: 0)")
    parser.add_argument("--resume", action="store_true",
                        help=f"{flags.resume_help}; without it, an earlier run in --out is refused")
    parser.add_argument("--seed", type=seed_int, default=0, help="seed of the run (default: 0)")


# -- helpers ------------------------------------------------------------------------------------------


def model_dir(run: str, marker: str = "config.json") -> str:
    """A run directory or its model/ directory, whichever holds the saved model (`marker` in it)."""
    candidate = os.path.join(run, "model")
    return candidate if os.path.isfile(os.path.join(candidate, marker)) else run


def check_output_directory(path: str | None, flag: str = "--out") -> None:
    """CliError when a local output directory cannot be made because it, or a folder above it, is a file
    (URLs are the store's to judge). Every command's --out is a directory."""
    if not path or "://" in path:
        return
    for candidate in (Path(path), *Path(path).absolute().parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == Path(path) else f"lies under {candidate}, a file"
                raise CliError(f"{flag} {path} {what}, not a directory: choose another {flag} (a directory; "
                               "it is created when absent)")
            return


def check_env_id(env_id: str, source: str = "--env", options: Any = None) -> None:
    """CliError unless `env_id` makes a real source env: an unknown id, a `module:Env` id whose module does not
    import, an env whose dependencies are missing, or one with no usable frames; with `options`
    (envs.sources.SourceOptions), kwargs the env rejects or dict keys it does not have. `source` names where
    the id came from in the message."""
    import gymnasium

    from envs.sources import make_source

    try:
        make_source(env_id, options=options).close()
    except (ValueError, ImportError, gymnasium.error.Error) as err:
        raise CliError(f"{source} {env_id}: {err}") from err
    except TypeError as err:  # gymnasium.make passes on the constructor's TypeError for kwargs it rejects
        if options is None or not options.env_kwargs:
            raise
        raise CliError(f"{source} {env_id} rejects its kwargs: {err}") from err


__all__ = [
    "CliError", "TrainingFlags", "add_command", "add_training_arguments", "bounded_number", "check_env_id",
    "check_output_directory",
    "model_dir", "non_negative_float", "non_negative_int", "positive_float", "positive_int", "seed_int",
]
