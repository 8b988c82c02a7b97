"""Helpers the benchmark scripts share: the package `benchmarks` holds the scripts, this module is not one.

A script runs as `python benchmarks/X.py` (its first lines then put the repo root, not its own folder, at
the head of sys.path) or as `python -m benchmarks.X`, and imports what it shares from here as
`benchmarks.common`. Standard library only at import: scripts call `set_quiet_env()` before they import
numpy, torch, Ray or pygame.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# -- arguments ------------------------------------------------------------------
def benchmark_parser(script: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """The parser of the benchmark in file `script` (its __file__): named after it, defaults shown."""
    return argparse.ArgumentParser(prog=f"benchmarks/{Path(script).name}", description=description, epilog=epilog,
                                   formatter_class=HelpFormatter)


def add_workdir_arguments(parser: argparse.ArgumentParser, written: str) -> None:
    """--workdir (where `written` go) and --keep."""
    parser.add_argument("--workdir", default=None, help=f"where {written} go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep what was written under --workdir")


def require_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """parser.error unless every option in `names` (as attribute names) is >= 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device: where the models run ("cpu", "cuda", "cuda:1"); `device_report` checks and names it."""
    parser.add_argument("--device", default="cpu",
                        help="torch device the models run on (cpu, cuda, cuda:N); the report names the GPU")


def device_report(device: str) -> dict:
    """{"device": ..., "device_name": ...} for the JSON line; SystemExit with one line when `device` is unusable.
    Imports torch: call after set_quiet_env."""
    import platform

    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):  # torch's message lists twenty device types this project never runs on
        raise SystemExit(f"--device {device}: not a torch device; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {device}: torch sees no CUDA GPU on this machine")
        index = resolved.index if resolved.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise SystemExit(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
        return {"device": str(resolved), "device_name": torch.cuda.get_device_name(index)}
    if resolved.type != "cpu":
        raise SystemExit(f"--device {device}: only cpu and cuda are supported")
    return {"device": "cpu", "device_name": f"{_cpu_model() or platform.machine()}, {os.cpu_count()} CPUs"}


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): timings must include it."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# -- where a run writes -------------------------------------------------------------
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


@contextlib.contextmanager
def owned_outputs(args, prefix: str, names: list[str], instead: str) -> Iterator[str]:
    """args.workdir (made if missing) or a new temp dir, for a run that writes `names` into it. Refuses
    (SystemExit, suggesting `instead`) to overwrite any of them; at the end, unless args.keep, removes the
    folder when this run made it, else only `names`: what it wrote into a folder it was given."""
    created = args.workdir is None or not os.path.exists(args.workdir)
    workdir = tempfile.mkdtemp(prefix=prefix) if args.workdir is None else args.workdir
    os.makedirs(workdir, exist_ok=True)
    ours = [os.path.join(workdir, name) for name in names]
    clash = [path for path in ours if os.path.exists(path)]
    if clash:
        raise SystemExit(f"{clash[0]} exists: choose another --workdir ({instead})")
    try:
        yield workdir
    finally:
        if not args.keep:
            for path in [workdir] if created else ours:
                shutil.rmtree(path, ignore_errors=True)


# -- figures ----------------------------------------------------------------------
def rounded(value: Any, digits: int = 4) -> Any:
    """Floats rounded, inside lists, tuples and dicts too: for the one line of JSON a benchmark prints."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list | tuple):
        return [rounded(item, digits) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    return value


@dataclass
class Window:
    """The measured window of a load, from `begin` to `end` (seconds on the caller's clock): the calls
    that start in it after the warm-up and end before its end count, with their latencies."""

    begin: float
    end: float
    latencies: list[float] = field(default_factory=list)
    steps: int = 0

    def count(self, sent: float, done: float, steps: int = 1) -> bool:
        """Count a call that ran from `sent` to `done` (and made `steps` env steps) if it lies in the window."""
        inside = sent >= self.begin and done <= self.end
        if inside:
            self.latencies.append(done - sent)
            self.steps += steps
        return inside

    def summary(self, cpu: dict[str, float] | None = None) -> dict:
        """Steps/s, calls and p50/p99 latency (ms) over the window; `cpu`: CPU seconds used, by whom."""
        import numpy as np

        seconds = self.end - self.begin
        ordered = np.sort(np.asarray(self.latencies)) if self.latencies else np.zeros(1)
        return {
            "steps_per_s": self.steps / seconds,
            "calls": len(self.latencies),
            "p50_ms": 1000 * float(np.percentile(ordered, 50)),
            "p99_ms": 1000 * float(np.percentile(ordered, 99)),
            **{f"cpu_{name}": used / seconds for name, used in (cpu or {}).items()},  # CPUs busy on average
        }


def best_of_rounds(plan: list[tuple[str, str, Callable[[], dict]]], repeats: int, tag: str = "") -> dict[str, dict]:
    """Run each load of `plan` (name, what it is, run) once a round for `repeats` rounds, alternated, and keep
    the best round of each by steps/s: other load on the machine only ever slows a run down."""
    runs: dict[str, list[dict]] = {}
    for r in range(repeats):
        for name, what, run in plan:
            result = run()
            runs.setdefault(name, []).append(result)
            print(f"  {tag}round {r + 1}/{repeats}: {what}: {result['steps_per_s']:,.0f} steps/s, "
                  f"p50 {result['p50_ms']:.2f} ms", flush=True)
    return {name: max(results, key=lambda result: result["steps_per_s"]) for name, results in runs.items()}


# -- the paper-size bundle that service.py, soak.py, dmrpc.py, dream.py and agents.py use -------------
MODEL_NAME = "bench"
"""The name the benchmarks serve their bundle under."""


def random_actions(spec, count: int, rng):
    """`count` uniform random actions of the EnvSpec's space: int [count] or float32 [count, A] (numpy)."""
    import numpy as np

    if spec.action.is_discrete:
        return rng.integers(0, spec.action.n, size=count)
    low, high = np.asarray(spec.action.low, np.float32), np.asarray(spec.action.high, np.float32)
    return rng.uniform(low, high, size=(count, *spec.action.shape)).astype(np.float32)


def add_bundle_arguments(parser: argparse.ArgumentParser, train_steps: int = 2) -> None:
    """--bundle, or what `build_bundle` needs to build one: --workdir, --keep, --episodes, --episode-steps,
    --train-steps, --seed."""
    parser.add_argument("--bundle", default=None, help="an existing bundle to use (skips building one)")
    add_workdir_arguments(parser, "the built bundle and the logs")
    parser.add_argument("--episodes", type=int, default=2, help="CarRacing episodes collected to build the bundle")
    parser.add_argument("--episode-steps", type=int, default=150, help="steps per collected episode (>= 101: M's window)")
    parser.add_argument("--train-steps", type=int, default=train_steps, help="training steps of V and of M (paper preset)")
    parser.add_argument("--seed", type=int, default=0)


def build_bundle(args, workdir: Path, contexts: int = 16) -> Path:
    """A paper-size V-M-C bundle from a small real CarRacing collection (a few training steps: speed depends on
    the sizes, not on what the weights learned), with `contexts` start contexts."""
    import ray

    from envs.collect import collect
    from worldmodel.bundle import write_vmc_bundle
    from worldmodel.raycluster import init_ray
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    workdir = Path(workdir)
    store = str(workdir / "carracing.zarr")
    print(f"  collecting {args.episodes} x {args.episode_steps} steps of CarRacing-v3 ...", flush=True)
    collect("CarRacing-v3", store, episodes=args.episodes, max_steps=args.episode_steps, workers=0,
            seed=args.seed, show_progress=False)
    started = init_ray(num_cpus=os.cpu_count())
    try:
        print(f"  training V and M (paper preset, {args.train_steps} steps each) ...", flush=True)
        vae = train_vae([store], LaunchOptions(out=str(workdir / "vae")), preset="paper", max_steps=args.train_steps,
                        seed=args.seed)
        mdnrnn = train_mdnrnn([store], str(vae), LaunchOptions(out=str(workdir / "mdnrnn")), preset="paper",
                              max_steps=args.train_steps, seed=args.seed)
    finally:
        if started:
            ray.shutdown()  # its workers must not compete with what is measured
    return write_vmc_bundle(workdir / "bundle", vae, mdnrnn, [store], contexts=contexts, seed=args.seed)


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
