"""Gymnasium environments around worldmodel: the real sources that get recorded
into episode stores (`envs.sources`), the collection policies
(`envs.policies`), and later the dream and remote environments.

Kept light on purpose: nothing heavy (torch, Box2D, ALE, pygame) is imported
here, so `import envs` and gymnasium's string entry points stay cheap; import
the submodules you need.
"""
