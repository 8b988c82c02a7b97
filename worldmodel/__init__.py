"""worldmodel: learn simulators from recorded episodes and serve them to agents.

Importing the package is cheap: heavy parts (torch models, Ray, diffusers) load
when used.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_bundle(path, backend: str = "vmc", *, device: str = "cpu", temperature: float = 1.0):
    """The WorldModel stored in a bundle directory (see worldmodel.bundle)."""
    from worldmodel.bundle import load_bundle as _load

    return _load(path, backend, device=device, temperature=temperature)


__all__ = ["load_bundle", "__version__"]
