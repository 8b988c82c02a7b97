"""Helpers the benchmark scripts share (each script imports this from its own folder; nothing to run here).

Standard library only at import: scripts call `set_quiet_env()` before they import numpy, torch, Ray or pygame.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Read when those libraries are imported, so they must be in the environment first.
QUIET_ENV = {
    "PYGAME_HIDE_SUPPORT_PROMPT": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "SDL_AUDIODRIVER": "dummy",
}


def set_quiet_env(**extra: str) -> None:
    """Default QUIET_ENV (and `extra`) into os.environ; what the caller's environment sets wins."""
    for key, value in {**QUIET_ENV, **extra}.items():
        os.environ.setdefault(key, value)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones (None, False) that the help text explains."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


@contextlib.contextmanager
def scratch_workdir(args, prefix: str) -> Iterator[Path]:
    """args.workdir (made if missing, never removed), or a new temp dir removed at the end unless args.keep."""
    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=prefix) if created else args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        yield workdir
    finally:
        if created and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def remove_outputs(workdir: str, created: bool, ours: list[str]) -> None:
    """All of `workdir` when this run made it; else only `ours`, what this run wrote into a folder it was given."""
    for path in [workdir] if created else ours:
        shutil.rmtree(path, ignore_errors=True)


# -- the paper-size bundle that service.py, soak.py and dmrpc.py serve -------------
def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    """--bundle, or what `build_bundle` needs to build one: --workdir, --keep, --episodes, --episode-steps,
    --train-steps."""
    parser.add_argument("--bundle", default=None, help="an existing bundle to serve (skips building one)")
    parser.add_argument("--workdir", default=None,
                        help="where the built bundle and the server logs go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep --workdir (the bundle can be reused with --bundle)")
    parser.add_argument("--episodes", type=int, default=2, help="CarRacing episodes collected to build the bundle")
    parser.add_argument("--episode-steps", type=int, default=150, help="steps per collected episode (>= 101: M's window)")
    parser.add_argument("--train-steps", type=int, default=2, help="training steps of V and of M (paper preset)")


def build_bundle(args, workdir: Path) -> Path:
    """A paper-size V-M-C bundle from a small real CarRacing collection (a few training steps)."""
    import ray

    from envs.collect import collect
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.raycluster import init_ray
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    store = str(workdir / "carracing.zarr")
    print(f"  collecting {args.episodes} x {args.episode_steps} steps of CarRacing-v3 ...", flush=True)
    collect("CarRacing-v3", store, episodes=args.episodes, max_steps=args.episode_steps, workers=0,
            seed=args.seed, show_progress=False)
    started = init_ray(num_cpus=os.cpu_count())
    try:
        print(f"  training V and M (paper preset, {args.train_steps} steps each) ...", flush=True)
        vae = train_vae([store], LaunchOptions(out=str(workdir / "vae")), preset="paper", max_steps=args.train_steps)
        mdnrnn = train_mdnrnn([store], str(vae), LaunchOptions(out=str(workdir / "mdnrnn")), preset="paper",
                              max_steps=args.train_steps)
    finally:
        if started:
            ray.shutdown()  # its workers must not compete with what is measured
    return write_vmc_bundle(workdir / "bundle", vae, mdnrnn, [store], contexts=16)


# -- a server subprocess --------------------------------------------------------
class ServeProcess:
    """`worldmodel serve` in a subprocess on 127.0.0.1 and a free port; SIGTERM on exit."""

    def __init__(self, bundles: dict[str, str | Path], *extra: str, log: Path | None = None, threads: int | None = None):
        command = [sys.executable, "-m", "worldmodel.cli", "serve", *(f"{n}={p}" for n, p in bundles.items()),
                   "--host", "127.0.0.1", "--port", "0", *extra]
        env = dict(os.environ)
        if threads:  # torch's intra-op threads in the server (read when torch starts)
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        self.pid = self.process.pid
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=120)
        match = re.fullmatch(r"serving on 127\.0\.0\.1:(\d+)\n", lines[0]) if lines else None
        if match is None:
            self.stop()
            raise RuntimeError(f"`worldmodel serve` did not start (exit {self.process.poll()}): {lines}")
        self.address = f"127.0.0.1:{match.group(1)}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
        return self.process.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
