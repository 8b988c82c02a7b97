"""Every README code block marked `<!-- tested -->` runs, on the tiny CartPole bundle and a real server."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"<!-- tested -->\n```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_marks_its_snippets():
    assert len(BLOCKS) >= 3


@pytest.fixture(scope="module")
def served_bundle(vmc_runs):
    proc = subprocess.Popen(
        [sys.executable, "-m", "worldmodel.cli", "serve", f"demo={vmc_runs['bundle']}", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )
    address = re.search(r"serving on (127\.0\.0\.1:\d+)", proc.stdout.readline()).group(1)
    yield vmc_runs["bundle"], address
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs(index, served_bundle, tmp_path):
    bundle, address = served_bundle
    code = BLOCKS[index].replace("runs/demo/bundle", bundle).replace("127.0.0.1:50051", address)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, f"README snippet {index} failed:\n{code}\n{result.stderr[-3000:]}"


def test_every_reliability_promise_names_a_test_that_exists():
    section = README.read_text().split("## Reliability", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", section))
    defined = {name for path in README.parent.glob("tests/test_*.py")
               for name in re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), flags=re.M)}
    assert len(named) >= 20 and not named - defined, sorted(named - defined)
