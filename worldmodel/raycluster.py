"""Start or join Ray the same way everywhere: embedded on 127.0.0.1, or the cluster a job runs in.

An embedded Ray belongs to the command that started it, and to no other:

- Its processes carry OWNER_ENV (the driver's pid and start time) in their environment. A driver
  killed with SIGKILL leaves Ray's DashboardAgent and RuntimeEnvAgent running (they ignore SIGTERM
  too), so every embedded start first kills the Ray processes whose owner is dead (`reap_orphans`).
- Ray starts its worker processes at nice 15 (its `worker_niceness`), below the driver and below anything
  else on the machine: on a shared machine the tasks and Ray Train workers then got only the CPU nobody
  else wanted (measured: 2 collection workers beside other load got 1.0 core in all, the same as 1). An
  embedded Ray runs the command's own work, so its workers run at the driver's priority
  (EMBEDDED_WORKER_NICENESS; a RAY_worker_niceness in the environment wins).
- Ray Train's actors find "the" cluster's dashboard by scanning the machine for GCS processes and
  /tmp/ray/ray_current_cluster (ray._private.services.get_ray_address_from_environment): with two
  embedded Rays they log "Found multiple active Ray instances" and may query the other one. The
  embedded start gives its Ray processes RAY_API_SERVER_ADDRESS, its own dashboard on a port it chose,
  so that discovery never runs there.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

# Before Ray starts: keep every Ray server on loopback (docs/notes.md) and send no usage stats.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
OWNER_ENV = "WORLDMODEL_RAY_OWNER"
"""`PID:START_TIME` of the driver that started an embedded Ray; set in every process of that Ray."""
WORKER_NICENESS_ENV = "RAY_worker_niceness"
"""Ray's config of the niceness its worker processes start at (Ray's default: 15)."""
EMBEDDED_WORKER_NICENESS = 0
"""An embedded Ray's workers compete for the CPU like the driver that started them."""
API_SERVER_ENV = "RAY_API_SERVER_ADDRESS"
"""Where Ray's state API (and `ray job`) look first, before any machine-wide discovery."""


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None, runtime_env: dict | None = None) -> bool:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start an embedded one.
    `runtime_env`: the runtime_env of this driver's job, as `ray.init` takes it.

    Returns True when this call started Ray (the caller may then shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, runtime_env=runtime_env)
        return True
    for key, value in LOOPBACK_ENV.items():  # inherited by the Ray processes started below
        os.environ.setdefault(key, value)
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is first imported; if something
    # imported it before us, the driver would still pick the machine's address.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    reap_orphans()
    dashboard_port = free_loopback_port()
    # Only the Ray processes started now carry these: our later subprocesses (a `ray job submit` to another
    # cluster, a child command with its own Ray) must not inherit this cluster's dashboard or owner.
    own_env = {API_SERVER_ENV: f"http://127.0.0.1:{dashboard_port}", OWNER_ENV: owner_mark(os.getpid()),
               WORKER_NICENESS_ENV: os.environ.get(WORKER_NICENESS_ENV, str(EMBEDDED_WORKER_NICENESS))}
    before = {key: os.environ.get(key) for key in own_env}
    os.environ.update(own_env)
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=True,  # Train v2 warns in a loop without it (docs/notes.md)
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            log_to_driver=True,
            runtime_env=runtime_env,
        )
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return True


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now (Ray refuses, rather than moves, if it is taken by then)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- orphans of killed drivers (Linux: /proc) ------------------------------------------------------------


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def owner_mark(pid: int) -> str:
    return f"{pid}:{process_start_time(pid)}"


def owner_is_alive(mark: str) -> bool:
    """Whether the driver of this mark still runs (the same process, not a later one with its pid)."""
    pid, _, started = mark.partition(":")
    return pid.isdigit() and process_start_time(int(pid)) == started


def orphaned_ray_processes() -> list[int]:
    """Pids of the processes of embedded Rays whose driver has died. Only what `ray.init` started (and
    what those started in turn) carries the owner mark: the driver sets it for the call alone."""
    prefix = OWNER_ENV.encode() + b"="
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        marks = [item[len(prefix):].decode() for item in environ if item.startswith(prefix)]
        if marks and not owner_is_alive(marks[0]):
            found.append(int(entry.name))
    return found


def reap_orphans() -> list[int]:
    """SIGKILL the Ray processes left by embedded Rays whose driver died; returns their pids."""
    if not Path("/proc/self/environ").exists():
        return []  # not Linux: nothing to look in
    killed = []
    for pid in orphaned_ray_processes():
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)  # they ignore SIGTERM once their raylet is gone
            killed.append(pid)
        except OSError:
            continue  # gone meanwhile, or not ours
    return killed


__all__ = ["EMBEDDED_WORKER_NICENESS", "LOOPBACK_ENV", "OWNER_ENV", "init_ray", "orphaned_ray_processes", "reap_orphans"]
