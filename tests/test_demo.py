"""`worldmodel demo --preset tiny`: every stage runs and every artefact of the report is there and sane."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import imageio.v3 as iio
import pytest


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run([sys.executable, "-m", "worldmodel.cli", "demo", "--preset", "tiny", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return str(out)


def test_every_stage_ran_and_was_timed(demo_out):
    record = json.loads(open(f"{demo_out}/stages.json").read())
    assert list(record["stages"]) == ["collect", "train", "controller", "loop", "evaluate", "serve", "report"]
    assert all(stage["seconds"] > 0 for stage in record["stages"].values())
    scores = record["stages"]["evaluate"]["scores"]
    for policy in ("controller", "random"):
        assert len(scores[policy]["returns"]) == 2 and all(isinstance(x, float) for x in scores[policy]["returns"])
    serve = record["stages"]["serve"]
    assert serve["steps"] >= 1 and serve["server_exit_code"] == 0 and serve["address"].startswith("127.0.0.1:")


def test_report_shows_scores_pictures_and_commands(demo_out):
    report = open(f"{demo_out}/report.md").read()
    assert "| C, trained only in the dream |" in report and "| random |" in report
    assert "ray job submit" in report and "--preset paper" in report
    for image in re.findall(r"\]\(([^)]+)\)", report):
        path = f"{demo_out}/{image}"
        frames = iio.imread(path, index=None)
        assert frames.size > 0, image
        if image.endswith(".gif"):
            assert frames.ndim == 4 and frames.shape[0] > 1, image  # animated
    page = open(f"{demo_out}/report.html").read()
    assert page.startswith("<!doctype html>") and "<table>" in page and 'src="real_vs_dream.gif"' in page


def test_resume_skips_finished_stages(demo_out):
    result = subprocess.run([sys.executable, "-m", "worldmodel.cli", "demo", "--preset", "tiny", "--out", demo_out, "--resume"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("done earlier") == 7
    again = subprocess.run([sys.executable, "-m", "worldmodel.cli", "demo", "--tiny", "--out", demo_out],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr
