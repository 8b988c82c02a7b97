"""The diffusion backbone: DIAMOND-style next-frame diffusion (Alonso et al. 2024) on diffusers.

A `diffusers.UNet2DModel` denoises the next frame x_{t+1} given the last L frames (channel-concatenated
with the noisy frame); the actions and vector observations join the noise-level embedding. EDM
preconditioning (Karras et al. 2022) and the Euler sampler come from diffusers' `EDMEulerScheduler`.
Reward, termination and the next vector observation come from a separate small CNN + LSTM head.

One job per module, as DIAMOND splits denoiser, sampler and inner model:

    config.py   DiffusionConfig: sizes and EDM constants
    edm.py      the EDM training math diffusers lacks (sigma draw, noising, weighted loss), pixel scaling
    head.py     RewardHead: reward, termination and next vector
    network.py  DiffusionWorld: UNet + condition embedding + head, and the training objective
    sampler.py  few-step Euler sampling of the next frame
    backend.py  DiffusionWorldModel: the WorldModel interface
    adapter.py  adapting to a new env: LoRA (peft), heads or full; the adapted model on disk
    io.py       save/load: the UNet (diffusers save_pretrained), the head (safetensors), diffusion.json

diffusers is imported lazily, inside the functions that need it: importing this package does not.
"""

from worldmodel.models.diffusion.backend import DiffusionWorldModel
from worldmodel.models.diffusion.config import DiffusionConfig, EnvInterface
from worldmodel.models.diffusion.edm import (
    add_noise,
    edm_c_out,
    edm_weighted_loss,
    frames_to_unit,
    sample_training_sigma,
    unit_to_frames,
)
from worldmodel.models.diffusion.head import RewardHead
from worldmodel.models.diffusion.io import DIFFUSION_CONFIG_FILE, HEAD_FILE, UNET_DIR, load_diffusion, save_diffusion
from worldmodel.models.diffusion.network import DiffusionWorld, EnvParts, env_batch, parameter_count, split_env_batch
from worldmodel.models.diffusion.sampler import sample_next_frame

__all__ = [
    "DIFFUSION_CONFIG_FILE", "HEAD_FILE", "UNET_DIR",
    "DiffusionConfig", "DiffusionWorld", "DiffusionWorldModel", "EnvInterface", "EnvParts", "RewardHead",
    "add_noise", "edm_c_out", "edm_weighted_loss", "env_batch", "frames_to_unit", "load_diffusion", "parameter_count",
    "sample_next_frame", "sample_training_sigma", "save_diffusion", "split_env_batch", "unit_to_frames",
]
