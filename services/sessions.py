"""Served models and the sessions on them: limits, idle eviction, per-session ordering.

The registry is the one record of what a server holds: a dm_env_rpc world is a session that
carries its world (`Session.world`), so closing or evicting the session frees everything.
"""

from __future__ import annotations

import asyncio
import ctypes
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.batcher import BatcherConfig, DynamicBatcher
from services.limits import default_max_total_envs
from services.status import echo
from worldmodel.models.world import WorldModel, has_latents
from worldmodel.session import DreamBatch
from worldmodel.spec import EnvSpec


try:
    _LIBC = ctypes.CDLL(None)
except OSError:  # pragma: no cover - a platform without a C library to load
    _LIBC = None


def release_freed_memory() -> None:
    """Hand the memory of freed sessions back to the OS. glibc keeps freed heap pages for reuse, and
    a world's 0.8 MB of start states comes from the heap once glibc's mmap threshold has grown:
    measured, 200 evicted worlds left the server's RSS 150 MB up without this, 15-35 MB with it.
    No-op without glibc."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class LimitError(Exception):
    """A configured limit would be exceeded (RESOURCE_EXHAUSTED)."""


class UnknownError(KeyError):
    """No such model or session (NOT_FOUND)."""


@dataclass
class ServedModel:
    """One bundle, loaded once per backend, each backend with its own dynamic batcher."""

    name: str
    path: Path
    models: dict[str, WorldModel]
    batchers: dict[str, DynamicBatcher]

    @property
    def spec(self) -> EnvSpec:
        return next(iter(self.models.values())).spec

    @property
    def backends(self) -> list[str]:
        return list(self.models)

    def latent_size(self) -> int:
        """Width of a "latent" observation; 0 when the model has none (a backend without latents)."""
        model = next(iter(self.models.values()))
        return int(model.feature_dim) if has_latents(model) else 0


def load_served_model(name: str, path: str | Path, device: str, batcher: BatcherConfig) -> ServedModel:
    from worldmodel.bundle import load_bundle, read_bundle_config

    backends = read_bundle_config(path)["backends"]
    models = {backend: load_bundle(path, backend, device=device) for backend in backends}
    return ServedModel(name, Path(path), models, {b: DynamicBatcher(batcher) for b in backends})


@dataclass
class Session:
    id: str
    model: ServedModel
    backend: str
    dreams: DreamBatch
    png: bool
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_used: float = field(default_factory=time.monotonic)
    busy: int = 0
    world: object | None = None
    """The dm_env_rpc world this session is (services/dm_environment.World), or None for a native session."""

    def touch(self) -> None:
        self.last_used = time.monotonic()


class SessionRegistry:
    def __init__(self, max_sessions: int, max_envs_per_session: int, idle_ttl_s: float,
                 max_total_envs: int | None = None):
        self.max_sessions = max_sessions
        self.max_envs_per_session = max_envs_per_session
        self.max_total_envs = default_max_total_envs() if max_total_envs is None else max_total_envs
        self.idle_ttl_s = idle_ttl_s
        self.id_prefix = ""
        """Starts every session id made here: on Ray Serve, the replica's key (services/ray_serve.py sets it)."""
        self.sessions: dict[str, Session] = {}
        self.total_envs = 0
        self.evicted = 0
        self.freed = 0
        """Sessions closed or evicted so far."""

    def check_capacity(self, num_envs: int = 1) -> None:
        """LimitError unless one more session of `num_envs` envs fits every limit."""
        self.check_envs(num_envs)
        if len(self.sessions) >= self.max_sessions:
            raise LimitError(f"the server holds its maximum of {self.max_sessions} sessions; close one first")
        if self.total_envs + num_envs > self.max_total_envs:
            raise LimitError(
                f"the server holds {self.total_envs} envs; {num_envs} more would pass its limit of "
                f"{self.max_total_envs} envs in all (--max-total-envs): close sessions or ask for fewer envs"
            )

    def add(self, model: ServedModel, backend: str, dreams: DreamBatch, png: bool) -> Session:
        self.check_capacity(dreams.num_envs)  # again: the caller may have awaited since it checked
        session = Session(self.id_prefix + secrets.token_hex(12), model, backend, dreams, png)
        self.sessions[session.id] = session
        self.total_envs += dreams.num_envs
        return session

    def check_envs(self, num_envs: int) -> None:
        if num_envs > self.max_envs_per_session:
            raise LimitError(f"num_envs {num_envs} is over this server's limit of {self.max_envs_per_session} per session")

    def owns(self, session_id: str) -> bool:
        """Whether `session_id` was made here (lives here, or did); one server owns every id."""
        return session_id.startswith(self.id_prefix)

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownError(
                f"no session {echo(session_id)} (closed, evicted after {self.idle_ttl_s:g} s idle, or never created)"
            )
        session.touch()
        return session

    def close(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            raise UnknownError(f"no session {echo(session_id)}")
        self.total_envs -= session.dreams.num_envs
        self.freed += 1

    def evict_idle(self) -> int:
        """Drop the sessions (and so the worlds) idle longer than the TTL; their state goes with them."""
        now = time.monotonic()
        stale = [s.id for s in self.sessions.values() if not s.busy and now - s.last_used > self.idle_ttl_s]
        for session_id in stale:
            self.close(session_id)
        self.evicted += len(stale)
        return len(stale)
