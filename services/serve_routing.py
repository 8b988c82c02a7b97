"""Sessions pinned to the Ray Serve replica that holds them: ownership in the id, and a router that honours it.

A session's state lives in one replica's memory. Hashing session ids onto replicas (Serve's
ConsistentHashRouter) moves some sessions whenever the set of replicas changes, and under backpressure
it falls back to a replica without their state. Here ownership is explicit instead: a replica makes its
session ids (and dm_env_rpc world names) as `<its replica key>.<random>`, and `SessionOwnerRouter` sends
each call that names a session (gRPC metadata `session_id`, which services/client.py adds) to that replica
and to no other. When the owner is gone, the call goes to any live replica, which answers that the session
was lost (services/ray_serve.py): a session is never handed to a replica that does not hold it.

This module is imported by Serve's proxies and replicas: keep its imports light.
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica

from services.wire import owner_of


def replica_key(replica_id) -> str:
    """A replica's key in session ids: Serve's unique id of it, new for every replica ever started."""
    return replica_id.unique_id


class SessionOwnerRouter(RequestRouter):
    """A call naming a session goes to its owner only; every other call (CreateSession, ListModels, a
    dm_env_rpc connection, a call for a lost session) goes round robin, so new sessions spread evenly."""

    def initialize_state(self, **kwargs) -> None:
        self._turn = 0

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:  # a busy owner is asked again after a backoff, not in a tight loop
            pending_request.routing_context.should_backoff = True
        session_id = getattr(pending_request.metadata, "session_id", "") if pending_request is not None else ""
        owner = owner_of(session_id) if isinstance(session_id, str) else ""
        if owner:
            for replica in candidate_replicas:
                if replica_key(replica.replica_id) == owner:
                    return [[replica]]  # one rank, no fallback: only the owner holds the state
        ordered = sorted(candidate_replicas, key=lambda replica: replica_key(replica.replica_id))
        self._turn = (self._turn + 1) % len(ordered)
        return [[ordered[(self._turn + i) % len(ordered)]] for i in range(len(ordered))]


GRPC_HOST_ENV = "WORLDMODEL_SERVE_GRPC_HOST"
"""The address Serve's gRPC proxy binds, set for `bind_grpc_proxy` by `worldmodel serve --ray`."""
LOCAL_ONLY_ENV = "WORLDMODEL_SERVE_LOCAL_ONLY"
"""Set ("1") when the whole Ray is this machine (embedded): replicas' internal servers may then bind loopback."""


def bind_grpc_proxy() -> None:
    """Ray worker setup hook (runtime_env `worker_process_setup_hook`) of `worldmodel serve --ray`'s job.

    Ray 2.60 binds every interface ("[::]") with its Serve gRPC proxy and with each replica's internal gRPC
    server (how the proxy reaches replicas in throughput-optimized mode), with no option to say otherwise.
    Here the proxy binds GRPC_HOST_ENV; on an embedded Ray (LOCAL_ONLY_ENV) with a loopback GRPC_HOST_ENV, so
    does each replica's internal server. On a cluster those stay on every interface: other nodes' proxies
    must reach them.
    """
    import os

    host = os.environ.get(GRPC_HOST_ENV)
    if not host:
        return
    from ray.serve._private import default_impl, replica

    literal = f"[{host}]" if ":" in host and not host.startswith("[") else host  # services.server.grpc_address's
    # rule, not imported: that module pulls torch into every proxy
    if not getattr(default_impl.add_grpc_address, "bound_host", None):
        default_impl.add_grpc_address = _rebinding(default_impl.add_grpc_address, literal)
    local = os.environ.get(LOCAL_ONLY_ENV) == "1" and host in ("127.0.0.1", "localhost", "::1")
    if local and not getattr(replica.add_port_to_grpc_server, "bound_host", None):
        replica.add_port_to_grpc_server = _rebinding(replica.add_port_to_grpc_server, literal)


def _rebinding(add_port, literal: str):
    """`add_port(server, "[::]:PORT")` that binds `literal`:PORT instead."""
    def add_port_on_host(server, address: str):
        return add_port(server, f"{literal}:{address.rpartition(':')[2]}")

    add_port_on_host.bound_host = literal
    return add_port_on_host
