"""Soak of the simulation service (issue 6): does a server stepping 200 sessions for minutes hold its memory?

A `worldmodel serve` subprocess on 127.0.0.1; --sessions 1-env sessions
(mostly raw pixels, some PNG, some latent) stepped round-robin by --threads
client threads at a bounded --rate, with the other calls agents make mixed in:
every 100th call a Reset, every minute --churn sessions closed and created
afresh. The server's resident memory (VmRSS of /proc/PID/status, or psutil when
installed) is sampled every --sample-seconds. Printed: each sample, then the
RSS before any session, at the first sample under load, at its peak and at
the end, the growth over the second half of the run, and the steps done.
A soak, not a stress test: the rate is kept well under what the machine can do.
--device: where the server's models run (`worldmodel serve --device`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

if not __package__:  # `python benchmarks/soak.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import (  # noqa: E402
    MODEL_NAME, ServeProcess, add_bundle_arguments, add_device_argument, benchmark_parser, build_bundle, device_report,
    random_actions, scratch_workdir, set_quiet_env,
)

set_quiet_env()

import numpy as np  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = benchmark_parser(
        __file__,
        description=(
            "Step --sessions sessions round-robin for --minutes against a `worldmodel serve` subprocess and "
            "sample the server's RSS every --sample-seconds; print start/peak/end RSS and the steps done."
        ),
        epilog=(
            "Reads: --bundle when given; otherwise builds the paper-size bundle of benchmarks/service.py first "
            "(about 2 minutes, CarRacing-v3 collection and a few training steps on an embedded Ray). Writes: only "
            "under --workdir (a temp dir by default, removed unless --keep): the bundle and serve.log. Takes: "
            "--minutes plus about 10 s (plus the bundle build). The server listens on 127.0.0.1 only."
        ),
    )
    add_bundle_arguments(parser)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to step")
    parser.add_argument("--sessions", type=int, default=200, help="sessions of 1 env, stepped round-robin")
    parser.add_argument("--threads", type=int, default=4, help="client threads, each owning a share of the sessions")
    parser.add_argument("--rate", type=float, default=40.0, help="Step calls per second, all threads together, at most")
    parser.add_argument("--churn", type=int, default=10, help="sessions closed and created afresh every minute")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="RSS sampling period")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.sessions < 1 or args.threads < 1 or args.rate <= 0 or args.sample_seconds <= 0:
        parser.error("--minutes, --sessions, --threads, --rate and --sample-seconds must be positive")
    return args


def rss_bytes(pid: int) -> int:
    """Resident memory of a process: psutil when installed, else VmRSS from /proc/PID/status (Linux)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.Process(pid).memory_info().rss
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f} MiB"


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.steps = self.resets = self.created = self.closed = 0
        self.errors: list[str] = []

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def session_options(index: int) -> dict:
    """Most sessions raw pixels; every 8th PNG, every 8th (offset 4) latent: every code path soaks."""
    if index % 8 == 0:
        return {"png": True}
    if index % 8 == 4:
        return {"observation": "latent"}
    return {}


def worker(address: str, spec, indices: list[int], churn: int, args, stop: threading.Event, counters: Counters,
           ready: threading.Barrier) -> None:
    """Own sessions `indices`: create them, wait for every thread to be ready, then step them round-robin
    at rate / threads calls per second until `stop`."""
    import grpc

    from services.client import SimulatorClient

    rng = np.random.default_rng(args.seed + indices[0])
    period = args.threads / args.rate
    churn_every = 60.0
    with SimulatorClient(address, timeout=60) as client:
        sessions = {}
        for i in indices:
            sessions[i] = client.create_session(MODEL_NAME, seed=args.seed + i, **session_options(i)).session_id
            client.reset(sessions[i])
        counters.add(created=len(indices))
        ready.wait(timeout=600)
        next_churn = time.monotonic() + churn_every
        calls, turn = 0, 0
        next_call = time.monotonic()
        while not stop.is_set():
            i = indices[turn % len(indices)]
            turn += 1
            try:
                if calls % 100 == 99:
                    client.reset(sessions[i])
                    counters.add(resets=1)
                else:
                    client.step(sessions[i], random_actions(spec, 1, rng))
                    counters.add(steps=1)
                if time.monotonic() >= next_churn:
                    next_churn += churn_every
                    for j in rng.choice(indices, size=min(churn, len(indices)), replace=False):
                        client.close_session(sessions[int(j)])
                        sessions[int(j)] = client.create_session(MODEL_NAME, **session_options(int(j))).session_id
                        client.reset(sessions[int(j)])
                    counters.add(closed=min(churn, len(indices)), created=min(churn, len(indices)))
            except grpc.RpcError as err:
                counters.errors.append(f"{err.code()}: {err.details()}")
                if len(counters.errors) > 50:
                    stop.set()
            calls += 1
            next_call += period
            delay = next_call - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_call = time.monotonic()  # behind: do not burst to catch up
        for session_id in sessions.values():
            try:
                client.close_session(session_id)
                counters.add(closed=1)
            except grpc.RpcError:
                pass


def main(argv=None) -> int:
    args = parse_args(argv)
    device = device_report(args.device)
    with scratch_workdir(args, "wm-soak-") as workdir:
        bundle = Path(args.bundle) if args.bundle else build_bundle(args, workdir)
        from worldmodel.bundle import read_bundle_config

        spec = read_bundle_config(bundle)["spec"]
        flags = ["--max-sessions", str(args.sessions + args.churn + 16), "--idle-ttl", "600", "--device", args.device]
        with ServeProcess({MODEL_NAME: bundle}, *flags, log=workdir / "serve.log") as server:
            idle = rss_bytes(server.pid)
            print(f"soak: {args.sessions} sessions, {args.threads} client threads, at most {args.rate:g} calls/s, "
                  f"{args.minutes:g} min; server pid {server.pid} on {server.address} ({device['device_name']}), "
                  f"RSS {mib(idle)} before any session",
                  flush=True)
            counters, stop = Counters(), threading.Event()
            shares = [share for t in range(args.threads) if (share := list(range(args.sessions))[t :: args.threads])]
            ready = threading.Barrier(len(shares) + 1)
            churns = [args.churn // len(shares) + (t < args.churn % len(shares)) for t in range(len(shares))]
            threads = [threading.Thread(target=worker, args=(server.address, spec, share, churn, args, stop, counters, ready),
                                        daemon=True) for share, churn in zip(shares, churns)]
            for thread in threads:
                thread.start()
            ready.wait(timeout=600)  # every session created and reset
            start = time.monotonic()
            sessions_made = rss_bytes(server.pid)
            print(f"  {counters.created} sessions created: RSS {mib(sessions_made)}", flush=True)
            samples: list[tuple[float, int, int]] = []
            end = start + 60 * args.minutes
            while not stop.is_set():
                stop.wait(min(args.sample_seconds, max(0.0, end - time.monotonic())))
                now = time.monotonic()
                if server.process.poll() is not None:
                    counters.errors.append(f"the server exited with {server.process.returncode}")
                    stop.set()
                    break
                samples.append((now - start, rss_bytes(server.pid), counters.steps))
                t, rss, steps = samples[-1]
                print(f"  t={t:6.0f} s  RSS {mib(rss):>12}  steps {steps:>8,}  resets {counters.resets:>5,}  "
                      f"sessions created {counters.created:>4}  errors {len(counters.errors)}", flush=True)
                if now >= end:
                    stop.set()
            for thread in threads:
                thread.join(timeout=120)
            elapsed = time.monotonic() - start
            returncode = server.stop()
        rss = [s[1] for s in samples]
        half = [s for s in samples if s[0] >= samples[-1][0] / 2] if samples else []
        growth = (half[-1][1] - half[0][1]) if len(half) > 1 else 0
        figures = {
            "rss_idle_mib": idle / 2**20,
            "rss_sessions_created_mib": sessions_made / 2**20,
            "rss_start_mib": rss[0] / 2**20 if rss else None,
            "rss_peak_mib": max(rss) / 2**20 if rss else None,
            "rss_end_mib": rss[-1] / 2**20 if rss else None,
            "rss_growth_second_half_mib": growth / 2**20,
            "steps": counters.steps, "resets": counters.resets, "steps_per_s": counters.steps / elapsed,
            "sessions_created": counters.created, "sessions_closed": counters.closed,
            "errors": len(counters.errors), "server_exit": returncode, "minutes": elapsed / 60,
            "load_avg": os.getloadavg()[0],
        }
        print()
        print(f"soak summary: {elapsed / 60:.1f} min, {args.sessions} sessions round-robin, "
              f"{counters.steps:,} steps ({figures['steps_per_s']:.1f}/s), {counters.resets:,} resets, "
              f"{counters.created} sessions created / {counters.closed} closed, {len(counters.errors)} errors, "
              f"server exit {returncode}; device {device['device']} ({device['device_name']}), "
              f"load average {figures['load_avg']:.1f}")
        if rss:
            print(f"  server RSS: {mib(idle)} idle, {mib(sessions_made)} once the sessions exist, "
                  f"{mib(rss[0])} at the first sample under load, peak {mib(max(rss))}, "
                  f"end {mib(rss[-1])}; second half of the run: {growth / 2**20:+.1f} MiB")
        for error in counters.errors[:5]:
            print(f"  error: {error}")
        print(json.dumps({"benchmark": "soak", **device, **{k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
