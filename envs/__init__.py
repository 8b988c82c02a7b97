"""Gymnasium environments around worldmodel: the real sources that get recorded
into episode stores (`envs.sources`), the collection policies
(`envs.policies`), the dream environments over a trained world model
(`envs.dream`, registered by `import worldmodel` as "worldmodel/Dream-v0")
and the keyboard play tool (`envs.play`).

Kept light on purpose: nothing heavy (torch, Box2D, ALE, pygame) is imported
here, so `import envs` and gymnasium's string entry points stay cheap; import
the submodules you need.
"""
