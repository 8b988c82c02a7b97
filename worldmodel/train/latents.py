"""V's latents of a store, encoded once and cached beside it as zarr.

    STORE.latents.zarr/zarr.json               attrs: the VAE's fingerprint
    STORE.latents.zarr/<part-id>/mu, logvar    (N, Z) float32, N = the part's visible steps

A cache made by another VAE is rebuilt; parts added to the store since are
encoded and added; a part that grew is re-encoded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from worldmodel.data.store import EpisodeStore, zarr_store
from worldmodel.models.images import to_model_input
from worldmodel.models.io import CONFIG_FILE, WEIGHTS_FILE, load_pretrained

ATTR = "worldmodel_latents"


def vae_fingerprint(vae_dir: str | Path) -> str:
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update(Path(vae_dir, name).read_bytes())
    return digest.hexdigest()


def latents_location(store: EpisodeStore) -> str:
    return store.location.rstrip("/") + ".latents.zarr"


def encode_store(store: EpisodeStore, vae_dir: str | Path, batch_size: int = 256, show_progress: bool = True) -> str:
    """Bring STORE.latents.zarr up to date with `store` and the VAE in `vae_dir`; returns its location."""
    fingerprint = vae_fingerprint(vae_dir)
    location = latents_location(store)
    backing = zarr_store(location, read_only=False, storage_options=store.storage_options)
    root = zarr.open_group(backing, mode="a")
    if root.attrs.get(ATTR, {}).get("vae") != fingerprint:
        root = zarr.open_group(backing, mode="w")  # another V: nothing in it is valid
        root.attrs[ATTR] = {"vae": fingerprint}
    steps = {part: _visible_steps(store, part) for part in store.part_ids()}
    todo = [p for p, n in steps.items() if n and (p not in root or root[p]["mu"].shape[0] != n)]
    if not todo:
        return location
    vae = load_pretrained(vae_dir, expected="ConvVAE")
    with tqdm(total=sum(steps[p] for p in todo), desc="encode latents", unit="frame", disable=not show_progress) as bar:
        for part in todo:
            images = store.part(part)["data/image"]
            mu, logvar = [], []
            for start in range(0, steps[part], batch_size):
                stop = min(start + batch_size, steps[part])
                with torch.no_grad():
                    m, lv = vae.encode(to_model_input(torch.from_numpy(np.asarray(images[start:stop]))))
                mu.append(m.numpy())
                logvar.append(lv.numpy())
                bar.update(stop - start)
            group = root.require_group(part)
            for name, values in (("mu", mu), ("logvar", logvar)):
                data = np.concatenate(values).astype(np.float32)
                group.create_array(name, shape=data.shape, dtype=np.float32, chunks=(4096, data.shape[1]), overwrite=True)
                group[name][:] = data
    return location


def read_latents(store: EpisodeStore, location: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{part: (mu, logvar)} for every visible step of the store."""
    root = zarr.open_group(zarr_store(location, read_only=True, storage_options=store.storage_options), mode="r")
    out = {}
    for part in store.part_ids():
        n = _visible_steps(store, part)
        if n:
            out[part] = (np.asarray(root[part]["mu"][:n]), np.asarray(root[part]["logvar"][:n]))
    return out


def _visible_steps(store: EpisodeStore, part: str) -> int:
    ends = store.part(part)["meta/episode_ends"][:]
    return int(ends[-1]) if len(ends) else 0

