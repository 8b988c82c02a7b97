"""The GPU benchmark (issue 15): one command, one Markdown table, in under 5 minutes on one GPU.

Builds the paper-size V-M-C bundle once (benchmarks.common.build_bundle), then runs each benchmark as a
subprocess on --device with a timeout, its output shown as it comes, and reads its final line of JSON:

1. benchmarks/dream.py: DreamVectorEnv, VMC, latent and pixels, batch 256, 1024 and 4096, vs real CarRacing;
2. benchmarks/diffusion.py: ms per batched imagination step, 3 Euler steps, batch 1 and 64, DIAMOND-size UNet,
   beside DIAMOND's 20.4 ms (RTX 4090);
3. benchmarks/vae_train.py: samples/s of the paper-preset ConvVAE's training step;
4. benchmarks/service.py: the gRPC service against in-process dreams (short windows).

A sub-benchmark that fails or runs out of time becomes a row saying so and why; the others still run. The
table goes to stdout and to --out; then one line of JSON, as every benchmark ends. --quick shrinks every
part for a CPU smoke run (`--device cpu --quick`, a few minutes on 2 CPUs; diffusion then uses the tiny
preset's sizes, and the table says so): its figures are not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # `python benchmarks/gpu.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    ROOT, add_bundle_arguments, add_device_argument, benchmark_parser, device_report, scratch_workdir, set_quiet_env,
)

set_quiet_env()

DREAM_BATCHES = (256, 1024, 4096)
QUICK_DREAM_BATCHES = (64, 256)
DIFFUSION_BATCHES = (1, 64)
BUNDLE_TIMEOUT_S = 240
# In a subprocess: Ray's progress bars in the process that trained keep redrawing after ray.shutdown().
BUILD_BUNDLE = """
import argparse, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from benchmarks.common import build_bundle, set_quiet_env
set_quiet_env()
args = argparse.Namespace(episodes=int(sys.argv[3]), episode_steps=int(sys.argv[4]), train_steps=int(sys.argv[5]),
                          seed=int(sys.argv[6]))
bundle = build_bundle(args, Path(sys.argv[2]), contexts=64)
print()  # a progress bar's last redraw ends no line
print(json.dumps({"bundle": str(bundle)}))
"""

Row = tuple[str, str, str, str]
"""(benchmark, figure, value, context): one line of the table."""


def times(ratio: float) -> str:
    """A ratio as the table shows it: 1,234x, 56x, 1.9x, 0.06x."""
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x" if ratio < 1 else f"{ratio:.1f}x"


@dataclass(frozen=True)
class Part:
    """One sub-benchmark: its script, its arguments (full run, --quick run), its timeout and its rows."""

    name: str
    script: str
    needs_bundle: bool
    arguments: Callable[[argparse.Namespace], list[str]]
    timeout_s: float
    quick_timeout_s: float
    rows: Callable[[dict, argparse.Namespace], list[Row]]


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description="Run the dream, diffusion, VAE-training and service benchmarks on --device, each in a subprocess "
        "with a timeout, and write one Markdown table (stdout and --out), then one line of JSON.",
        epilog="Reads: --bundle when given (built elsewhere: the parts themselves need no Ray and no zarr). Otherwise "
        "builds the paper-size bundle once (collection, a few training steps on an embedded Ray; about a minute on a "
        "GPU machine) and passes it to every part. Writes: --out, and "
        "under --workdir (a temp dir by default, removed unless --keep): the bundle, the parts' own files. Takes: "
        "under 5 minutes on one GPU; --device cpu --quick a few minutes on 2 CPUs. Servers bind 127.0.0.1 only.",
    )
    add_device_argument(parser)
    add_bundle_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="a CPU smoke run: every part shrunk (not GPU figures)")
    parser.add_argument("--out", default="runs/bench-gpu.md", help="where the Markdown table is written (after each part)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for the whole run: a part gets at most what is left (default: 300; --quick: 900)")
    args = parser.parse_args(argv)
    args.budget_s = args.budget_s or (900.0 if args.quick else 300.0)
    if args.quick:  # smaller bundle build: speed depends on the sizes, and these keep the paper sizes
        args.episodes, args.episode_steps, args.train_steps = min(args.episodes, 1), min(args.episode_steps, 120), 1
    return args


# -- the parts ------------------------------------------------------------------
def dream_arguments(args) -> list[str]:
    batches = QUICK_DREAM_BATCHES if args.quick else DREAM_BATCHES
    quick = ["--rounds", "1", "--real-steps", "50", "--latent-steps", "10", "--pixel-steps", "2", "--single-steps", "30"]
    return ["--envs", ",".join(map(str, batches)), *(quick if args.quick else ["--rounds", "2"])]


def dream_rows(figures: dict, args) -> list[Row]:
    batches = QUICK_DREAM_BATCHES if args.quick else DREAM_BATCHES
    per_batch = figures["batches"]
    real = figures["real_steps_per_s"]
    rows = [("dream", "real CarRacing-v3, 1 process (CPU)", f"{real:,.0f} steps/s", "what the dreams are compared with")]
    for mode in ("latent", "pixels"):
        for batch in batches:
            speed = per_batch[str(batch)][f"{mode}_steps_per_s"]
            rows.append(("dream", f"DreamVectorEnv VMC {mode}, {batch} envs", f"{speed:,.0f} steps/s",
                         f"{times(speed / real)} real CarRacing"))
    return rows


def diffusion_rows(figures: dict, args) -> list[Row]:
    sizes = "tiny preset (--quick, not DIAMOND's sizes)" if figures["preset"] != "paper" else "DIAMOND-size UNet"
    rows = []
    for batch in DIFFUSION_BATCHES:
        ms = figures["three_step_ms_per_step"][str(batch)]
        rows.append(("diffusion", f"3 Euler steps, batch {batch}, {sizes}", f"{ms:,.1f} ms per step",
                     f"{batch * 1000 / ms:,.1f} frames/s; DIAMOND: {figures['diamond_anchor_ms']} ms per batched step "
                     "(RTX 4090)"))
    return rows


def vae_rows(figures: dict, args) -> list[Row]:
    return [("V training", f"ConvVAE, {figures['preset']} preset, batch {figures['batch_size']}, Adam",
             f"{figures['samples_per_s']:,.1f} samples/s", f"{figures['parameters']:,} parameters")]


def service_arguments(args) -> list[str]:
    # Windows of 2 s even for --quick: on a loaded CPU, 1 s can end before 64 agents' first calls come back.
    modes = "latent" if args.quick else "latent,pixels"
    return ["--seconds", "2", "--warmup", "1", "--repeats", "1", "--observations", modes]


def service_rows(figures: dict, args) -> list[Row]:
    rows = []
    for mode in ("latent", "pixels"):
        if mode not in figures:
            continue
        f = figures[mode]
        paths = {"unary": f["batched"], "StepStream": f["streamed"], "StepMany": f["muxed"]}
        best = max(path["steps_per_s"] for path in paths.values())
        rows += [
            ("service", f"gRPC, 64 one-env agents, {mode}, best path", f"{best:,.0f} steps/s",
             f"{times(f['agents_vs_in_process'])} in-process; "
             + ", ".join(f"{name} {path['steps_per_s']:,.0f}" for name, path in paths.items())),
            ("service", f"Remote-v0 vector env, 256 envs, {mode}", f"{f['remote_vec']['steps_per_s']:,.0f} steps/s",
             f"{times(f['vector_vs_in_process'])} the in-process DreamVectorEnv; p50 {f['remote_vec']['p50_ms']:.1f} ms"),
            ("service", f"gRPC, 1 session of 256 envs, {mode}", f"{f['big']['steps_per_s']:,.0f} steps/s",
             f"{times(f['big_vs_in_process'])} in-process DreamBatch; p50 {f['big']['p50_ms']:.1f} ms"),
        ]
    return rows


PARTS = (
    Part("dream", "dream.py", True, dream_arguments, 240, 240, dream_rows),
    Part("diffusion", "diffusion.py", False, lambda args: ["--quick"] if args.quick else [], 120, 150, diffusion_rows),
    Part("V training", "vae_train.py", False, lambda args: ["--quick"] if args.quick else [], 90, 90, vae_rows),
    Part("service", "service.py", True, service_arguments, 180, 180, service_rows),
)


# -- running one ------------------------------------------------------------------
def run_part(command: list[str], timeout_s: float, tag: str) -> tuple[dict | None, str]:
    """Run `command`, echo its output prefixed with `tag`, and return (its last JSON line, "") or (None, why)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, start_new_session=True)  # its own group: a timeout ends its servers too
    lines: list[str] = []

    def echo() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            print(f"  {tag}| {lines[-1]}", flush=True)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        returncode = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_group(process)
        reader.join(timeout=5)
        return None, f"timed out after {timeout_s:.0f} s"
    reader.join(timeout=5)
    if returncode != 0:
        said = [line for line in lines if line.strip()]
        return None, f"exit {returncode}: {said[-1].strip() if said else 'no output'}"
    for line in reversed(lines):
        if '{"' in line:  # a progress bar's redraw may stand before it on the same line
            try:
                figures = json.loads(line[line.index('{"'):])
            except json.JSONDecodeError:
                break
            if isinstance(figures, dict):
                return figures, ""
    return None, "no line of JSON at the end of its output"


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group this script started (the part and its servers), then SIGKILL what is left."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_parts(args, bundle: Path | None, bundle_error: str, deadline: float,
              progress: Callable[[list[Row]], None]) -> tuple[list[Row], list[dict]]:
    """Each part in turn, within its timeout and what is left before `deadline`; `progress(rows)` after each."""
    rows: list[Row] = []
    outcomes: list[dict] = []
    for part in PARTS:
        began = time.perf_counter()
        timeout_s = min(part.quick_timeout_s if args.quick else part.timeout_s, deadline - began)
        if part.needs_bundle and bundle is None:
            figures, why = None, f"no bundle: {bundle_error}"
        elif timeout_s < 10:
            figures, why = None, f"not run: the run's --budget-s {args.budget_s:g} s was spent"
        else:
            command = [sys.executable, str(ROOT / "benchmarks" / part.script), "--device", args.device,
                       *(["--bundle", str(bundle)] if part.needs_bundle else []), *part.arguments(args)]
            print(f"\n== {part.name}: {' '.join(command[1:])}", flush=True)
            figures, why = run_part(command, timeout_s, part.script[:-3])
        if figures is not None:
            try:
                rows += part.rows(figures, args)
            except (KeyError, TypeError, ZeroDivisionError) as error:
                figures, why = None, f"its JSON lacks a figure: {error!r}"
        if figures is None:
            rows.append((part.name, "FAILED", "-", why.replace("|", "/")))
        seconds = time.perf_counter() - began
        outcomes.append({"part": part.name, "ok": figures is not None, "why": why, "seconds": round(seconds, 1),
                         "load_avg": round(os.getloadavg()[0], 2), "figures": figures})
        print(f"== {part.name}: {'done' if figures is not None else 'FAILED: ' + why} in {seconds:.0f} s "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        progress(rows)
    return rows, outcomes


def markdown(device: dict, args, rows: list[Row], wall_s: float, bundle_s: float) -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        f"GPU benchmark on {device['device_name']} (`--device {device['device']}`"
        + (", --quick: smoke-run sizes, not GPU figures" if args.quick else "") + ")",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {wall_s:.0f} s in all ({bundle_s:.0f} s building the bundle), "
        f"{os.cpu_count()} CPUs, load average {load} at the end",
        "",
        "| benchmark | figure | value | context |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {figure} | {value} | {context} |" for name, figure, value, context in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_report(args.device)
    started = time.perf_counter()
    deadline = started + args.budget_s
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[Row], bundle_s: float) -> str:  # after every part: a run cut short still leaves its rows
        table = markdown(device, args, rows, time.perf_counter() - started, bundle_s)
        out.write_text(table)
        return table

    print(f"GPU benchmark on {device['device_name']} ({device['device']}){', quick' if args.quick else ''}", flush=True)
    with scratch_workdir(args, "wm-bench-gpu-") as workdir:
        bundle, bundle_error = (Path(args.bundle) if args.bundle else None), ""
        if bundle is None:
            print("\n== bundle: paper-size V-M-C from a small CarRacing collection", flush=True)
            built, bundle_error = run_part(
                [sys.executable, "-c", BUILD_BUNDLE, str(ROOT), str(workdir), str(args.episodes),
                 str(args.episode_steps), str(args.train_steps), str(args.seed)], min(BUNDLE_TIMEOUT_S, args.budget_s),
                "bundle")
            bundle = Path(built["bundle"]) if built else None
        bundle_s = 0.0 if args.bundle else time.perf_counter() - started
        rows, outcomes = run_parts(args, bundle, bundle_error, deadline, lambda rows: write(rows, bundle_s))
    wall_s = time.perf_counter() - started
    table = write(rows, bundle_s)
    print(f"\n{table}\n(written to {out})")
    print(json.dumps({"benchmark": "gpu", **device, "quick": args.quick, "wall_s": round(wall_s, 1),
                      "bundle_s": round(bundle_s, 1), "load_avg": round(os.getloadavg()[0], 2),
                      "rows": [dict(zip(("benchmark", "figure", "value", "context"), row)) for row in rows],
                      "parts": outcomes}, default=str))
    return 0 if all(outcome["ok"] for outcome in outcomes) else 1  # the table is written either way


if __name__ == "__main__":
    raise SystemExit(main())
