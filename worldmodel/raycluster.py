"""Start or join Ray the same way everywhere: embedded on 127.0.0.1, or the cluster a job runs in."""

from __future__ import annotations

import os

# Before Ray starts: keep every Ray server on loopback (docs/notes.md) and send no usage stats.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def init_ray(num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start an embedded one.

    Returns True when this call started Ray (the caller may then shut it down).
    """
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return True
    for key, value in LOOPBACK_ENV.items():  # inherited by the Ray processes started below
        os.environ.setdefault(key, value)
    # Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is first imported; if something
    # imported it before us, the driver would still pick the machine's address.
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=True,  # Train v2 warns in a loop without it (docs/notes.md)
        dashboard_host="127.0.0.1",
        log_to_driver=True,
    )
    return True
