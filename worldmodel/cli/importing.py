"""`worldmodel import`: episodes recorded elsewhere (a Minari dataset, a folder of videos) into an episode store."""

from __future__ import annotations

import argparse

from worldmodel.cli.common import CliError, Subparsers, add_command, positive_int


def add_import_command(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "import", run_import,
        help="import a Minari dataset or a folder of videos into an episode store",
        description=(
            "Append recorded episodes to a zarr episode store, as one new part. Reads: --minari or --video. "
            "Writes: --out (created, or appended to when its spec matches). Every episode is read and checked "
            "first: a bad input is one error and writes nothing. Frames are resized to --image-size, the final "
            "observation of a Minari episode (one more than its actions) is dropped. A Minari dataset without "
            "image observations is rendered by replaying its env from each episode's seed, which must reproduce "
            "the recorded observations. A video folder pairs NAME.mp4 with NAME.npz or NAME.csv holding one "
            "'action' per frame (columns action_0, action_1, ... for a vector) and optionally 'reward', "
            "'terminated', 'truncated'. Time: a few seconds to start, then about 500 steps/s on 2 CPU cores for 96x96 "
            "video (each video is decoded twice: to check it, then to write it)."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--minari", metavar="DATASET",
                        help="a dataset id in the local Minari data path (MINARI_DATASETS_PATH), or a dataset directory")
    source.add_argument("--video", metavar="DIR", help="a folder of videos, each with its actions file of the same name")
    parser.add_argument("--out", required=True, help="store path or fsspec URL")
    parser.add_argument("--image-size", type=positive_int, default=64, help="side of the stored square frames (default: 64)")
    parser.add_argument("--image-key", default=None, metavar="KEY",
                        help="--minari with dict observations: the entry that is the image (default: the one image entry)")
    parser.add_argument("--vector-keys", default=None, metavar="KEY[,KEY...]",
                        help="--minari with dict observations: the entries that make the vector, comma-separated")
    parser.add_argument("--action-space", default=None, metavar="SPACE",
                        help="--video: discrete:N or box:DIM:LOW:HIGH (default: inferred, integers Discrete(max + 1), "
                        "floats a Box over their range; an existing store's when it holds every action)")
    parser.add_argument("--env-id", default="", metavar="ID", help="--video: the env id recorded in the spec (default: none)")


def run_import(args: argparse.Namespace) -> None:
    from envs.importers import parse_action_space, plan_minari_import, plan_video_import, write_plan

    if args.minari is not None:
        for flag in ("action_space", "env_id"):
            if getattr(args, flag):
                raise CliError(f"--{flag.replace('_', '-')} applies to --video; a Minari dataset records its own")
        plan = plan_minari_import(args.minari, image_size=args.image_size, image_key=args.image_key,
                                  vector_keys=_keys(args.vector_keys))
        origin = f"minari:{plan.attrs['dataset']}"
    else:
        if args.image_key is not None or args.vector_keys is not None:
            raise CliError("--image-key and --vector-keys apply to --minari; a video is the image alone")
        try:
            action = parse_action_space(args.action_space) if args.action_space else None
        except ValueError as err:
            raise CliError(f"--action-space: {err}") from None
        plan = plan_video_import(args.video, image_size=args.image_size, action_space=action, env_id=args.env_id,
                                 store=args.out)
        origin = f"video:{args.video}"
    summary = write_plan(plan, args.out)
    print(f"imported {summary.episodes} episodes, {summary.steps} steps from {origin} into {summary.store} "
          f"(part {summary.part}, actions {plan.spec.action.describe()})")


def _keys(text: str | None) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in (text or "").split(",") if key.strip())
    if text is not None and not keys:
        raise CliError(f"--vector-keys names no key: {text!r}")
    return keys


__all__ = ["add_import_command", "run_import"]
