"""Served models and the sessions on them: limits, idle eviction, per-session ordering."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from services.batcher import BatcherConfig, DynamicBatcher
from worldmodel.models.world import WorldModel, has_latents
from worldmodel.session import DreamBatch
from worldmodel.spec import EnvSpec


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

    def touch(self) -> None:
        self.last_used = time.monotonic()


class SessionRegistry:
    def __init__(self, max_sessions: int, max_envs_per_session: int, idle_ttl_s: float):
        self.max_sessions = max_sessions
        self.max_envs_per_session = max_envs_per_session
        self.idle_ttl_s = idle_ttl_s
        self.sessions: dict[str, Session] = {}
        self.evicted = 0

    def check_capacity(self) -> None:
        if len(self.sessions) >= self.max_sessions:
            raise LimitError(f"the server holds its maximum of {self.max_sessions} sessions; close one first")

    def add(self, model: ServedModel, backend: str, dreams: DreamBatch, png: bool) -> Session:
        self.check_capacity()
        session = Session(secrets.token_hex(12), model, backend, dreams, png)
        self.sessions[session.id] = session
        return session

    def check_envs(self, num_envs: int) -> None:
        if num_envs > self.max_envs_per_session:
            raise LimitError(f"num_envs {num_envs} is over this server's limit of {self.max_envs_per_session} per session")

    def get(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise UnknownError(f"no session {session_id!r} (closed, evicted after {self.idle_ttl_s:g} s idle, or never created)")
        session.touch()
        return session

    def close(self, session_id: str) -> None:
        if self.sessions.pop(session_id, None) is None:
            raise UnknownError(f"no session {session_id!r}")

    def evict_idle(self) -> int:
        now = time.monotonic()
        stale = [s.id for s in self.sessions.values() if not s.busy and now - s.last_used > self.idle_ttl_s]
        for session_id in stale:
            del self.sessions[session_id]
        self.evicted += len(stale)
        return len(stale)
