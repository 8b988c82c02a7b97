"""Training metrics as a CSV that survives resumes, and the loss-curve PNG drawn from it."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLog:
    """Append rows of metrics to a CSV; on resume, rows past the checkpoint (by `key`: the training step,
    a CMA-ES generation, a loop round) are dropped, so a resumed run's log reads as an unbroken one."""

    def __init__(self, path: str | Path, resume_after: int = 0, key: str = "step"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = [r for r in read_metrics(self.path) if r.get(key, 0) <= resume_after] if resume_after else []
        self._rewrite()

    def append(self, row: dict[str, float]) -> None:
        self.rows.append(dict(row))
        self._rewrite()

    def _rewrite(self) -> None:
        # Rewritten whole (a few KiB): columns may appear later, and a crash mid-write
        # is survived by writing a sibling and renaming over.
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: _number(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _number(text: str) -> int | float:
    return int(text) if text.lstrip("-").isdigit() else float(text)


def plot_metrics(csv_path: str | Path, png_path: str | Path, title: str) -> Path:
    """One panel per loss column against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(csv_path)
    columns = [c for c in dict.fromkeys(k for r in rows for k in r) if c == "loss" or c.startswith("loss/")]
    fig, axes = plt.subplots(1, max(1, len(columns)), figsize=(4 * max(1, len(columns)), 3.2), squeeze=False)
    for ax, column in zip(axes[0], columns):
        points = [(r["step"], r[column]) for r in rows if column in r]
        ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_title(column)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


def plot_returns(csv_path: str | Path, png_path: str | Path, ylabel: str, x: str = "generation") -> Path:
    """Best and mean (with a +-std band) return per generation, from a CMA-ES log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = read_metrics(csv_path)
    xs = [r[x] for r in rows]
    mean, std = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, [r["best"] for r in rows], label="best of generation")
    ax.plot(xs, mean, label="population mean")
    ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
