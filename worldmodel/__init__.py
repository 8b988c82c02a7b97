"""worldmodel: learn simulators from recorded episodes and serve them to agents.

Importing the package is cheap: heavy parts (torch models, Ray, diffusers) load
when used. It registers the gymnasium ids below (the dream, and the remote env over the gRPC service) with string entry points (a
name, not an import: worldmodel/ never imports envs/), so after
`import worldmodel`, or with gymnasium's `module:id` form and no import at
all, `gymnasium.make("worldmodel:worldmodel/Dream-v0", bundle=...)` works.
"""

from __future__ import annotations

__version__ = "0.1.0"

DREAM_ENV_ID = "worldmodel/Dream-v0"
REMOTE_ENV_ID = "worldmodel/Remote-v0"


def load_bundle(path, backend: str = "vmc", *, device: str = "cpu", temperature: float = 1.0):
    """The WorldModel stored in a bundle directory (see worldmodel.bundle)."""
    from worldmodel.bundle import load_bundle as _load

    return _load(path, backend, device=device, temperature=temperature)


def _register_envs() -> None:
    """Register the dream env ids with gymnasium (1.x has no entry-point plugins; this is its convention).

    gymnasium is a dependency, but a broken or missing one must not break `import worldmodel`;
    an id already registered (a reload) is left alone, so gymnasium does not warn about overriding it.
    """
    try:
        from gymnasium.envs.registration import register, registry
    except ImportError:
        return
    if DREAM_ENV_ID not in registry:
        register(id=DREAM_ENV_ID, entry_point="envs.dream:DreamEnv", vector_entry_point="envs.dream:DreamVectorEnv")
    if REMOTE_ENV_ID not in registry:
        register(id=REMOTE_ENV_ID, entry_point="envs.remote:RemoteEnv", vector_entry_point="envs.remote:RemoteVectorEnv")


_register_envs()

__all__ = ["DREAM_ENV_ID", "REMOTE_ENV_ID", "load_bundle", "__version__"]
