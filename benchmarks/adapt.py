"""Pretrain one diffusion backbone on several envs, then adapt it to a held-out env from K episodes.

Leave-one-game-out: the backbone pretrains on the suite less one ALE game; that game's first K
episodes (K = 5 and 20) teach four models the same number of steps:

    scratch     a fresh backbone of the same size, trained on the K episodes only
    lora        pretrained + LoRA (peft) on the UNet + the new env's embedding, encoders and head
    full        pretrained + everything fine-tuned
    zero-shot   pretrained, the new env's parts as `add_env` makes them, no training

Each is scored on held-out episodes of that game (other seeds): PSNR and SSIM of the frame at
horizons 1, 4 and 16 (horizon 1 from real frames, longer ones autoregressive under the real actions)
against copy-last-frame, with trainable parameters, adapter bytes and wall time. A scaling table
repeats LoRA at K = 5 on backbones pretrained on 1, 3 and all the pretraining envs.

PRE-REGISTERED before any tuning (issue 13): at K = 5, pretrained + LoRA beats scratch by at least
MARGIN_DB dB PSNR at horizon 4, with its LoRA weights at most MAX_LORA_SHARE of the UNet's parameters.

CPU run (2 cores, about 45 minutes with the defaults): 32x32 frames, the small preset (1.07 M UNet
parameters), 4 pretraining envs. The study at GPU scale:

    python benchmarks/adapt.py --size 64 --preset paper --episodes-per-env 200 --max-episode-steps 1000 \\
        --pretrain-steps 50000 --adapt-steps 2000 --gpus-per-worker 1 \\
        --pretrain ALE/Pong-v5,ALE/Boxing-v5,ALE/Freeway-v5,ALE/MsPacman-v5,ALE/Seaquest-v5,ALE/Enduro-v5,CartPole-v1,CarRacing-v3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if not __package__:  # `python benchmarks/adapt.py`: import from the repo root, where benchmarks/ is a package
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from benchmarks.common import set_quiet_env  # noqa: E402

set_quiet_env(RAY_TQDM_PATCH_PRINT="0")

MARGIN_DB = 1.0
MAX_LORA_SHARE = 0.05
HORIZONS = (1, 4, 16)
PRETRAIN = "ALE/Pong-v5,ALE/Boxing-v5,ALE/Freeway-v5,ALE/MsPacman-v5"
HELD_OUT = "ALE/Breakout-v5"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", default=PRETRAIN, help="comma-separated env ids the backbone pretrains on")
    parser.add_argument("--held-out", default=HELD_OUT, help="the env adapted to")
    parser.add_argument("--size", type=int, default=32, help="frames are SIZE x SIZE (collected at 64, resized)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--episodes-per-env", type=int, default=30)
    parser.add_argument("--max-episode-steps", type=int, default=200)
    parser.add_argument("--eval-episodes", type=int, default=8)
    parser.add_argument("--ks", default="5,20", help="episodes of the held-out env to adapt on")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--adapt-steps", type=int, default=300)
    parser.add_argument("--rank", type=int, default=2)
    parser.add_argument("--scaling", default="1,3", help="also pretrain on the first N envs (and all) for the scaling table")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0,
                        help="GPUs per Ray Train worker for the training runs (scoring runs on the CPU)")
    parser.add_argument("--work", default="runs/bench-adapt", help="stores, runs and bundles (reused when present)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes, a few steps (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain, args.held_out = "CartPole-v1,ALE/Pong-v5", "ALE/Breakout-v5"
        args.episodes_per_env, args.max_episode_steps, args.eval_episodes, args.ks = 3, 20, 2, "2"
        args.pretrain_steps, args.adapt_steps, args.scaling, args.preset, args.rank = 4, 3, "1", "tiny", 1
    return args


# -- data ---------------------------------------------------------------------------------------------------


def suite_store(work: Path, env_id: str, episodes: int, max_steps: int, size: int, seed: int, tag: str) -> str:
    """`episodes` episodes of env_id (random policy) at size x size, collected once under work/stores."""
    from envs.collect import collect

    name = f"{env_id.replace('/', '_')}-{tag}"
    target = work / "stores" / f"{name}-{size}.zarr"
    if (target / ".done").exists():
        return str(target)
    raw = work / "stores" / f"{name}-64.zarr"
    if not (raw / ".done").exists():
        collect(env_id, str(raw), episodes=episodes, max_steps=max_steps, workers=0, seed=seed, show_progress=False,
                policy="random")
        (raw / ".done").touch()
    if size == 64:
        return str(raw)
    resize_store(str(raw), str(target), size)
    (target / ".done").touch()
    return str(target)


def resize_store(source: str, target: str, size: int, episodes: int | None = None) -> str:
    """A copy of `source` (its first `episodes` episodes) with frames resized to size x size (area)."""
    from dataclasses import replace

    import torch
    import torch.nn.functional as F

    from worldmodel.data import EpisodeStore
    from worldmodel.data.layout import array_names
    from worldmodel.spec import ImageSpec

    store = EpisodeStore.open(source)
    spec = replace(store.spec, image=ImageSpec(size, size, store.spec.image.channels))
    out = EpisodeStore.create(target, spec)
    names = array_names(store.spec)
    with out.writer() as writer:
        for ref in store.episodes[:episodes]:
            arrays = store.read_episode(ref, names)
            frames = torch.from_numpy(arrays["image"]).permute(0, 3, 1, 2).float()
            if frames.shape[-1] != size:
                frames = F.interpolate(frames, size=(size, size), mode="area")
            arrays["image"] = frames.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            writer.write_episode(arrays, seed=ref.seed)
    return target


# -- models -------------------------------------------------------------------------------------------------


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def pretrain(work: Path, stores: list[str], args, tag: str) -> str:
    """A diffusion-only bundle of a backbone pretrained on `stores` (cached)."""
    from worldmodel.bundle import add_diffusion_to_bundle
    from worldmodel.train.diffusion import train_diffusion
    from worldmodel.train.launcher import LaunchOptions

    bundle = work / f"pretrained-{tag}"
    if (bundle / "config.json").is_file():
        return str(bundle)
    run = work / f"pretrain-{tag}.run"
    model = train_diffusion(stores, LaunchOptions(out=str(run), gpus_per_worker=args.gpus_per_worker),
                            preset=args.preset, max_steps=args.pretrain_steps)
    add_diffusion_to_bundle(bundle, model, None)
    return str(bundle)


def scratch(work: Path, store: str, args, tag: str) -> tuple[str, dict]:
    from worldmodel.bundle import add_diffusion_to_bundle, load_diffusion_world
    from worldmodel.models.diffusion import parameter_count
    from worldmodel.train.diffusion import train_diffusion
    from worldmodel.train.launcher import LaunchOptions

    run, bundle = work / f"scratch-{tag}.run", work / f"scratch-{tag}"
    model, seconds = timed(train_diffusion, [store], LaunchOptions(out=str(run), gpus_per_worker=args.gpus_per_worker),
                           preset=args.preset, max_steps=args.adapt_steps)
    add_diffusion_to_bundle(bundle, model, [store])
    trainable = parameter_count(load_diffusion_world(bundle)[0])
    return str(bundle), {"trainable": trainable, "bytes": directory_bytes(bundle), "seconds": seconds}


def adapt(work: Path, base: str, store: str, method: str, args, tag: str) -> tuple[str, dict]:
    from worldmodel.bundle import write_adapted_bundle
    from worldmodel.train.adapt import adapt_diffusion
    from worldmodel.train.launcher import LaunchOptions

    run, bundle = work / f"{method}-{tag}.run", work / f"{method}-{tag}"
    (adapted, config, facts), seconds = timed(
        adapt_diffusion, base, [store], LaunchOptions(out=str(run), gpus_per_worker=args.gpus_per_worker),
        method=method, rank=args.rank, preset=args.preset, max_steps=args.adapt_steps,
    )
    write_adapted_bundle(bundle, adapted, base, [store], facts, config.provenance())
    share = facts["lora_parameters"] / facts["unet_parameters"]
    return str(bundle), {"trainable": facts["trainable_parameters"], "bytes": directory_bytes(bundle),
                         "seconds": seconds, "lora_share": share}


def zero_shot(work: Path, base: str, store: str, tag: str) -> tuple[str, dict]:
    """The pretrained backbone with the new env's parts as add_env makes them: no step on the new env."""
    from worldmodel.bundle import load_diffusion_world, write_adapted_bundle
    from worldmodel.data import EpisodeStore
    from worldmodel.models.diffusion import EnvInterface
    from worldmodel.models.diffusion.adapter import save_adapted

    world = load_diffusion_world(base)[0]
    spec = EpisodeStore.open(store).spec
    env = world.add_env(EnvInterface.from_spec(spec, f"{spec.env_id} (zero-shot)"))
    adapted = work / f"zero-shot-{tag}.run" / "adapted"
    info = save_adapted(world, adapted, "heads", env, extra={"spec": spec.to_dict(), "vector_norm": {}, "training": {}})
    bundle = work / f"zero-shot-{tag}"
    write_adapted_bundle(bundle, adapted, base, [store], {**info, "env": env}, {})
    return str(bundle), {"trainable": 0, "bytes": directory_bytes(bundle), "seconds": 0.0}


def directory_bytes(path) -> int:
    return int(sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()))


def adapter_bytes(bundle: str) -> int:
    """What an adapted bundle adds to its base: its weights files less the start contexts and config."""
    from worldmodel.bundle import CONFIG_FILE, CONTEXTS_FILE

    skip = {CONFIG_FILE, CONTEXTS_FILE}
    return int(sum(f.stat().st_size for f in Path(bundle).rglob("*") if f.is_file() and f.name not in skip))


def score(bundle: str, heldout: str, gif: Path | None = None) -> dict:
    """{horizon: (psnr, ssim)} of the bundle's dreams and of copy-last-frame on the held-out episodes; with
    `gif`, a folder for real_vmc_diffusion.gif (real | dream from one start, under the real actions)."""
    from worldmodel.evaluate import evaluate_fidelity

    result = evaluate_fidelity(bundle, heldout, max_episodes=16, max_starts=48, horizons=HORIZONS,
                               out=None if gif is None else str(gif))
    rows = result["rows"]
    return {name: {h: (rows[name][str(h)]["psnr"], rows[name][str(h)]["ssim"]) for h in HORIZONS if str(h) in rows[name]}
            for name in ("diffusion", "copy last frame")}


# -- report -------------------------------------------------------------------------------------------------


def table(results: dict, ks: list[int]) -> str:
    head = "| K | model | " + " | ".join(f"PSNR@{h} | SSIM@{h}" for h in HORIZONS) + " | trainable | adapter bytes | wall s |"
    lines = [head, "|" + " --- |" * (3 + 2 * len(HORIZONS) + 2)]
    for k in ks:
        for name in ("scratch", "lora", "full", "zero-shot"):
            row = results.get(f"{name}-K{k}")
            if row is None:
                continue
            cells = " | ".join(f"{row['score']['diffusion'][h][0]:.2f} | {row['score']['diffusion'][h][1]:.3f}" for h in HORIZONS)
            lines.append(f"| {k} | {name} | {cells} | {row['trainable']:,} | {row['adapter_bytes']:,} | {row['seconds']:.0f} |")
        copy = results[f"scratch-K{k}"]["score"]["copy last frame"]
        cells = " | ".join(f"{copy[h][0]:.2f} | {copy[h][1]:.3f}" for h in HORIZONS)
        lines.append(f"| {k} | copy last frame | {cells} | - | - | - |")
    return "\n".join(lines)


def scaling_plot(out: Path, counts: list[int], gains: list[float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 3.2))
    axes.plot(counts, gains, marker="o")
    axes.axhline(MARGIN_DB, linestyle="--", color="grey", label=f"pre-registered margin {MARGIN_DB} dB")
    axes.set_xlabel("pretraining envs")
    axes.set_ylabel("LoRA - scratch, PSNR@4 (dB), K=5")
    axes.set_xticks(counts)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main(argv=None) -> int:
    from worldmodel.raycluster import init_ray

    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ks = [int(k) for k in args.ks.split(",")]
    envs = [e for e in args.pretrain.split(",") if e]
    init_ray()
    started = time.perf_counter()

    stores = {env: suite_store(work, env, args.episodes_per_env, args.max_episode_steps, args.size, i, "train")
              for i, env in enumerate(envs)}
    pool = suite_store(work, args.held_out, max(ks), args.max_episode_steps, args.size, 100, "adapt")
    heldout = suite_store(work, args.held_out, args.eval_episodes, args.max_episode_steps, args.size, 200, "eval")
    subsets = {k: resize_store(pool, str(work / "stores" / f"heldout-K{k}.zarr"), args.size, k)
               if not (work / "stores" / f"heldout-K{k}.zarr").exists() else str(work / "stores" / f"heldout-K{k}.zarr")
               for k in ks}
    print(f"data ready in {time.perf_counter() - started:.0f} s: pretraining {', '.join(envs)}; held out {args.held_out}")

    base, seconds = timed(pretrain, work, [stores[e] for e in envs], args, f"{len(envs)}")
    print(f"pretrained on {len(envs)} envs ({args.pretrain_steps} steps) in {seconds:.0f} s")
    results: dict = {}
    for k in ks:
        for name, make in (("scratch", lambda: scratch(work, subsets[k], args, f"K{k}")),
                           ("lora", lambda: adapt(work, base, subsets[k], "lora", args, f"K{k}")),
                           ("full", lambda: adapt(work, base, subsets[k], "full", args, f"K{k}")),
                           ("zero-shot", lambda: zero_shot(work, base, subsets[k], f"K{k}"))):
            bundle, facts = make()
            facts["adapter_bytes"] = directory_bytes(bundle) if name in ("scratch", "full") else adapter_bytes(bundle)
            facts["score"] = score(bundle, heldout, work / f"gif-{name}-K{k}" if k == ks[0] else None)
            results[f"{name}-K{k}"] = facts
            print(f"K={k} {name}: PSNR@4 {facts['score']['diffusion'][4][0]:.2f} dB ({facts['seconds']:.0f} s)")

    counts, gains = [], []
    scratch_psnr = results[f"scratch-K{ks[0]}"]["score"]["diffusion"][4][0]
    for n in sorted({int(c) for c in args.scaling.split(",") if c} | {len(envs)}):
        if n == len(envs):
            psnr = results[f"lora-K{ks[0]}"]["score"]["diffusion"][4][0]
        else:
            smaller = pretrain(work, [stores[e] for e in envs[:n]], args, f"{n}")
            bundle, _ = adapt(work, smaller, subsets[ks[0]], "lora", args, f"K{ks[0]}-pre{n}")
            psnr = score(bundle, heldout)["diffusion"][4][0]
        counts.append(n)
        gains.append(psnr - scratch_psnr)

    lora = results[f"lora-K{ks[0]}"]
    gain = lora["score"]["diffusion"][4][0] - scratch_psnr
    passed = gain >= MARGIN_DB and lora["lora_share"] <= MAX_LORA_SHARE
    print(f"\nleave-one-game-out: pretrained on {', '.join(envs)} ({args.pretrain_steps} steps), held out "
          f"{args.held_out}; {args.size}x{args.size} frames, preset {args.preset}, {args.adapt_steps} adaptation steps "
          f"each, LoRA rank {args.rank}; scored on {args.eval_episodes} held-out episodes\n")
    print(table(results, ks))
    print("\n| pretraining envs | LoRA - scratch, PSNR@4, K=%d |\n| --- | --- |" % ks[0])
    for n, g in zip(counts, gains, strict=True):
        print(f"| {n} | {g:+.2f} dB |")
    plot = scaling_plot(work / "scaling.png", counts, gains)
    print(f"\nscaling plot: {plot}; real | dream GIFs at K={ks[0]}: {work}/gif-<model>-K{ks[0]}/real_vmc_diffusion.gif")
    print(f"\nPRE-REGISTERED: K={ks[0]}, LoRA - scratch at PSNR@4 = {gain:+.2f} dB (margin {MARGIN_DB} dB), LoRA "
          f"{lora['lora_share']:.1%} of the UNet (at most {MAX_LORA_SHARE:.0%}): {'PASS' if passed else 'MISS'}")
    print(f"total {time.perf_counter() - started:.0f} s")
    (work / "results.json").write_text(json.dumps({"results": results, "scaling": dict(zip(counts, gains, strict=True)),
                                                   "gain_db": gain, "passed": passed}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
