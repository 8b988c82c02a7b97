"""`worldmodel`: the command line, the composition root of the project.

One module per group of subcommands, one `add_*_command` and one `run_*` function per subcommand:

    data.py     collect, info
    importing.py import: a Minari dataset or a folder of videos
    train.py    train vae | mdnrnn | diffusion | controller | rllib (shared flags: common.add_training_arguments)
    models.py   bundle, eval-model
    agents.py   eval, demo
    serving.py  serve, play

Subcommands import what they need (envs/, agents/, services/, ray, torch) inside their own
function, so `worldmodel --help` stays instant. A user's mistake (worldmodel.errors.UserError,
CliError, a missing file) is one line `worldmodel COMMAND: error: ...` and exit status 2; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from contextlib import contextmanager

from worldmodel.cli.adapt import add_adapt_command
from worldmodel.cli.agents import add_demo_command, add_eval_command
from worldmodel.cli.common import CliError, add_training_arguments, check_output_directory
from worldmodel.cli.data import add_collect_command, add_info_command
from worldmodel.cli.importing import add_import_command
from worldmodel.cli.models import add_bundle_command, add_eval_model_command
from worldmodel.cli.serving import add_play_command, add_serve_command
from worldmodel.cli.train import add_train_command
from worldmodel.errors import UserError

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldmodel",
        description="Learn simulators from recorded episodes and serve them to agents.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (add_collect_command, add_import_command, add_info_command, add_train_command, add_eval_command,
                add_bundle_command, add_adapt_command, add_eval_model_command, add_serve_command, add_play_command, add_demo_command):
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings_as_lines(args.command_prog):
            check_output_directory(getattr(args, "out", None))  # --out is a directory in every command
            args.run(args)
    except (UserError, FileNotFoundError) as err:
        print(f"{args.command_prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


@contextmanager
def warnings_as_lines(prog: str):
    """While a command runs, the project's own warnings (a store part a reader distrusts, say) print as one
    line `PROG: warning: ...` instead of Python's two-line form with a source line."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not category.__module__.startswith("worldmodel."):
            return default(message, category, filename, lineno, file, line)
        print(f"{prog}: warning: {one_line(message)}", file=file or sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = default


def one_line(err: BaseException) -> str:
    """The error's message on one line (a message may carry a hint on a line of its own)."""
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


__all__ = ["CliError", "add_training_arguments", "build_parser", "main"]
