"""The purpose on the flagship env: controllers trained with this project drive the REAL CarRacing car.

Both margins were pre-registered in issue 12 before any tuning, and are never lowered to pass:
- `worldmodel demo` (15 minutes of CPU on 2 cores): its dream-trained controller beats the random
  policy by at least 50 points, mean over 5 held-out seeds;
- the real-env recipe (the paper's procedure, at most 60 minutes on 2 cores including collection and
  V and M training): a mean of at least 300 over 5 held-out seeds.
They take that long, so they are `slow`: `make test-slow` runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

DEMO_MARGIN_OVER_RANDOM = 50.0
REAL_RECIPE_FLOOR = 300.0


@pytest.mark.parametrize("seed", [0, 1])
def test_demo_dream_controller_beats_random_by_50(tmp_path, seed):
    out = tmp_path / f"demo-{seed}"
    result = subprocess.run([sys.executable, "-m", "worldmodel.cli", "demo", "--seed", str(seed), "--out", str(out)],
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((out / "stages.json").read_text())["stages"]["evaluate"]["scores"]
    dream, random = scores["controller"], scores["random"]
    assert len(dream["returns"]) == len(random["returns"]) == 5 and dream["seeds"] == random["seeds"]
    print(f"demo seed {seed}: dream-trained {dream['mean']:.1f} +- {dream['std']:.1f}, random {random['mean']:.1f}")
    assert dream["mean"] >= random["mean"] + DEMO_MARGIN_OVER_RANDOM


def test_real_env_recipe_reaches_300(tmp_path):
    from agents.recipe import run_real_recipe

    result = run_real_recipe(str(tmp_path / "recipe"), seed=0)
    print(f"real-env recipe: {result['mean']:.1f} +- {result['std']:.1f} in {result['minutes']:.1f} minutes")
    assert len(result["returns"]) == 5
    assert result["minutes"] <= 60.0
    assert result["mean"] >= REAL_RECIPE_FLOOR
