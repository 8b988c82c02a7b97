"""Benchmark of V's training step: plain PyTorch vs Ray Train's TorchTrainer, 1 and N workers.

Samples/s of the ConvVAE train step (random single frames from a real store, Adam),
measured side by side in one run and printed as a table, then as one line of JSON:

(a) a plain PyTorch loop in this process: the same model config, batch size, sampler
    (`WindowSampler(window=1, keys=("image",))`, the same per-step rng as the loop),
    optimizer and thread count as a 1-worker TorchTrainer gets (launcher.py: the
    CPUs Ray offers divided by the workers). No Ray running.
(b) `worldmodel.train.vae.train_func` under TorchTrainer (`launch`, as `train_vae`
    calls it), 1 worker.                          floor (b)/(a) >= 0.9 (issue 15)
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

The speed of this kind of machine drifts by 10-35% from one minute to the next (seen here on
a shared VM with no other process in it running: same code, same cores, other samples per
CPU-second), which would swamp a 5% target. So every TorchTrainer run is sandwiched
between two plain-loop runs, a b a c a b a c a (--repeats rounds), and each TorchTrainer
run is compared with the mean of the two plain runs around it; the ratios reported are the
medians of those paired ratios, (c)/(b) = median (c)/(a) over median (b)/(a). A /proc
sampler says how many CPU cores the trainer, this run's Ray processes and processes foreign
to the run used during each timed window, and warns when foreign load spoiled one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/train.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    add_device_argument, add_workdir_arguments, benchmark_parser, device_report, owned_outputs, require_positive,
    rounded, set_quiet_env, synchronize,
)

# Ray's driver-side progress bars otherwise patch print() to redraw themselves after every line,
# which splices the finished bars into the table.
set_quiet_env(RAY_TQDM_PATCH_PRINT="0")

import numpy as np  # noqa: E402

FLOOR_TRAINER_VS_PLAIN = 0.9
"""Issue 15's floor for one TorchTrainer worker vs the plain loop (it replaced the earlier target of 0.95x)."""
TIMES_FILE = "bench-step-times-rank{rank}.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description=(
            "Measure samples/s of V's (ConvVAE) train step side by side in one run: (a) a plain PyTorch loop in "
            "this process, (b) train_func under Ray Train's TorchTrainer with 1 worker, (c) with --workers "
            "workers (aggregate of all ranks); same model, batch, sampler, optimizer and (for a, b) threads. "
            "Reports (b)/(a) (floor >= 0.9) and (c)/(b), each TorchTrainer run against the mean of the plain "
            "runs just before and after it (the order is a b a c a b a c a: the machine's speed drifts). Times "
            "are taken from per-step timestamps recorded inside the workers, from step --warmup-steps + 1 on: "
            "Ray and trainer start-up are excluded, the loop's periodic checkpoints and logging are included. "
            "Prints a table, then one line of JSON; exits 0 whatever the figures."
        ),
        epilog=(
            "Reads: --store when given. Otherwise collects a store of --frames frames of --env with "
            "envs.collect.collect (2 Ray workers) first. Writes: only under --workdir (a temp dir by default): "
            "store.zarr (~7 MB for 3,000 frames, unless --store), run-1w-R/ and run-Nw-R/ per round R (RUN/metrics.csv, "
            "Ray checkpoints, per-rank step timestamps); removed at the end unless --keep; plus Ray's own session "
            "files. Takes: about 5 minutes on 2 idle CPUs with the defaults (collection ~15 s; per round two "
            "plain runs of --plain-seconds and two TorchTrainer runs of about --seconds, each of these with "
            "~15 s of Ray and trainer start-up and shutdown; a last plain run), so about "
            "--repeats x (2 x --plain-seconds + 2 x --seconds + 40 s) + --plain-seconds with --store. "
            "--device cuda: the model trains on the GPU in (a), and each TorchTrainer worker gets a GPU of its own "
            "(ScalingConfig use_gpu); (c) then needs --workers GPUs and is skipped with fewer. "
            "Run it on an otherwise idle machine: "
            "other load slows some configurations more than others and spoils the ratios (the table says how "
            "many CPU cores processes foreign to the run took during each timed window)."
        ),
    )
    parser.add_argument("--store", default=None, help="train on this existing store (default: collect one)")
    parser.add_argument("--env", default="CarRacing-v3", help="source env to collect when --store is not given")
    parser.add_argument("--frames", type=int, default=3000, help="frames to collect when --store is not given")
    parser.add_argument("--episode-steps", type=int, default=500, help="max steps of each collected episode")
    add_workdir_arguments(parser, "the store and the runs")
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "paper"), help="VAE preset")
    parser.add_argument("--batch", type=int, default=None, help="frames per step per worker (default: the preset's)")
    parser.add_argument("--workers", type=int, default=2, help="workers of configuration (c)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="measured seconds of each TorchTrainer run (its steps are sized from the plain run "
                             "before it)")
    parser.add_argument("--plain-seconds", type=float, default=15.0, help="measured seconds of each plain run")
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of a b a c (then a last a): each TorchTrainer configuration runs this often")
    parser.add_argument("--warmup-steps", type=int, default=50, help="steps not timed at the start of each run")
    parser.add_argument("--seed", type=int, default=0, help="seed of collection, model and batches")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be >= 2")
    if args.seconds <= 0 or args.plain_seconds <= 0:
        parser.error("--seconds and --plain-seconds must be > 0")
    require_positive(parser, args, ("frames", "episode_steps", "warmup_steps", "repeats"))
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
            if argv and " " in argv[0]:  # a process title set in place, e.g. "ray-dashboard-JobHead-0 (...)"
                name = argv[0].split()[0]
            elif argv and "python" in os.path.basename(argv[0]) and len(argv) > 1:
                flags = [a for a in argv[1:] if a.startswith("-")]
                if "-c" in argv[1:-1]:
                    name = "python -c " + argv[argv.index("-c") + 1]
                elif "-m" in argv[1:-1]:
                    name = "python -m " + argv[argv.index("-m") + 1]
                else:
                    rest = [a for a in argv[1:] if a not in flags]
                    name = os.path.basename(rest[0]) if rest else "python"
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
    from worldmodel.train.config import TrainConfig
    from worldmodel.train.launcher import common_spec, store_locations
    from worldmodel.train.presets import get_preset

    spec = common_spec([store_path])
    chosen = get_preset("vae", args.preset)
    config = TrainConfig.from_preset("vae", args.preset, stores=store_locations([store_path]),
                                     model=VAEConfig.from_spec(spec, **chosen.model).to_dict(), max_steps=max_steps,
                                     seed=args.seed)
    if args.batch is not None:
        config = config.replace(batch_size=args.batch)
    return config.to_dict()


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
def plain_loop(config: dict, threads: int, warmup: int, seconds: float, device: str = "cpu") -> dict:
    """train_loop's step without Ray: sample, to tensors, loss, backward, Adam; runs `warmup` steps, then
    until `seconds` have passed. Returns the step-start timestamps (the same measure as in the workers: the
    device's queued work is waited for before each one)."""
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
        model = ConvVAE(VAEConfig.from_dict(config["model"])).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
        batch_size, seed = config["batch_size"], config["seed"]
        times: list[float] = []
        step, deadline = 0, math.inf
        while True:
            step += 1
            synchronize(device)
            now = time.monotonic()
            times.append(now)
            if step == warmup + 1:
                deadline = now + seconds
            elif now >= deadline:
                break  # the start of a step that is not run: it closes the timed window
            batch = sampler.sample(batch_size, batch_rng(seed, 0, step))
            images = torch.from_numpy(np.ascontiguousarray(batch["image"])).to(device)
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

    The timestamp is taken when the loop asks the sampler for the step's batch, after the worker's GPU (if
    it has one) finished its queued work, as in the plain loop; the wrapper adds one clock read and one list
    append per step.
    """
    import json as json_
    import os as os_
    import time as time_
    from pathlib import Path

    import ray.train
    import ray.train.torch
    import torch

    from worldmodel.data import WindowSampler
    from worldmodel.train.vae import train_func

    times: list[float] = []
    original = WindowSampler.sample
    device = ray.train.torch.get_device()

    def sample(self, *args, **kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
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
        "device": str(device),
    }
    Path(config["out"], TIMES_FILE.format(rank=rank)).write_text(json_.dumps(record))


def trainer_run(config: dict, out: str, workers: int, device: str) -> dict:
    """Fit timed_train_func with `workers` workers, each on a GPU of its own when `device` is cuda (Ray
    assigns which); returns the per-rank records and the fit's wall time."""
    from worldmodel.train.config import TrainConfig
    from worldmodel.train.launcher import LaunchOptions, launch

    gpus = 1.0 if device.startswith("cuda") else 0.0
    started = time.monotonic()
    launch(timed_train_func, TrainConfig.from_dict(config), LaunchOptions(out=out, workers=workers, gpus_per_worker=gpus))
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


# -- runs -----------------------------------------------------------------------
def gpu_needs(args) -> dict:
    """GPUs on this machine and GPUs (c) needs: one per worker (two DDP ranks cannot share one GPU under NCCL)."""
    import torch

    cuda = args.device.startswith("cuda")
    return {"gpus": torch.cuda.device_count() if cuda else 0, "gpus_needed": args.workers if cuda else 0}


def run_plain(args, probe: dict, threads: int, seconds: float, monitor: CpuMonitor, label: str) -> dict:
    W = args.warmup_steps
    load = os.getloadavg()[0]
    print(f"{label} plain loop, {threads} threads, {W} warm-up steps + {seconds:.0f} s ...", flush=True)
    a = analyse([plain_loop(probe, threads, W, seconds, args.device)], W, None)
    run = {"samples_per_s": a["samples_per_s"], "steps": a["steps"], "seconds": a["seconds"], "threads": threads,
           "median_step_ms": a["median_step_ms"], "load": load, "cpu": monitor.usage(*a["window"], a["pids"])}
    print(f"  {run['samples_per_s']:,.0f} samples/s", flush=True)
    return run


def run_trainer(args, store_path: str, out: str, workers: int, steps: int, monitor: CpuMonitor, label: str) -> dict:
    W = args.warmup_steps
    config = build_config(args, store_path, steps)
    load = os.getloadavg()[0]
    print(f"{label} TorchTrainer, {workers} worker(s), {steps} steps each ...", flush=True)
    fit = trainer_run(config, out, workers, args.device)
    records = fit["records"]
    t = analyse(records, W, config["checkpoint_every"])
    run = {
        "samples_per_s": t["samples_per_s"], "rank_samples_per_s": t["rank_samples_per_s"], "steps": t["steps"],
        "seconds": t["seconds"], "threads": t["threads"][0], "median_step_ms": t["median_step_ms"], "load": load,
        "cpu": monitor.usage(*t["window"], t["pids"]), "fit_s": fit["fit_s"],
        "startup_s": min(r["times"][0] for r in records) - fit["fit_started"],
        "csv_rank0": csv_rank0_rate(out, W, config["batch_size"]),
        "checkpoint_every": config["checkpoint_every"], "log_every": config["log_every"],
        "checkpoints_timed": t.get("checkpoints_timed", 0),
        "checkpoint_extra_ms": t.get("checkpoint_extra_ms"), "samples_per_s_no_ckpt": t.get("samples_per_s_no_ckpt"),
        "nice": records[0]["nice"], "omp_num_threads": records[0]["omp_num_threads"], "device": records[0]["device"],
    }
    print(f"  {run['samples_per_s']:,.0f} samples/s", flush=True)
    return run


def paired(runs: list[dict], plains: list[tuple[dict, dict]]) -> list[float]:
    """Each run's samples/s over the mean of the plain runs just before and after it."""
    return [r["samples_per_s"] / ((p["samples_per_s"] + q["samples_per_s"]) / 2) for r, (p, q) in
            zip(runs, plains)]


# -- report ---------------------------------------------------------------------
def print_table(args, f: dict, runs: dict[str, list[dict]]) -> None:
    n = args.workers
    a, b, c = runs["a"], runs["b"], runs.get("c")
    ratio = f["b_over_a"]

    def figures(rs: list[dict]) -> str:
        return ", ".join(f"{r['samples_per_s']:,.0f}" for r in rs)

    rows = [
        (f"(a) plain PyTorch loop, {a[0]['threads']} threads", f"{f['a_samples_per_s']:,.0f}", "", "", "", figures(a)),
        (f"(b) TorchTrainer, 1 worker x {b[0]['threads']} threads", f"{f['b_samples_per_s']:,.0f}", "", "", "",
         figures(b)),
        ("(b)/(a), each (b) / mean of the (a) around it", "", f"{ratio:.3f}x", f">= {FLOOR_TRAINER_VS_PLAIN}x",
         "PASS" if ratio >= FLOOR_TRAINER_VS_PLAIN else "MISS", ", ".join(f"{x:.3f}" for x in f["b_over_a_each"])),
    ]
    if c:
        rows[2:2] = [(f"(c) TorchTrainer, {n} workers x {c[0]['threads']} thread(s), sum", f"{f['c_samples_per_s']:,.0f}",
                      "", "", "", figures(c))]
        rows += [
            ("(c)/(a), the same way", "", f"{f['c_over_a']:.3f}x", "", "", ", ".join(f"{x:.3f}" for x in f["c_over_a_each"])),
            ("(c)/(b) = (c)/(a) / (b)/(a)", "", f"{f['c_over_b']:.3f}x", "", "", ""),
        ]
    else:
        rows.append((f"(c) {n} workers: skipped, {f['gpus']} GPU(s) for {f['gpus_needed']} ranks", "", "", "", "", ""))
    print()
    print(f"train benchmark: ConvVAE preset {args.preset}, batch {f['batch']} per worker, {f['frames']:,} frames of "
          f"{f['env']}, on {f['device']} ({f['device_name']}), {os.cpu_count()} CPUs, {f['wall_s']:.0f} s")
    width = max(len(r[0]) for r in rows)
    print(f"{'measure (median of the runs)':<{width}}  {'samples/s':>9}  {'ratio':>7}  {'target':>8}  {'result':<6}  runs")
    for name, figure, ratio_, target, result, each in rows:
        print(f"{name:<{width}}  {figure:>9}  {ratio_:>7}  {target:>8}  {result:<6}  {each}")
    notes = timing_notes(args, f, runs)
    for key in runs:
        label = f"({key})"
        cpus = [r["cpu"] for r in runs[key] if r.get("cpu")]
        if not cpus:
            continue
        per_cpu = [r["samples_per_s"] / r["cpu"]["trainer"] for r in runs[key] if r.get("cpu") and r["cpu"]["trainer"]]
        tops: dict[str, float] = {}
        for cpu in cpus:
            for _, name, value in cpu["top"]:
                tops[name] = max(tops.get(name, 0.0), value)
        top = ", ".join(f"{name} {v:.2f}" for name, v in sorted(tops.items(), key=lambda x: -x[1])[:3])
        notes.append(
            f"CPU cores in use during {label}: training " + ", ".join(f"{x['trainer']:.2f}" for x in cpus)
            + " (" + ", ".join(f"{x:,.0f}" for x in per_cpu) + " samples per CPU-s); this run's Ray processes and "
            "driver " + ", ".join(f"{x['ray']:.2f}" for x in cpus) + "; foreign "
            + ", ".join(f"{x['foreign']:.2f}" for x in cpus) + f" (most: {top or '-'})"
        )
    if f["foreign_max"] > 0.1:
        notes.append(f"WARNING: processes foreign to this run used up to {f['foreign_max']:.2f} cores during a timed "
                     "window: the figures are spoiled by other load; rerun on an idle machine")
    for note in notes:
        print(f"  {note}")


def timing_notes(args, f: dict, runs: dict[str, list[dict]]) -> list[str]:
    """What was timed and what not, step times, (c)'s ranks and the workers' settings."""
    n, a, b, c = args.workers, runs["a"], runs["b"], runs.get("c", [])
    fb = max(b, key=lambda r: r["samples_per_s"])
    fc = max(c, key=lambda r: r["samples_per_s"]) if c else None
    csv_b = ", ".join(f"{r['csv_rank0']:,.0f}" for r in b if r.get("csv_rank0"))
    csv_c = ", ".join(f"{r['csv_rank0']:,.0f}" for r in c if r.get("csv_rank0"))
    notes = [
        f"order: {f['order']}; timed from the start of step {args.warmup_steps + 1} to the start of the last step "
        f"(per-step timestamps): (a) ~{a[0]['seconds']:.0f} s, (b) {fb['steps']} steps/{fb['seconds']:.0f} s"
        + (f", (c) {fc['steps']} steps per rank/{fc['seconds']:.0f} s common to all ranks" if fc else ""),
        f"excluded: Ray start-up ({', '.join(f'{s:.1f}' for s in f['ray_start_s'])} s); TorchTrainer start-up to "
        f"the first step (b) {fb['startup_s']:.1f} s" + (f", (c) {fc['startup_s']:.1f} s" if fc else "")
        + f"; fit() in all (b) {fb['fit_s']:.1f} s" + (f", (c) {fc['fit_s']:.1f} s" if fc else ""),
        f"included: checkpoints every {fb['checkpoint_every']} steps ((b) {fb['checkpoints_timed']} timed, "
        f"+{fb['checkpoint_extra_ms'] or 0:.0f} ms each; without them (b) "
        f"{fb['samples_per_s_no_ckpt'] or fb['samples_per_s']:,.0f}/s) and metrics every {fb['log_every']} steps",
        "median step: (a) " + ", ".join(f"{r['median_step_ms']:.1f}" for r in a) + " ms; (b) "
        + ", ".join(f"{r['median_step_ms']:.1f}" for r in b) + " ms"
        + ("; (c) rank 0 " + ", ".join(f"{r['median_step_ms']:.1f}" for r in c) + " ms" if c else ""),
    ]
    if c:
        notes.append("(c) per rank: " + "; ".join(", ".join(f"{x:,.0f}" for x in r["rank_samples_per_s"]) for r in c)
                     + " samples/s (DDP all-reduces every step: the ranks move in lockstep); metrics.csv rank-0 rate "
                     f"after warm-up: (b) {csv_b or '-'}; (c) {csv_c or '-'} (x{n} for the sum)")
    notes.append(f"Ray workers: nice {fb['nice']}, OMP_NUM_THREADS={fb['omp_num_threads']} (the loop sets torch's "
                 f"threads), device {fb['device']}; load average before each run: "
                 + "; ".join(f"({key}) " + ", ".join(f"{r['load']:.2f}" for r in rs) for key, rs in runs.items()))
    return notes


def run_in_order(args, store_path: str, workdir: str, probe: dict, monitor: CpuMonitor, figures: dict) -> dict:
    """The runs a b a c a b a c a: each TorchTrainer run (b: 1 worker, c: N) between two plain runs (a, no
    Ray running); returns the runs of each key, and puts into `figures` the paired ratios and the order."""
    B, W, n = probe["batch_size"], args.warmup_steps, args.workers
    trainers = ("b", "c") if figures["gpus_needed"] <= figures["gpus"] else ("b",)  # (c): a GPU per worker
    runs: dict[str, list[dict]] = {"a": [], **{key: [] for key in trainers}}
    threads = default_threads(1)  # what a 1-worker TorchTrainer gets (checked once Ray is up)
    order = [("a", None)]
    for r in range(args.repeats):
        for key in trainers:
            order += [(key, r), ("a", None)]
    figures["order"] = " ".join(key for key, _ in order)
    plains_around: dict[str, list[tuple[int, int]]] = {key: [] for key in trainers}
    for position, (key, r) in enumerate(order):
        tag = f"[{position + 1}/{len(order)}]"
        if key == "a":
            runs["a"].append(run_plain(args, probe, threads, args.plain_seconds, monitor, f"{tag} (a)"))
            continue
        plains_around[key].append((len(runs["a"]) - 1, len(runs["a"])))
        if key == "b":  # steps for about --seconds at the rate of the plain run before
            workers, steps = 1, W + max(20, math.ceil(args.seconds * runs["a"][-1]["samples_per_s"] / B))
        else:  # steps per rank for about --seconds if N workers together matched the last (b)
            workers, steps = n, W + max(20, math.ceil(args.seconds * runs["b"][-1]["samples_per_s"] / (B * n)))
        out = os.path.join(workdir, f"run-{workers}w-{r + 1}")
        runs[key].append(run_on_ray(args, store_path, out, workers, steps, monitor, f"{tag} ({key})", threads, figures))
    for key in trainers:
        each = paired(runs[key], [(runs["a"][i], runs["a"][j]) for i, j in plains_around[key]])
        figures.update({f"{key}_over_a": statistics.median(each), f"{key}_over_a_each": each})
    return runs


def run_on_ray(args, store_path: str, out: str, workers: int, steps: int, monitor: CpuMonitor, tag: str,
               threads: int, figures: dict) -> dict:
    """One TorchTrainer run on a Ray started for it alone (its start-up time goes to figures["ray_start_s"])."""
    import ray

    from worldmodel.raycluster import init_ray

    started = time.monotonic()
    ray_started = init_ray()
    figures["ray_start_s"].append(time.monotonic() - started)
    try:
        if ray_threads(1) != threads:
            print(f"  note: a 1-worker TorchTrainer gets {ray_threads(1)} threads, (a) ran with {threads}")
        return run_trainer(args, store_path, out, workers, steps, monitor, tag)
    finally:
        if ray_started:
            ray.shutdown()


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_report(args.device)  # one clear line, before any work, when the device is unusable
    wall_start = time.monotonic()
    ours = [f"run-{w}w-{r + 1}" for r in range(args.repeats) for w in (1, args.workers)]
    ours += [] if args.store else ["store.zarr"]
    with owned_outputs(args, "wm-bench-train-", ours, "or pass --store to reuse a store") as workdir:
        monitor = CpuMonitor().start()
        try:
            from worldmodel.data import EpisodeStore

            figures: dict = {**device, "ray_start_s": [], **gpu_needs(args)}
            print(f"train benchmark: workdir {workdir}", flush=True)
            store_path = args.store or os.path.join(workdir, "store.zarr")
            if not args.store:
                figures.update(collect_store(args, store_path))
            store = EpisodeStore.open(store_path)
            figures.update(env=store.spec.env_id or args.env, frames=store.num_steps, episodes=store.num_episodes)
            probe = build_config(args, store_path, 1)
            figures["batch"] = probe["batch_size"]
            runs = run_in_order(args, store_path, workdir, probe, monitor, figures)
            figures.update({f"{key}_samples_per_s": statistics.median(r["samples_per_s"] for r in runs[key]) for key in runs})
            figures.update({f"{key}_threads": runs[key][0]["threads"] for key in runs})
            if "c" in runs:
                figures["c_over_b"] = figures["c_over_a"] / figures["b_over_a"]
            figures["foreign_max"] = max((r["cpu"]["foreign"] for rs in runs.values() for r in rs if r.get("cpu")),
                                         default=0.0)
            figures["wall_s"] = time.monotonic() - wall_start
            print_table(args, figures, runs)
            print(json.dumps({"benchmark": "train", "preset": args.preset, "workers": args.workers,
                              "repeats": args.repeats, **rounded(figures), "runs": rounded(runs)}))
        finally:
            monitor.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
