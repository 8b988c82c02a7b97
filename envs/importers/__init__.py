"""Importers: episodes recorded elsewhere (a Minari dataset, a folder of videos) into an episode store.

Each importer reads and checks all of its input first and gives an ImportPlan; `write_plan` writes it as
one new part of the store, so a bad input writes nothing (`worldmodel import`, worldmodel/cli/importing.py).
"""

from envs.importers.core import EpisodeSource, ImportPlan, ImportSummary, check_store_accepts, write_plan
from envs.importers.minari_datasets import plan_minari_import
from envs.importers.video_folders import parse_action_space, plan_video_import

__all__ = [
    "EpisodeSource", "ImportPlan", "ImportSummary", "check_store_accepts", "parse_action_space",
    "plan_minari_import", "plan_video_import", "write_plan",
]
