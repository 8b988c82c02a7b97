"""`worldmodel demo`: the whole job on embedded defaults, with a report people look at.

Stages: collect real episodes (Ray) -> train V and M (Ray Train) -> bundle ->
evolve C with CMA-ES in the dream -> (optional) loop rounds: collect with C,
fine-tune V and M, evolve C again -> judge C and random in the real env on 5
held-out seeds -> serve the bundle over gRPC (a `worldmodel serve` subprocess on
127.0.0.1) and drive one remote episode through `worldmodel/Remote-v0` ->
report.md + report.html (agents/demo_report.py).

Each finished stage is recorded in OUT/stages.json, so `--resume` continues
from the first unfinished one.
"""

from __future__ import annotations

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

from agents.demo_report import markdown_page, render_report


@dataclass(frozen=True)
class DemoConfig:
    env_id: str = "CarRacing-v3"
    episodes: int = 48
    """Real episodes collected (random-walk) to train V and M."""
    max_steps: int = 500
    workers: int = 2
    preset: str = "small"
    vae_steps: int = 2000
    mdnrnn_steps: int = 4000
    """M trains twice V's steps: at 2,000 (300-step dreams) the dream-trained controllers of demo seeds 0 and
    1 beat random by +44 and +11; at 4,000 with 1,000-step dreams by +135 and +291 (measured; README)."""
    reward_from_next: bool = True
    """M's reward head reads the next latent and vector (MDNRNNConfig.reward_from_next): the dream then
    pays for what it shows. Measured on CarRacing: see the README's score table."""
    generations: int = 20
    population: int = 16
    rollouts: int = 8
    dream_steps: int = 1000
    """Dreams as long as the real episodes C is judged on: with 300, seed 1's controller left the playfield
    on 3 of 5 held-out tracks (mean -55.0; with 1,000: 254.6, measured)."""
    temperature: float = 1.15
    loop_rounds: int = 0
    """Rounds of `train loop` after the first controller (0: none)."""
    loop_episodes: int = 16
    eval_episodes: int = 5
    """Held-out real episodes judging every controller and the random policy."""
    eval_max_steps: int = 1000
    remote_steps: int = 200
    seed: int = 0

    @property
    def eval_seed(self) -> int:
        """The first held-out seed: another block of tracks for every demo seed, far from training seeds."""
        return 10_000 + 1_000 * self.seed


TINY = DemoConfig(
    env_id="CartPole-v1", episodes=16, max_steps=100, preset="tiny", vae_steps=20, mdnrnn_steps=40,
    reward_from_next=False, generations=2, population=6, rollouts=2, dream_steps=50, temperature=1.0,
    eval_episodes=2, eval_max_steps=200, remote_steps=30,
)

STAGES = ("collect", "train", "controller", "loop", "evaluate", "serve", "report")


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

    @property
    def final_bundle(self) -> str:
        """The bundle judged and served: the loop's last one when the demo ran loop rounds."""
        return str(self.out / "loop" / "bundle") if self.config.loop_rounds else self.bundle

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
        from worldmodel.evaluate import evaluate_vmc
        from worldmodel.train.launcher import LaunchOptions
        from worldmodel.train.mdnrnn import train_mdnrnn
        from worldmodel.train.vae import train_vae

        c = self.config
        for run in ("vae", "mdnrnn", "bundle"):
            shutil.rmtree(self.out / run, ignore_errors=True)
        vae = train_vae([self.store], LaunchOptions(out=str(self.out / "vae")), preset=c.preset, max_steps=c.vae_steps, seed=c.seed)
        mdnrnn = train_mdnrnn([self.store], str(vae), LaunchOptions(out=str(self.out / "mdnrnn")), preset=c.preset,
                              max_steps=c.mdnrnn_steps, seed=c.seed, reward_from_next=c.reward_from_next)
        write_vmc_bundle(self.bundle, vae, mdnrnn, [self.store], seed=c.seed)
        fidelity = evaluate_vmc(self.bundle, self.heldout, out=str(self.out))
        return {"eval_model": {k: v for k, v in fidelity.items() if k != "gif"}}

    def stage_controller(self) -> dict:
        """evolve C with CMA-ES entirely inside the dream"""
        from agents.cmaes import train_controller

        shutil.rmtree(self.out / "cmaes", ignore_errors=True)
        return train_controller(self.bundle, str(self.out / "cmaes"), self._cmaes())

    def _cmaes(self):
        from agents.cmaes import CMAESConfig

        c = self.config
        return CMAESConfig(generations=c.generations, population=c.population, rollouts=c.rollouts,
                           max_steps=c.dream_steps, temperature=c.temperature, seed=c.seed)

    def stage_loop(self) -> dict:
        """loop rounds: collect with C, fine-tune V and M, evolve C in the new dream, judge it (none: skipped)"""
        from agents.loop import LoopConfig, run_loop
        from worldmodel.train.metrics import read_metrics

        c = self.config
        if not c.loop_rounds:
            return {"rounds": []}
        shutil.rmtree(self.out / "loop", ignore_errors=True)
        config = LoopConfig(rounds=c.loop_rounds, episodes=c.loop_episodes, max_steps=c.max_steps, preset=c.preset,
                            cmaes=replace(self._cmaes(), start="controller"), judge_episodes=c.eval_episodes,
                            judge_seed=c.eval_seed, workers=c.workers, seed=c.seed)
        run_loop(self.store, self.bundle, str(self.out / "loop"), config)
        return {"rounds": read_metrics(self.out / "loop" / "rounds.csv")}

    def stage_evaluate(self) -> dict:
        """judge C and the random policy in the REAL env, on the same held-out seeds"""
        from agents.evaluate import evaluate, judge_controller

        c = self.config
        judged = {"controller": judge_controller(self.final_bundle, c.eval_episodes, seed=c.eval_seed,
                                                 max_steps=c.eval_max_steps, workers=c.workers)}
        if c.loop_rounds:
            judged["controller_before_loop"] = judge_controller(self.bundle, c.eval_episodes, seed=c.eval_seed,
                                                                max_steps=c.eval_max_steps, workers=c.workers)
        judged["random"] = evaluate(self.final_bundle, c.env_id, c.eval_episodes, "random", seed=c.eval_seed,
                                    max_steps=c.eval_max_steps)
        # One more short real episode of C, for the picture of what the model expects next.
        evaluate(self.final_bundle, c.env_id, 1, "controller", seed=c.eval_seed, max_steps=min(c.eval_max_steps, 300),
                 gif=str(self.out / "real_vs_prediction.gif"))
        scores = {name: {"mean": r.mean, "std": r.std, "returns": r.returns, "seeds": r.seeds} for name, r in judged.items()}
        for name, r in judged.items():
            print(f"  {name:22s} {r.mean:8.2f} +- {r.std:.2f}")
        return {"scores": scores}

    def stage_serve(self) -> dict:
        """serve the bundle over gRPC on 127.0.0.1 and drive one remote episode through worldmodel/Remote-v0"""
        import gymnasium as gym

        import worldmodel  # noqa: F401 - registers worldmodel/Remote-v0

        server = subprocess.Popen(
            [sys.executable, "-m", "worldmodel.cli", "serve", f"demo={self.final_bundle}", "--port", "0"],
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

        real_vs_dream_gif(self.final_bundle, self.heldout, self.out / "real_vs_dream.gif", steps=60)
        text = render_report(self.out, self.record, self.config)
        (self.out / "report.md").write_text(text)
        (self.out / "report.html").write_text(markdown_page(text, "worldmodel demo"))
        return {"report": str(self.out / "report.md")}


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
