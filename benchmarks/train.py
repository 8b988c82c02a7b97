"""Benchmark of V's training step: plain PyTorch vs Ray Train's TorchTrainer, 1 and N workers.

Samples/s of the ConvVAE train step (random single frames from a real store, Adam),
measured side by side in one run and printed as a table, then as one line of JSON:

(a) a plain PyTorch loop in this process: the same model config, batch size, sampler
    (`WindowSampler(window=1, keys=("image",))`, the same per-step rng as the loop),
    optimizer and thread count as a 1-worker TorchTrainer gets (launcher.py: the
    CPUs Ray offers divided by the workers). No Ray running.
(b) `worldmodel.train.vae.train_func` under TorchTrainer (`launch`, as `train_vae`
    calls it), 1 worker.                                 target (b)/(a) >= 0.95
(c) the same with N workers (DDP, gloo), aggregate samples/s of all ranks.

How (b) and (c) are timed: inside each Ray worker, `WindowSampler.sample` is wrapped to
record a monotonic timestamp (CLOCK_MONOTONIC: one clock for every process of the
machine) at the start of every step. A rank's rate is (steps) x batch / (time between
the start of step W+1 and the start of its last step), W = --warmup-steps; so Ray's
start-up, TorchTrainer's start-up, the chunk-cache warm-up, the last checkpoint and the
shutdown are excluded, while the periodic checkpoints and metric logging of the loop
are included (they are part of training). With N workers the window is the one common
to all ranks and the aggregate is the sum of the ranks' rates (each rank samples its own
batch of --batch frames); the rank-0 rate the loop writes to RUN/metrics.csv is printed
beside it as a cross-check. (a) is timed the same way, from step W+1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time

for _key, _value in {
    "PYGAME_HIDE_SUPPORT_PROMPT": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # Ray's driver-side progress bars otherwise patch print() to redraw themselves after every line,
    # which splices the finished bars into the table.
    "RAY_TQDM_PATCH_PRINT": "0",
}.items():
    os.environ.setdefault(_key, _value)

import numpy as np  # noqa: E402

TARGET_TRAINER_VS_PLAIN = 0.95
TIMES_FILE = "bench-step-times-rank{rank}.json"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the empty ones (None, False) that the help text explains."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/train.py",
        description=(
            "Measure samples/s of V's (ConvVAE) train step side by side in one run: (a) a plain PyTorch loop in "
            "this process, (b) train_func under Ray Train's TorchTrainer with 1 worker, (c) with --workers "
            "workers (aggregate of all ranks); same model, batch, sampler, optimizer and (for a, b) threads. "
            "Reports (b)/(a) (target >= 0.95) and (c)/(b). Times are taken from per-step timestamps recorded "
            "inside the workers, from step --warmup-steps + 1 on: Ray and trainer start-up are excluded, the "
            "loop's periodic checkpoints and logging are included. Prints a table, then one line of JSON; "
            "exits 0 whatever the figures."
        ),
        epilog=(
            "Reads: --store when given. Otherwise collects a store of --frames frames of --env with "
            "envs.collect.collect (2 Ray workers) first. Writes: only under --workdir (a temp dir by default): "
            "store.zarr (~7 MB for 3,000 frames, unless --store), run-1w/ and run-Nw/ (RUN/metrics.csv, Ray "
            "checkpoints, per-rank step timestamps); removed at the end unless --keep; plus Ray's own session "
            "files. Takes: about 5-6 minutes on 2 idle CPUs with the defaults (collection ~30 s, (a) ~--seconds, "
            "(b) and (c) ~--seconds each plus ~30 s of Ray/trainer start-up, the idle-Ray baseline "
            "--idle-seconds); the tiny preset with --seconds 10 about 2 minutes. Run it on an otherwise idle "
            "machine: other load slows some configurations more than others and spoils the ratios."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--store", default=None, help="train on this existing store (default: collect one)")
    parser.add_argument("--env", default="CarRacing-v3", help="source env to collect when --store is not given")
    parser.add_argument("--frames", type=int, default=3000, help="frames to collect when --store is not given")
    parser.add_argument("--episode-steps", type=int, default=500, help="max steps of each collected episode")
    parser.add_argument("--workdir", default=None, help="where the store and runs are written (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep what was written under --workdir")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "paper"), help="VAE preset")
    parser.add_argument("--batch", type=int, default=None, help="frames per step per worker (default: the preset's)")
    parser.add_argument("--workers", type=int, default=2, help="workers of configuration (c)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="measured seconds per configuration (sets the step counts of (b) and (c) from (a))")
    parser.add_argument("--warmup-steps", type=int, default=50, help="steps not timed at the start of each run")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="seconds of a second plain-loop run at the end, with Ray up and idle (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="seed of collection, model and batches")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be >= 2")
    if args.seconds <= 0 or args.idle_seconds < 0:
        parser.error("--seconds must be > 0 and --idle-seconds >= 0")
    for name in ("frames", "episode_steps", "warmup_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch is not None and args.batch < 1:
        parser.error("--batch must be >= 1")
    return args


# -- where the CPUs went --------------------------------------------------------
class CpuMonitor:
    """Samples the CPU time of every process of the machine once a `interval` (Linux /proc; off elsewhere),
    to say where the CPUs went during a timed window: the trainer, this run's other Ray processes, or
    processes foreign to this run (whose load spoils the comparison). Hand-written: /proc, no library."""

    def __init__(self, interval: float = 1.0):
        import threading

        self.interval = interval
        self.samples: list[tuple[float, dict[int, tuple[str, int, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-monitor", daemon=True)
        self.enabled = os.path.isdir("/proc") and hasattr(os, "sysconf")

    def start(self) -> CpuMonitor:
        if self.enabled:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.snapshot()))
            self._stop.wait(self.interval)

    @staticmethod
    def snapshot() -> dict[int, tuple[str, int, float]]:
        """pid -> (name, parent pid, CPU seconds so far)."""
        tick = os.sysconf("SC_CLK_TCK")
        found = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
            except OSError:
                continue  # gone meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is the state (field 3 of proc(5))
            if argv and "python" in os.path.basename(argv[0]) and len(argv) > 1:
                if argv[1] == "-c":
                    name = "python -c " + " ".join(argv[2:3])
                else:
                    name = " ".join(os.path.basename(a) for a in argv[1:3])
            elif argv:
                name = os.path.basename(argv[0])
            else:
                name = "[" + stat[stat.index("(") + 1 : stat.rindex(")")] + "]"
            found[int(entry.name)] = (name[:40], int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        return found

    def usage(self, start: float, stop: float, trainers: set[int]) -> dict | None:
        """Cores used on average between the first and last samples in [start, stop] by: the trainers (or this process for the plain loop),
        this run's other processes (Ray's), and everything else; plus the biggest of the latter two."""
        samples = list(self.samples)
        if len(samples) < 2:
            return None
        inside = [s for s in samples if start <= s[0] <= stop]  # the samples within the window
        if len(inside) < 2:
            return None
        first, last = inside[0], inside[-1]
        seconds = last[0] - first[0]
        if seconds <= 0:
            return None
        before, after = first[1], last[1]
        me = os.getpid()

        def ours(pid: int) -> bool:  # a descendant of this process (Ray's processes started by init_ray)
            seen = set()
            while pid in after and pid not in seen:
                if pid == me:
                    return True
                seen.add(pid)
                pid = after[pid][1]
            return False

        groups: dict[str, float] = {"trainer": 0.0, "ray": 0.0, "foreign": 0.0}
        names: dict[tuple[str, str], float] = {}
        for pid, (name, _, cpu) in after.items():
            used = (cpu - before[pid][2] if pid in before else cpu) / seconds
            if pid in trainers:
                group = "trainer"
            elif pid == me or ours(pid):
                group = "ray"  # this process outside the plain loop: the driver waiting on Ray
            else:
                group = "foreign"
            groups[group] += used
            names[(group, name)] = names.get((group, name), 0.0) + used
        top = sorted(((v, g, n) for (g, n), v in names.items() if g != "trainer" and v >= 0.005), reverse=True)
        return {**groups, "top": [(g, n, round(v, 3)) for v, g, n in top[:5]], "seconds": seconds}


# -- the configuration every run shares -----------------------------------------
def build_config(args, store_path: str, max_steps: int) -> dict:
    """The train_loop_config `train_vae` builds (worldmodel/train/vae.py), with --batch applied."""
    from worldmodel.models import VAEConfig
    from worldmodel.train.launcher import common_spec
    from worldmodel.train.presets import get_preset, loop_config

    spec = common_spec([store_path])
    chosen = get_preset("vae", args.preset)
    config = {
        **loop_config(chosen, max_steps, args.seed),
        "stores": [str(store_path)],
        "model": VAEConfig.from_spec(spec, **chosen.model).to_dict(),
        "preset": args.preset,
    }
    if args.batch is not None:
        config["batch_size"] = args.batch
    return config


def ray_threads(workers: int) -> int:
    """The threads launcher.launch gives each of `workers` local workers (Ray must be up)."""
    import ray

    cpus = int(ray.available_resources().get("CPU", 1))
    return max(1, cpus // workers)


def default_threads(workers: int) -> int:
    """The same figure before Ray starts: Ray offers the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // workers)


# -- (a) the plain loop ---------------------------------------------------------
def plain_loop(config: dict, threads: int, warmup: int, seconds: float) -> dict:
    """train_loop's step without Ray: sample, to tensors, loss, backward, Adam; runs `warmup` steps, then
    until `seconds` have passed. Returns the step-start timestamps (the same measure as in the workers)."""
    import torch

    from worldmodel.data import EpisodeStore, WindowSampler
    from worldmodel.models import ConvVAE, VAEConfig, to_model_input
    from worldmodel.train.loop import batch_rng

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(config["seed"])
        stores = [EpisodeStore.open(location) for location in config["stores"]]
        sampler = WindowSampler(stores, 1, keys=("image",))
        model = ConvVAE(VAEConfig.from_dict(config["model"]))
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
        batch_size, seed = config["batch_size"], config["seed"]
        times: list[float] = []
        step, deadline = 0, math.inf
        while True:
            step += 1
            now = time.monotonic()
            times.append(now)
            if step == warmup + 1:
                deadline = now + seconds
            elif now >= deadline:
                break  # the start of a step that is not run: it closes the timed window
            batch = sampler.sample(batch_size, batch_rng(seed, 0, step))
            images = torch.from_numpy(np.ascontiguousarray(batch["image"]))
            loss, _ = model.loss(to_model_input(images[:, 0]))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        final_loss = float(loss.detach())
    finally:
        torch.set_num_threads(previous_threads)
    return {"rank": 0, "times": times, "threads": threads, "batch": batch_size, "final_loss": final_loss,
            "pid": os.getpid()}


# -- (b), (c) under TorchTrainer --------------------------------------------------
def timed_train_func(config: dict) -> None:
    """worldmodel.train.vae.train_func, with the start of every step recorded (runs in a Ray worker).

    The timestamp is taken when the loop asks the sampler for the step's batch; the wrapper adds one
    clock read and one list append per step.
    """
    import json as json_
    import os as os_
    import time as time_
    from pathlib import Path

    import ray.train
    import torch

    from worldmodel.data import WindowSampler
    from worldmodel.train.vae import train_func

    times: list[float] = []
    original = WindowSampler.sample

    def sample(self, *args, **kwargs):
        times.append(time_.monotonic())
        return original(self, *args, **kwargs)

    WindowSampler.sample = sample
    try:
        train_func(config)
    finally:
        WindowSampler.sample = original
    rank = ray.train.get_context().get_world_rank()
    record = {
        "rank": rank,
        "times": times,
        "threads": torch.get_num_threads(),
        "batch": config["batch_size"],
        "nice": os_.nice(0),
        "pid": os_.getpid(),
        "omp_num_threads": os_.environ.get("OMP_NUM_THREADS"),
    }
    Path(config["out"], TIMES_FILE.format(rank=rank)).write_text(json_.dumps(record))


def trainer_run(config: dict, out: str, workers: int) -> dict:
    """Fit timed_train_func with `workers` workers; returns the per-rank records and the fit's wall time."""
    from worldmodel.train.launcher import LaunchOptions, launch

    started = time.monotonic()
    launch("vae", timed_train_func, config, LaunchOptions(out=out, workers=workers))
    fit_s = time.monotonic() - started
    records = []
    for rank in range(workers):
        with open(os.path.join(out, TIMES_FILE.format(rank=rank))) as f:
            records.append(json.load(f))
    return {"records": records, "fit_s": fit_s, "fit_started": started, "out": out}


# -- analysis -------------------------------------------------------------------
def rank_rate(times: list[float], batch: int, start: float, stop: float) -> tuple[float, int, float]:
    """(samples/s, steps, seconds) of the steps whose start lies in [start, stop], end to end."""
    t = np.asarray(times)
    inside = np.flatnonzero((t >= start) & (t <= stop))
    first, last = int(inside[0]), int(inside[-1])
    steps, seconds = last - first, float(t[last] - t[first])
    return steps * batch / seconds, steps, seconds


def analyse(records: list[dict], warmup: int, checkpoint_every: int | None) -> dict:
    """Per-rank and aggregate rates over the window common to all ranks, after `warmup` steps."""
    start = max(r["times"][warmup] for r in records)
    stop = min(r["times"][-1] for r in records)
    if stop <= start:
        raise SystemExit("the timed window is empty: raise --seconds or lower --warmup-steps")
    per_rank = [rank_rate(r["times"], r["batch"], start, stop) for r in records]
    result = {
        "samples_per_s": sum(rate for rate, _, _ in per_rank),
        "rank_samples_per_s": [rate for rate, _, _ in per_rank],
        "steps": per_rank[0][1],
        "seconds": stop - start,
        "window": (start, stop),
        "pids": {r["pid"] for r in records},
        "threads": [r["threads"] for r in records],
    }
    # Step durations of rank 0 after warm-up: times[k+1] - times[k] is step k+1 (1-based) with what follows it.
    t = np.asarray(records[0]["times"][warmup:])
    durations = np.diff(t)
    steps = np.arange(warmup + 1, warmup + 1 + len(durations))
    result["median_step_ms"] = float(np.median(durations) * 1e3)
    if checkpoint_every:
        at_checkpoint = steps % checkpoint_every == 0
        result["checkpoints_timed"] = int(at_checkpoint.sum())
        if at_checkpoint.any():
            result["checkpoint_extra_ms"] = float((durations[at_checkpoint].mean() - np.median(durations)) * 1e3)
            plain = durations[~at_checkpoint]
            result["samples_per_s_no_ckpt"] = len(plain) * records[0]["batch"] / float(plain.sum()) * len(records)
    return result


def csv_rank0_rate(out: str, warmup: int, batch: int) -> float | None:
    """Rank 0's samples/s from RUN/metrics.csv: rows whose whole log window lies after `warmup` steps."""
    from worldmodel.train.metrics import read_metrics

    rows = read_metrics(os.path.join(out, "metrics.csv"))
    samples = seconds = 0.0
    previous = 0
    for row in rows:
        step, rate = int(row["step"]), row.get("charts/samples_per_second", 0.0)
        if previous >= warmup and rate > 0:
            n = (step - previous) * batch
            samples += n
            seconds += n / rate
        previous = step
    return samples / seconds if seconds else None


# -- store ----------------------------------------------------------------------
def collect_store(args, path: str) -> dict:
    from envs.collect import collect
    from worldmodel.raycluster import init_ray

    workers = 2
    episodes = workers * math.ceil(math.ceil(args.frames / args.episode_steps) / workers)
    print(f"collecting {episodes} x {args.episode_steps} steps of {args.env} with {workers} Ray workers "
          f"into {path} ...", flush=True)
    import ray

    started = init_ray()
    try:
        summary = collect(args.env, path, episodes=episodes, max_steps=args.episode_steps, workers=workers,
                          seed=args.seed, show_progress=False)
    finally:
        if started:
            ray.shutdown()
    print(f"  {summary.steps} steps in {summary.seconds:.1f} s", flush=True)
    return {"collect_s": summary.seconds}


# -- report ---------------------------------------------------------------------
def print_table(args, f: dict, n: int) -> None:
    ratio = f["b_over_a"]
    rows = [
        (f"(a) plain PyTorch loop, {f['a_threads']} threads", f"{f['a_samples_per_s']:,.0f}", "", "", ""),
        (f"(b) TorchTrainer, 1 worker x {f['b_threads']} threads", f"{f['b_samples_per_s']:,.0f}", "", "", ""),
        (f"(c) TorchTrainer, {n} workers x {f['c_threads']} thread(s), sum", f"{f['c_samples_per_s']:,.0f}",
         "", "", ""),
        ("(b)/(a)", "", f"{ratio:.3f}x", f">= {TARGET_TRAINER_VS_PLAIN}x",
         "PASS" if ratio >= TARGET_TRAINER_VS_PLAIN else "MISS"),
        ("(c)/(b)", "", f"{f['c_over_b']:.3f}x", "", ""),
    ]
    if "a_idle_samples_per_s" in f:
        rows.insert(3, (f"(a') plain loop again, Ray up and idle, {f['a_idle_threads']} threads",
                        f"{f['a_idle_samples_per_s']:,.0f}", "", "", ""))
        rows.append(("(b)/(a')", "", f"{f['b_over_a_idle']:.3f}x", "", ""))
    print()
    print(f"train benchmark: ConvVAE preset {args.preset}, batch {f['batch']} per worker, {f['frames']:,} frames of "
          f"{f['env']}, {os.cpu_count()} CPUs, {f['wall_s']:.0f} s")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'samples/s':>9}  {'ratio':>7}  {'target':>8}  result")
    for name, figure, ratio_, target, result in rows:
        print(f"{name:<{width}}  {figure:>9}  {ratio_:>7}  {target:>8}  {result}")
    csv_b = f"{f['b_csv_rank0']:,.0f}" if f.get("b_csv_rank0") else "-"
    csv_c = f"{f['c_csv_rank0']:,.0f}" if f.get("c_csv_rank0") else "-"
    ranks = ", ".join(f"{r:,.0f}" for r in f["c_rank_samples_per_s"])
    notes = [
        f"timed from the start of step {args.warmup_steps + 1} to the start of the last step (per-step timestamps): "
        f"(a) {f['a_steps']} steps/{f['a_seconds']:.1f} s, (b) {f['b_steps']} steps/{f['b_seconds']:.1f} s, "
        f"(c) {f['c_steps']} steps per rank/{f['c_seconds']:.1f} s common to all ranks",
        f"excluded: Ray start-up {f['ray_start_s']:.1f} s; TorchTrainer start-up to the first step (b) "
        f"{f['b_startup_s']:.1f} s, (c) {f['c_startup_s']:.1f} s; fit() in all (b) {f['b_fit_s']:.1f} s, "
        f"(c) {f['c_fit_s']:.1f} s",
        f"included: checkpoints every {f['checkpoint_every']} steps ((b) {f['b_checkpoints_timed']} timed, "
        f"+{f.get('b_checkpoint_extra_ms', 0):.0f} ms each; without them (b) "
        f"{f.get('b_samples_per_s_no_ckpt', f['b_samples_per_s']):,.0f}/s) and metrics every {f['log_every']} steps",
        f"median step: (a) {f['a_median_step_ms']:.1f} ms, (b) {f['b_median_step_ms']:.1f} ms, "
        f"(c) rank 0 {f['c_median_step_ms']:.1f} ms",
        f"(c) per rank: {ranks} samples/s (DDP all-reduces every step, so the ranks move in lockstep); "
        f"metrics.csv rank-0 rate after warm-up: (b) {csv_b}, (c) {csv_c} (x{n} = "
        f"{(f.get('c_csv_rank0') or 0) * n:,.0f})",
        f"Ray workers: nice {f['worker_nice']}, OMP_NUM_THREADS={f['worker_omp']}; load average before "
        f"(a) {f['a_load']:.2f}, (b) {f['b_load']:.2f}, (c) {f['c_load']:.2f}",
    ]
    for key, label in (("a", "(a)"), ("b", "(b)"), ("c", "(c)"), ("a_idle", "(a')")):
        cpu = f.get(f"{key}_cpu")
        if cpu:
            top = ", ".join(f"{n} {v:.2f}" for g, n, v in cpu["top"][:3])
            per_cpu = f.get(f"{key}_samples_per_cpu_s")
            notes.append(f"CPU cores in use during {label}: training {cpu['trainer']:.2f} "
                         f"({per_cpu or 0:,.0f} samples per CPU-s), this run's Ray processes and driver "
                         f"{cpu['ray']:.2f}, foreign {cpu['foreign']:.2f} (most: {top})")
    foreign = max((f[k]["foreign"] for k in ("a_cpu", "b_cpu", "c_cpu", "a_idle_cpu") if f.get(k)), default=0.0)
    if foreign > 0.1:
        notes.append(f"WARNING: processes foreign to this run used up to {foreign:.2f} cores during a timed window: "
                     "the figures are spoiled by other load; rerun on an idle machine")
    for note in notes:
        print(f"  {note}")


def main(argv=None) -> int:
    args = parse_args(argv)
    wall_start = time.monotonic()
    created_workdir = args.workdir is None or not os.path.exists(args.workdir)
    workdir = tempfile.mkdtemp(prefix="wm-bench-train-") if args.workdir is None else args.workdir
    os.makedirs(workdir, exist_ok=True)
    run_1w, run_nw = os.path.join(workdir, "run-1w"), os.path.join(workdir, f"run-{args.workers}w")
    ours = [run_1w, run_nw] + ([] if args.store else [os.path.join(workdir, "store.zarr")])
    clash = [p for p in ours if os.path.exists(p)]
    if clash:
        raise SystemExit(f"{clash[0]} exists: choose another --workdir (or pass --store to reuse a store)")
    figures: dict = {}
    monitor = CpuMonitor().start()
    try:
        print(f"train benchmark: workdir {workdir}", flush=True)
        store_path = args.store or os.path.join(workdir, "store.zarr")
        if not args.store:
            figures.update(collect_store(args, store_path))
        from worldmodel.data import EpisodeStore

        store = EpisodeStore.open(store_path)
        figures.update(env=store.spec.env_id or args.env, frames=store.num_steps, episodes=store.num_episodes)
        probe = build_config(args, store_path, 1)
        figures["batch"] = probe["batch_size"]
        W, B = args.warmup_steps, probe["batch_size"]

        # (a): before Ray starts; the threads a 1-worker TorchTrainer will get (checked against (b) below).
        threads = default_threads(1)
        figures["a_load"] = os.getloadavg()[0]
        print(f"(a) plain loop, {threads} threads, {W} warm-up steps + {args.seconds:.0f} s ...", flush=True)
        plain = plain_loop(probe, threads, W, args.seconds)
        a = analyse([plain], W, None)
        figures["a_cpu"] = monitor.usage(*a["window"], a["pids"])
        figures.update(a_samples_per_s=a["samples_per_s"], a_steps=a["steps"], a_seconds=a["seconds"],
                       a_threads=threads, a_median_step_ms=a["median_step_ms"])
        print(f"  {a['samples_per_s']:,.0f} samples/s", flush=True)

        import ray

        from worldmodel.raycluster import init_ray

        started = time.monotonic()
        ray_started = init_ray()
        figures["ray_start_s"] = time.monotonic() - started
        try:
            # (b): steps for about --seconds at (a)'s rate.
            steps_b = W + max(20, math.ceil(args.seconds * a["samples_per_s"] / B))
            if ray_threads(1) != threads:
                print(f"  note: a 1-worker TorchTrainer gets {ray_threads(1)} threads, (a) ran with {threads}")
            figures["b_load"] = os.getloadavg()[0]
            config_b = build_config(args, store_path, steps_b)
            figures.update(checkpoint_every=config_b["checkpoint_every"], log_every=config_b["log_every"])
            print(f"(b) TorchTrainer, 1 worker, {steps_b} steps ...", flush=True)
            b_run = trainer_run(config_b, run_1w, 1)
            b = analyse(b_run["records"], W, figures["checkpoint_every"])
            figures.update(
                b_samples_per_s=b["samples_per_s"], b_steps=b["steps"], b_seconds=b["seconds"],
                b_threads=b["threads"][0], b_median_step_ms=b["median_step_ms"], b_fit_s=b_run["fit_s"],
                b_startup_s=b_run["records"][0]["times"][0] - b_run["fit_started"],
                b_checkpoints_timed=b.get("checkpoints_timed", 0),
                b_csv_rank0=csv_rank0_rate(run_1w, W, B),
                worker_nice=b_run["records"][0]["nice"], worker_omp=b_run["records"][0]["omp_num_threads"],
            )
            figures["b_cpu"] = monitor.usage(*b["window"], b["pids"])
            for key in ("checkpoint_extra_ms", "samples_per_s_no_ckpt"):
                if key in b:
                    figures[f"b_{key}"] = b[key]
            print(f"  {b['samples_per_s']:,.0f} samples/s", flush=True)

            # (c): steps per rank for about --seconds if N workers matched (b) together.
            n = args.workers
            steps_c = W + max(20, math.ceil(args.seconds * b["samples_per_s"] / (B * n)))
            figures["c_load"] = os.getloadavg()[0]
            print(f"(c) TorchTrainer, {n} workers, {steps_c} steps each ...", flush=True)
            c_run = trainer_run(build_config(args, store_path, steps_c), run_nw, n)
            c = analyse(c_run["records"], W, figures["checkpoint_every"])
            figures.update(
                c_samples_per_s=c["samples_per_s"], c_rank_samples_per_s=c["rank_samples_per_s"],
                c_steps=c["steps"], c_seconds=c["seconds"], c_threads=c["threads"][0],
                c_median_step_ms=c["median_step_ms"], c_fit_s=c_run["fit_s"],
                c_startup_s=min(r["times"][0] for r in c_run["records"]) - c_run["fit_started"],
                c_csv_rank0=csv_rank0_rate(run_nw, W, B),
                c_cpu=monitor.usage(*c["window"], c["pids"]),
            )
            print(f"  {c['samples_per_s']:,.0f} samples/s", flush=True)

            # (a'): the plain loop again, Ray up and idle: Ray's background cost, and drift since (a).
            if args.idle_seconds:
                idle_threads = ray_threads(1)
                print(f"(a') plain loop, Ray up and idle, {idle_threads} threads, {args.idle_seconds:.0f} s ...",
                      flush=True)
                again = analyse([plain_loop(probe, idle_threads, W, args.idle_seconds)], W, None)
                figures["a_idle_cpu"] = monitor.usage(*again["window"], again["pids"])
                figures.update(a_idle_samples_per_s=again["samples_per_s"], a_idle_threads=idle_threads,
                               b_over_a_idle=figures["b_samples_per_s"] / again["samples_per_s"])
        finally:
            if ray_started:
                ray.shutdown()
        for key in ("a", "b", "c", "a_idle"):  # samples per CPU-second the training processes got
            cpu = figures.get(f"{key}_cpu")
            if cpu and cpu["trainer"] > 0:
                figures[f"{key}_samples_per_cpu_s"] = figures[f"{key}_samples_per_s"] / cpu["trainer"]
        figures["b_over_a"] = figures["b_samples_per_s"] / figures["a_samples_per_s"]
        figures["c_over_b"] = figures["c_samples_per_s"] / figures["b_samples_per_s"]
        figures["wall_s"] = time.monotonic() - wall_start
        print_table(args, figures, args.workers)

        def rounded(v):
            if isinstance(v, float):
                return round(v, 4)
            if isinstance(v, list):
                return [rounded(x) for x in v]
            return v

        print(json.dumps({"benchmark": "train", "preset": args.preset, "workers": args.workers,
                          **{k: rounded(v) for k, v in figures.items()}}))
    finally:
        monitor.stop()
        if not args.keep:
            if created_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                for path in ours:
                    shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
