"""Default limits sized to the machine (no heavy imports: `worldmodel serve --help` states them)."""

from __future__ import annotations

import os

PER_ENV_STATE_BYTES = 128 << 10
"""What one env of a session holds, rounded up: measured as the RSS growth of a 1,024-env DreamBatch
(64x64x3 frames) after a reset and two steps, over a 16-env one, on CPU: 85 KB per env for V-M-C at
the paper's sizes (z 32, LSTM 256; its state and observation tensors alone are 14.5 KB), 129 KB for
the diffusion backend (4 context frames; tensors 61.6 KB). Larger frames hold proportionally more."""
STATE_SHARE_OF_MEMORY = 4
"""The default envs limit lets session state take at most a quarter of the machine's memory: the rest
is for the models, a step's activations, message buffers and whatever else runs there."""


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_max_total_envs(memory_bytes: int | None = None) -> int:
    """Envs a server holds at most across all sessions and worlds, by default: a quarter of memory / 128 KiB."""
    memory = machine_memory_bytes() if memory_bytes is None else memory_bytes
    return max(1, memory // STATE_SHARE_OF_MEMORY // PER_ENV_STATE_BYTES)
