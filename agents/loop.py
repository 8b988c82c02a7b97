"""`worldmodel train loop`: dreams that transfer, by iterating collect -> refit V and M -> evolve C -> judge.

A dream trained on random play is wrong exactly where a good controller goes:
the controller finds the dream's mistakes and exploits them. Each round collects
real episodes with the current controller (plus exploration noise, and a share
of the store's collection policy), so the next M has seen what C does; V and M
are fine-tuned from their previous weights (they do not start over), C evolves
in the new dream from where it was, and the real env judges it. This is the
iterative training the World Models paper proposes for harder envs, and what
DIAMOND and DreamerV3 do continuously.

    RUN/round_<r>/vae, mdnrnn     the fine-tuned runs (model/, loss.png, metrics.csv)
    RUN/round_<r>/bundle          the round's simulator with its controller
    RUN/round_<r>/cmaes           CMA-ES in the round's dream
    RUN/rounds.csv, rounds.png    per round: real return, dream return, their gap, episodes in the store
    RUN/bundle                    the last round's bundle
    RUN/loop_state.json           what is done (`--resume` continues after it)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from agents.cmaes import CMAESConfig, train_controller
from worldmodel.train.metrics import MetricsLog

STATE_FILE = "loop_state.json"
ROUNDS_FILE = "rounds.csv"


@dataclass
class LoopConfig:
    rounds: int = 3
    """Rounds of collect -> refit -> evolve -> judge."""
    episodes: int = 16
    """Real episodes collected per round."""
    explore_share: float = 0.25
    """Share of each round's episodes collected by the store's own collection policy (`auto`), the rest by C."""
    noise: float = 0.1
    """Exploration noise on C's actions: Gaussian std in half-ranges of each box dim, or the chance of a random
    discrete action."""
    max_steps: int = 1000
    """Steps per collected episode at most."""
    vae_steps: int = 300
    """V's fine-tuning steps per round (0 keeps V, and M's cached latents of old data stay valid)."""
    mdnrnn_steps: int = 600
    """M's fine-tuning steps per round."""
    preset: str = "small"
    """Model presets (batch size, learning rate, window); a fine-tuned model keeps its own sizes."""
    cmaes: CMAESConfig = field(default_factory=lambda: CMAESConfig(generations=10, population=16, rollouts=8,
                                                                   max_steps=300, start="controller"))
    """CMA-ES in each round's dream; it starts from the previous round's controller."""
    judge_episodes: int = 5
    """Real episodes that judge each round's controller (held-out seeds)."""
    judge_seed: int = 10_000
    """The first held-out seed; judging uses judge_seed, judge_seed + 1, ..."""
    workers: int = 2
    """Ray workers for collection, training and CMA-ES."""
    seed: int = 0


@dataclass
class ControllerPolicy:
    """A collection policy (envs/collect.py PolicyFactory): the bundle's C on V and M's view of the real
    episode, with exploration noise. Picklable: Ray ships the path, each task loads the bundle itself."""

    bundle: str
    noise: float = 0.1
    name: str = "controller"

    def __call__(self, spec, seed: int | None) -> _NoisyController:
        return _NoisyController(self.bundle, self.noise, spec, seed)


class _NoisyController:
    def __init__(self, bundle: str, noise: float, spec, seed: int | None):
        from agents.evaluate import LatentPolicy
        from worldmodel.bundle import load_bundle, load_controller

        model = load_bundle(bundle)
        self.spec, self.noise = spec, noise
        self.policy = LatentPolicy(model, load_controller(bundle).act)
        self.rng = np.random.default_rng(seed)
        self.previous = None

    def reset(self, seed: int | None = None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.previous = None

    def __call__(self, observation):
        if self.previous is None:
            self.policy.start(observation)
        else:
            self.policy.observe(self.previous, observation)
        action = self.policy.act()
        if self.spec.action.is_discrete:
            if self.rng.random() < self.noise:
                action = int(self.rng.integers(self.spec.action.n))
        else:
            low, high = np.asarray(self.spec.action.low), np.asarray(self.spec.action.high)
            action = np.clip(action + self.rng.normal(0, self.noise, action.shape) * (high - low) / 2, low, high)
            action = action.astype(np.float32)
        self.previous = action
        return action


def run_loop(store: str, bundle: str, out: str, config: LoopConfig, resume: bool = False) -> Path:
    """Run `config.rounds` rounds from `bundle` (left as it is) on `store` (grown); returns RUN/bundle."""
    from worldmodel.bundle import read_bundle_config

    out_dir = Path(out).resolve()
    state = _load_state(out_dir, config, resume)
    log = MetricsLog(out_dir / ROUNDS_FILE, resume_after=state["round"], key="round")
    env_id = read_bundle_config(bundle)["spec"].env_id
    current = state.get("bundle") or str(Path(bundle).resolve())
    for number in range(state["round"] + 1, config.rounds + 1):
        began = time.perf_counter()
        round_dir = out_dir / f"round_{number}"
        shutil.rmtree(round_dir, ignore_errors=True)  # a round cut short starts over (its episodes stay)
        print(f"[loop] round {number}/{config.rounds}: collect, refit V and M, evolve C in the dream, judge", flush=True)
        episodes = _collect(store, env_id, current, config, seed=config.seed * 1_000 + number)
        models = _refit(store, current, round_dir, config, number)
        current, dream_return = _evolve(store, current, models, round_dir, config)
        judged = _judge(current, config)
        log.append({"round": number, "real_return": judged.mean, "real_std": judged.std, "dream_return": dream_return,
                    "gap": dream_return - judged.mean, "episodes_in_store": episodes,
                    "seconds": time.perf_counter() - began})
        _plot_rounds(out_dir)
        state = {"round": number, "bundle": current, "config": asdict(config)}
        (out_dir / STATE_FILE).write_text(json.dumps(state, indent=2, default=float))
    final = out_dir / "bundle"
    if state.get("bundle") and Path(state["bundle"]) != final:
        shutil.rmtree(final, ignore_errors=True)
        shutil.copytree(state["bundle"], final)
    return final


def _load_state(out_dir: Path, config: LoopConfig, resume: bool) -> dict:
    path = out_dir / STATE_FILE
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        return {"round": 0}
    saved = json.loads(path.read_text())
    if not resume:
        raise FileExistsError(f"{out_dir} holds a loop at round {saved['round']}: pass --resume, or choose another --out")
    return saved


def _collect(store: str, env_id: str, bundle: str, config: LoopConfig, seed: int) -> int:
    """New real episodes into new parts of the store: C with noise, and a share by the store's policy."""
    from envs.collect import collect
    from worldmodel.bundle import read_bundle_config
    from worldmodel.data import EpisodeStore

    by_data = int(round(config.episodes * config.explore_share))
    by_controller = config.episodes - by_data
    has_controller = "controller" in read_bundle_config(bundle)
    if not has_controller:  # nothing trained yet: the whole round explores as the data did
        by_data, by_controller = config.episodes, 0
    settings = dict(max_steps=config.max_steps, workers=config.workers, show_progress=False)
    if by_controller:
        collect(env_id, store, episodes=by_controller, policy=ControllerPolicy(bundle, config.noise), seed=seed,
                **settings)
    if by_data:
        collect(env_id, store, episodes=by_data, policy="auto", seed=seed + 500, **settings)
    return EpisodeStore.open(store).num_episodes


def _refit(store: str, bundle: str, round_dir: Path, config: LoopConfig, number: int) -> tuple[Path, Path]:
    """V and M fine-tuned from the current bundle's weights on the grown store."""
    from worldmodel.bundle import export_vmc_models
    from worldmodel.train.launcher import LaunchOptions
    from worldmodel.train.mdnrnn import train_mdnrnn
    from worldmodel.train.vae import train_vae

    vae_dir, mdnrnn_dir = export_vmc_models(bundle, round_dir / "start")
    options = dict(workers=config.workers)
    seed = config.seed * 1_000 + number
    if config.vae_steps > 0:
        vae_dir = train_vae([store], LaunchOptions(out=str(round_dir / "vae"), **options), preset=config.preset,
                            max_steps=config.vae_steps, seed=seed, init_from=str(vae_dir))
    mdnrnn_dir = train_mdnrnn([store], str(vae_dir), LaunchOptions(out=str(round_dir / "mdnrnn"), **options),
                              preset=config.preset, max_steps=config.mdnrnn_steps, seed=seed, init_from=str(mdnrnn_dir))
    return Path(vae_dir), Path(mdnrnn_dir)


def _evolve(store: str, bundle: str, models: tuple[Path, Path], round_dir: Path, config: LoopConfig) -> tuple[str, float]:
    """The round's bundle (new V and M, the previous C), and C evolved in its dream from the previous C."""
    from worldmodel.bundle import load_controller, read_bundle_config, save_controller, write_vmc_bundle

    new_bundle = write_vmc_bundle(round_dir / "bundle", models[0], models[1], [store], seed=config.seed)
    cmaes = replace(config.cmaes, workers=config.workers, seed=config.seed)
    if "controller" in read_bundle_config(bundle):
        save_controller(new_bundle, load_controller(bundle), {"carried_from": str(bundle)})
    else:
        cmaes = replace(cmaes, start="data")
    result = train_controller(str(new_bundle), str(round_dir / "cmaes"), cmaes, show_progress=False)
    return str(new_bundle), float(result["best_dream_return"])


def _judge(bundle: str, config: LoopConfig):
    from agents.evaluate import judge_controller

    return judge_controller(bundle, config.judge_episodes, seed=config.judge_seed, workers=config.workers)


def _plot_rounds(out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from worldmodel.train.metrics import read_metrics

    rows = read_metrics(out_dir / ROUNDS_FILE)
    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(rounds, [r["dream_return"] for r in rows], marker="o", label="in the dream (CMA-ES, re-judged)")
    ax.errorbar(rounds, [r["real_return"] for r in rows], yerr=[r["real_std"] for r in rows], marker="o",
                capsize=3, label="in the real env (held-out seeds)")
    ax.set_xlabel("round")
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "rounds.png", dpi=100)
    plt.close(fig)


__all__ = ["ControllerPolicy", "LoopConfig", "run_loop"]
