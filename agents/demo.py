"""`worldmodel demo`: the whole job on embedded defaults, with a report people look at.

Stages: collect real episodes (Ray) -> train V and M (Ray Train) -> bundle ->
evolve C with CMA-ES in the dream -> judge C and random in the real env ->
serve the bundle over gRPC (a `worldmodel serve` subprocess on 127.0.0.1) and
drive one remote episode through `worldmodel/Remote-v0` -> report.md + report.html.

Each finished stage is recorded in OUT/stages.json, so `--resume` continues
from the first unfinished one.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path



@dataclass(frozen=True)
class DemoConfig:
    env_id: str = "CarRacing-v3"
    episodes: int = 24
    max_steps: int = 300
    workers: int = 2
    preset: str = "small"
    vae_steps: int = 600
    mdnrnn_steps: int = 600
    generations: int = 12
    population: int = 16
    rollouts: int = 4
    dream_steps: int = 200
    temperature: float = 1.15
    eval_episodes: int = 3
    eval_max_steps: int = 1000
    remote_steps: int = 200
    seed: int = 0


TINY = DemoConfig(
    env_id="CartPole-v1", episodes=16, max_steps=100, preset="tiny", vae_steps=20, mdnrnn_steps=40,
    generations=2, population=6, rollouts=2, dream_steps=50, temperature=1.0, eval_episodes=2,
    eval_max_steps=200, remote_steps=30,
)

STAGES = ("collect", "train", "controller", "evaluate", "serve", "report")


class StageError(RuntimeError):
    """A stage failed; the message says which, why, and what to do."""


class Demo:
    def __init__(self, out: str, config: DemoConfig, resume: bool = False):
        self.out = Path(out).resolve()
        self.config = config
        self.record_path = self.out / "stages.json"
        if resume and self.record_path.is_file():
            self.record = json.loads(self.record_path.read_text())
            if self.record.get("config") != asdict(config):
                raise StageError(f"{self.record_path} was made with other settings; rerun without --resume or use another --out")
        else:
            if self.out.exists() and any(self.out.iterdir()):
                if not resume and self.record_path.is_file():
                    raise StageError(f"{self.out} holds an earlier demo: pass --resume to continue it, or choose another --out")
            self.record = {"config": asdict(config), "stages": {}}
        self.out.mkdir(parents=True, exist_ok=True)

    # paths
    store = property(lambda self: str(self.out / "store.zarr"))
    heldout = property(lambda self: str(self.out / "heldout.zarr"))
    bundle = property(lambda self: str(self.out / "bundle"))

    def run(self) -> Path:
        for name in STAGES:
            if name in self.record["stages"]:
                print(f"[{name}] done earlier ({self.record['stages'][name]['seconds']:.0f} s), skipped")
                continue
            print(f"[{name}] {getattr(self, 'stage_' + name).__doc__}", flush=True)
            began = time.perf_counter()
            try:
                result = getattr(self, "stage_" + name)() or {}
            except StageError:
                raise
            except Exception as err:  # noqa: BLE001 - say which stage, and how to continue
                raise StageError(f"stage '{name}' failed: {type(err).__name__}: {err}\n"
                                 f"fix the cause, then `worldmodel demo --out {self.out} --resume` continues here") from err
            seconds = time.perf_counter() - began
            self.record["stages"][name] = {"seconds": seconds, **result}
            self.record_path.write_text(json.dumps(self.record, indent=2, default=float))
            print(f"[{name}] finished in {seconds:.1f} s", flush=True)
        return self.out / "report.md"

    # -- stages -------------------------------------------------------------
    def stage_collect(self) -> dict:
        """collect real episodes with Ray workers into a zarr store"""
        from envs.collect import collect

        c = self.config
        for location in (self.store, self.heldout):
            shutil.rmtree(location, ignore_errors=True)  # a half-finished earlier try
        train = collect(c.env_id, self.store, episodes=c.episodes, max_steps=c.max_steps, workers=c.workers, seed=c.seed)
        held = collect(c.env_id, self.heldout, episodes=max(2, c.episodes // 8), max_steps=c.max_steps,
                       workers=c.workers, seed=c.seed + 1, show_progress=False)
        return {"steps": train.steps, "episodes": train.episodes, "heldout_steps": held.steps,
                "steps_per_second": train.steps_per_second}

    def stage_train(self) -> dict:
        """train V and M through Ray Train and assemble the bundle"""
        from worldmodel.bundle import write_vmc_bundle
        from worldmodel.train.launcher import LaunchOptions
        from worldmodel.train.mdnrnn import train_mdnrnn
        from worldmodel.train.vae import train_vae

        c = self.config
        for run in ("vae", "mdnrnn", "bundle"):
            shutil.rmtree(self.out / run, ignore_errors=True)
        vae = train_vae([self.store], LaunchOptions(out=str(self.out / "vae")), preset=c.preset, max_steps=c.vae_steps, seed=c.seed)
        mdnrnn = train_mdnrnn([self.store], str(vae), LaunchOptions(out=str(self.out / "mdnrnn")), preset=c.preset,
                              max_steps=c.mdnrnn_steps, seed=c.seed)
        write_vmc_bundle(self.bundle, vae, mdnrnn, [self.store], seed=c.seed)
        from worldmodel.evaluate import evaluate_vmc

        fidelity = evaluate_vmc(self.bundle, self.heldout, out=str(self.out))
        return {"eval_model": {k: v for k, v in fidelity.items() if k != "gif"}}

    def stage_controller(self) -> dict:
        """evolve C with CMA-ES entirely inside the dream"""
        from agents.cmaes import CMAESConfig, train_controller

        c = self.config
        shutil.rmtree(self.out / "cmaes", ignore_errors=True)
        config = CMAESConfig(generations=c.generations, population=c.population, rollouts=c.rollouts,
                             max_steps=c.dream_steps, temperature=c.temperature, seed=c.seed)
        return train_controller(self.bundle, str(self.out / "cmaes"), config)

    def stage_evaluate(self) -> dict:
        """judge C and the random policy in the REAL env, same seeds"""
        from agents.evaluate import evaluate

        c = self.config
        results = {}
        for policy in ("controller", "random"):
            gif = str(self.out / "real_vs_prediction.gif") if policy == "controller" else None
            r = evaluate(self.bundle, c.env_id, c.eval_episodes, policy, seed=10_000, max_steps=c.eval_max_steps, gif=gif)
            results[policy] = {"mean": r.mean, "std": r.std, "returns": r.returns, "seeds": r.seeds}
            print(f"  {policy:10s} {r.mean:8.2f} +- {r.std:.2f}")
        return {"scores": results}

    def stage_serve(self) -> dict:
        """serve the bundle over gRPC on 127.0.0.1 and drive one remote episode through worldmodel/Remote-v0"""
        import gymnasium as gym

        import worldmodel  # noqa: F401 - registers worldmodel/Remote-v0

        server = subprocess.Popen(
            [sys.executable, "-m", "worldmodel.cli", "serve", f"demo={self.bundle}", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        try:
            match = re.search(r"serving on (127\.0\.0\.1:\d+)", server.stdout.readline())
            if not match:
                raise StageError("the gRPC server did not start: run `worldmodel serve` by hand to see why")
            address = match.group(1)
            env = gym.make("worldmodel/Remote-v0", address=address, model="demo", max_episode_steps=self.config.remote_steps)
            _, _ = env.reset(seed=self.config.seed)
            total, steps, began = 0.0, 0, time.perf_counter()
            while True:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total, steps = total + float(reward), steps + 1
                if terminated or truncated:
                    break
            seconds = time.perf_counter() - began
            env.close()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            code = server.wait(timeout=60)
        return {"address": address, "steps": steps, "dream_return": total, "steps_per_second": steps / seconds,
                "server_exit_code": code}

    def stage_report(self) -> dict:
        """write report.md and report.html"""
        from worldmodel.rollouts import real_vs_dream_gif

        real_vs_dream_gif(self.bundle, self.heldout, self.out / "real_vs_dream.gif", steps=60)
        text = render_report(self.out, self.record, self.config)
        (self.out / "report.md").write_text(text)
        (self.out / "report.html").write_text(markdown_page(text, "worldmodel demo"))
        return {"report": str(self.out / "report.md")}


def render_report(out: Path, record: dict, config: DemoConfig) -> str:
    """report.md: one section a function, in the order a reader wants them."""
    stages = record["stages"]
    sections = [
        _title_section(config),
        _scores_section(stages, config),
        _pictures_section(),
        _heldout_section(stages["train"]["eval_model"]),
        _service_section(stages["serve"]),
        _data_section(out),
        _timing_section(stages),
        _scaling_section(config),
    ]
    return "\n".join(line for section in sections for line in [*section, ""])


def _title_section(config: DemoConfig) -> list[str]:
    return [
        f"# worldmodel demo: {config.env_id}",
        "",
        "A controller evolved only inside the learned dream, judged in the real environment.",
    ]


def _scores_section(stages: dict, config: DemoConfig) -> list[str]:
    scores = stages["evaluate"]["scores"]
    lines = [
        "## Scores in the real environment",
        "",
        f"Episodes with seeds {scores['random']['seeds'][0]}..{scores['random']['seeds'][-1]}, at most "
        f"{config.eval_max_steps} steps each.",
        "",
        "| policy | mean return | std | per episode |",
        "| --- | ---: | ---: | --- |",
    ]
    for policy, label in (("controller", "C, trained only in the dream"), ("random", "random")):
        s = scores[policy]
        lines.append(f"| {label} | {s['mean']:.2f} | {s['std']:.2f} | {', '.join(f'{x:.1f}' for x in s['returns'])} |")
    controller = stages["controller"]
    return lines + [
        "",
        f"Best return in the dream: {controller['best_dream_return']:.2f} ({controller['generations']} CMA-ES generations).",
    ]


def _pictures_section() -> list[str]:
    return [
        "## Pictures",
        "",
        "Real (left) and the V-M-C dream (right) from the same start and the same actions:",
        "",
        "![real vs dream](real_vs_dream.gif)",
        "",
        "One real episode of C (left) beside the frame the model expected next (right):",
        "",
        "![real vs prediction](real_vs_prediction.gif)",
        "",
        "Real frames (left) and V's reconstructions (right):",
        "",
        "![reconstruction](vae_reconstruction.gif)",
        "",
        "Loss curves: ![V](vae/loss.png) ![M](mdnrnn/loss.png) ![CMA-ES](cmaes/cmaes.png)",
    ]


def _heldout_section(fidelity: dict) -> list[str]:
    return [
        "## The models on held-out episodes",
        "",
        "| metric | model | trivial baseline |",
        "| --- | ---: | ---: |",
        f"| V reconstruction MSE / pixel | {fidelity['v_mse']:.5f} | {fidelity['v_mse_mean_frame']:.5f} (mean frame) |",
        f"| M next-z NLL | {fidelity['m_nll']:.3f} | {fidelity['m_nll_copy']:.3f} (copy z_t) |",
        f"| M reward MSE | {fidelity['reward_mse']:.5f} | {fidelity['reward_mse_mean']:.5f} (mean reward) |",
        f"| M termination accuracy | {fidelity['termination_accuracy']:.4f} | {fidelity['termination_accuracy_never']:.4f} (never ends) |",
    ]


def _service_section(serve: dict) -> list[str]:
    return [
        "## The service",
        "",
        f"`worldmodel serve` on {serve['address']}: one remote episode of {serve['steps']} steps through "
        f"`worldmodel/Remote-v0` ({serve['steps_per_second']:.0f} steps/s, dream return {serve['dream_return']:.2f}); "
        f"the server drained and exited with code {serve['server_exit_code']} on SIGTERM.",
    ]


def _data_section(out: Path) -> list[str]:
    from worldmodel.data import EpisodeStore
    from worldmodel.data.summary import format_summary, summarize

    return ["## The data", "", "```", format_summary(summarize(EpisodeStore.open(str(out / "store.zarr")))), "```"]


def _timing_section(stages: dict) -> list[str]:
    lines = ["## Time per stage", "", "| stage | seconds |", "| --- | ---: |"]
    lines += [f"| {name} | {info['seconds']:.1f} |" for name, info in stages.items()]
    return lines + [f"| total | {sum(info['seconds'] for info in stages.values()):.1f} |"]


def _scaling_section(config: DemoConfig) -> list[str]:
    submit = "RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 -- \\"
    return [
        "## Scaling each stage up",
        "",
        "```bash",
        f"worldmodel collect --env {config.env_id} --episodes 10000 --max-steps 1000 --workers 64 --out s3://bucket/store.zarr",
        submit,
        "    worldmodel train vae --store s3://bucket/store.zarr --out /shared/runs/vae --preset paper --workers 8 --gpus-per-worker 1",
        submit,
        "    worldmodel train mdnrnn --store s3://bucket/store.zarr --vae /shared/runs/vae --out /shared/runs/mdnrnn --preset paper --workers 8 --gpus-per-worker 1",
        "worldmodel bundle --vae /shared/runs/vae --mdnrnn /shared/runs/mdnrnn --store s3://bucket/store.zarr --out /shared/bundle",
        "worldmodel train controller --bundle /shared/bundle --out /shared/runs/cmaes --preset paper --workers 32",
        "worldmodel eval --bundle /shared/bundle --episodes 100 --out /shared/runs/eval",
        "worldmodel serve carracing=/shared/bundle --port 50051",
        "```",
    ]


PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%;image-rendering:pixelated}pre{background:#f4f4f4;padding:1em}"
)


def markdown_page(text: str, title: str) -> str:
    """A self-contained HTML page of the report: Python-Markdown with its tables and fenced_code extensions."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>\n{body}\n</body></html>\n")


DEMO_PRESETS = {"tiny": TINY, "small": DemoConfig()}
"""tiny: CartPole at tiny sizes (what the tests run). small: CarRacing-v3 at CPU sizes."""


def run_demo(out: str, preset: str = "small", resume: bool = False, seed: int = 0) -> Path:
    """Run (or with `resume`, continue) the demo in `out`; returns the path of report.md."""
    if preset in DEMO_PRESETS:
        config = replace(DEMO_PRESETS[preset], seed=seed)
    else:
        raise ValueError(f"unknown demo preset {preset!r}; choose one of {', '.join(DEMO_PRESETS)}")
    return Demo(out, config, resume=resume).run()


__all__ = ["DEMO_PRESETS", "DemoConfig", "TINY", "Demo", "run_demo", "StageError"]
