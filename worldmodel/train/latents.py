"""V's latents of a store, encoded once and cached under the run that needs them.

    RUN/latents/<name>-<hash>.zarr/zarr.json               attrs: the VAE's fingerprint, the store
    RUN/latents/<name>-<hash>.zarr/<part-id>/mu, logvar    (N, Z) float32, N = the part's visible steps

<name>-<hash> is the store's name and a hash of its location, so several stores
share one cache folder. The store itself is never written (it may be read-only
or shared). A cache made by another VAE is rebuilt; parts added to the store
since are encoded and added; a part that grew is re-encoded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm import tqdm

from worldmodel.data.layout import read_rows
from worldmodel.data.store import EpisodeStore
from worldmodel.models.images import to_model_input
from worldmodel.models.io import CONFIG_FILE, WEIGHTS_FILE, load_pretrained

ATTR = "worldmodel_latents"


def vae_fingerprint(vae_dir: str | Path) -> str:
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        digest.update(Path(vae_dir, name).read_bytes())
    return digest.hexdigest()


def latents_location(store: EpisodeStore, cache_dir: str | Path) -> str:
    """Where `store`'s latents are cached under `cache_dir` (a run's latents/ folder)."""
    name = store.location.rstrip("/").split("/")[-1].removesuffix(".zarr") or "store"
    digest = hashlib.sha256(store.location.encode()).hexdigest()[:12]
    return str(Path(cache_dir).resolve() / f"{name}-{digest}.zarr")


def encode_store(store: EpisodeStore, vae_dir: str | Path, cache_dir: str | Path, batch_size: int = 256,
                 show_progress: bool = True) -> str:
    """Bring `store`'s latents under `cache_dir` up to date with the store and the VAE in `vae_dir`;
    returns the cache's location."""
    fingerprint = vae_fingerprint(vae_dir)
    location = latents_location(store, cache_dir)
    root = zarr.open_group(location, mode="a")
    if root.attrs.get(ATTR, {}).get("vae") != fingerprint:
        root = zarr.open_group(location, mode="w")  # another V: nothing in it is valid
        root.attrs[ATTR] = {"vae": fingerprint, "store": store.location}
    steps = visible_steps(store)
    todo = [p for p, n in steps.items() if n and (p not in root or root[p]["mu"].shape[0] != n)]
    if not todo:
        return location
    vae = load_pretrained(vae_dir, expected="ConvVAE")
    with tqdm(total=sum(steps[p] for p in todo), desc="encode latents", unit="frame", disable=not show_progress) as bar:
        for part in todo:
            images = store.data_array(part, "image")
            mu, logvar = [], []
            for start in range(0, steps[part], batch_size):
                stop = min(start + batch_size, steps[part])
                with torch.no_grad():
                    m, lv = vae.encode(to_model_input(torch.from_numpy(read_rows(images, start, stop))))
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
    root = zarr.open_group(location, mode="r")
    return {
        part: (np.asarray(root[part]["mu"][:n]), np.asarray(root[part]["logvar"][:n]))
        for part, n in visible_steps(store).items() if n
    }


def visible_steps(store: EpisodeStore) -> dict[str, int]:
    """{part: steps covered by its committed episodes} (0 for a part with none yet)."""
    steps = dict.fromkeys(store.part_ids(), 0)
    for ref in store.episodes:
        steps[ref.part] = max(steps[ref.part], ref.stop)
    return steps
