"""benchmarks/gpu.py, the one command of the GPU benchmark: a bad --device is one clear line, and a CPU smoke run
(--device cpu --quick) fills every row of its table with a figure."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU = ROOT / "benchmarks" / "gpu.py"


def test_gpu_benchmark_refuses_an_unknown_device_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(GPU), "--device", "tpu", "--out", str(tmp_path / "t.md")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["--device tpu: not a torch device; use cpu, cuda or cuda:N"]
    assert not (tmp_path / "t.md").exists()  # refused before anything ran


def test_gpu_benchmark_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    from benchmarks import gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: --device cuda is usable here")
    with pytest.raises(SystemExit) as refused:  # in this process: one torch import is enough for the suite
        gpu.main(["--device", "cuda", "--out", str(tmp_path / "t.md")])
    assert refused.value.code == "--device cuda: torch sees no CUDA GPU on this machine"
    assert not (tmp_path / "t.md").exists()


# What --quick measures (dream batches 64 and 256; service: the latent mode only).
QUICK_ROWS = [
    ("dream", "real CarRacing-v3, 1 process (CPU)"),
    *(("dream", f"DreamVectorEnv VMC {mode}, {batch} envs") for mode in ("latent", "pixels") for batch in (64, 256)),
    *(("diffusion", f"3 Euler steps, batch {batch}, tiny preset (--quick, not DIAMOND's sizes)") for batch in (1, 64)),
    ("V training", "ConvVAE, paper preset, batch 100, Adam"),
    ("service", "gRPC, 64 one-env agents, latent, best path"),
    ("service", "Remote-v0 vector env, 256 envs, latent"),
    ("service", "gRPC, 1 session of 256 envs, latent"),
]


@pytest.mark.slow
def test_gpu_benchmark_quick_cpu_run_fills_every_row(tmp_path):
    out = tmp_path / "bench-gpu.md"
    result = subprocess.run([sys.executable, str(GPU), "--device", "cpu", "--quick", "--out", str(out),
                             "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    table = out.read_text()
    assert table.splitlines()[0].startswith("GPU benchmark on ") and "--device cpu" in table.splitlines()[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| benchmark") and "---" not in line]
    assert [(name, figure) for name, figure, _, _ in rows] == QUICK_ROWS, table
    for name, figure, value, context in rows:
        assert re.match(r"^[\d,]+(\.\d+)? (steps/s|ms per step|samples/s)$", value), (name, figure, value)
        assert float(value.split()[0].replace(",", "")) > 0, (name, figure, value)
    assert "DIAMOND: 20.4 ms" in table
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "gpu" and summary["device"] == "cpu" and summary["quick"] is True
    assert all(part["ok"] for part in summary["parts"]), summary["parts"]


@pytest.mark.slow
def test_adapt_benchmark_quick_run_reports_every_model_and_the_margin(tmp_path):
    """benchmarks/adapt.py --quick: the whole leave-one-game-out study at toy sizes (about 2-3 minutes)."""
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "adapt.py"), "--quick", "--work", str(tmp_path)],
                            capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for model in ("scratch", "lora", "full", "zero-shot", "copy last frame"):
        assert re.search(rf"^\| 2 \| {model} \| \d", result.stdout, re.MULTILINE), model
    assert re.search(r"^PRE-REGISTERED: K=2, LoRA - scratch at PSNR@4 = [+-]\d+\.\d\d dB \(margin 1\.0 dB\)", result.stdout,
                     re.MULTILINE)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["scaling"]) == {"1", "2"} and (tmp_path / "scaling.png").stat().st_size > 1000
    assert (tmp_path / "gif-lora-K2" / "real_vmc_diffusion.gif").is_file()


@pytest.mark.slow  # a paper-size bundle, then three servers: about 4 minutes
def test_service_ray_quick_run_reports_both_floors(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "service_ray.py"), "--quick",
                             "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    figures = json.loads(next(line for line in result.stdout.splitlines() if line.startswith('{"benchmark": "service-ray"')))
    ray = figures["ray"]
    assert set(ray["floor_results"]) == {"two_vs_one_pixels", "one_vs_single_pixels", "one_vs_single_latent"}
    for server in ("single", "ray1", "ray2"):
        assert ray[server]["pixels"]["steps_per_s"] > 0 and ray[server]["latent"]["steps_per_s"] > 0
    assert ray["ray2"]["pixels"]["cpu_replicas"] > 0 and "cpu_proxy" in ray["ray1"]["latent"]
