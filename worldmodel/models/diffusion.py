"""The diffusion backbone: DIAMOND-style next-frame diffusion (Alonso et al. 2024) on diffusers.

A `diffusers.UNet2DModel` denoises the next frame x_{t+1} given the last L
frames (channel-concatenated with the noisy frame: in_channels 3 * (L + 1)).
The L actions (one-hot when discrete) and vector observations are embedded by
a small MLP whose output goes in through the UNet's class embedding
(`class_embed_type="identity"`), so it is added to the noise-level embedding
(DIAMOND adds its action embedding to the noise embedding the same way).

EDM (Karras et al. 2022) preconditioning and the Euler sampler come from
diffusers' `EDMEulerScheduler`: `precondition_inputs` (c_in),
`precondition_noise` (c_noise = log(sigma) / 4), `precondition_outputs`
(D = c_skip x + c_out F) and `step` (Euler, s_churn 0). Written here by hand,
because diffusers has no EDM *training* helper: the log-normal sigma draw and
the loss weight 1 / c_out^2 (`edm_c_out`, `sample_training_sigma`).

Not taken from DIAMOND: its offset noise (sigma_offset_noise 0.3) and its
AdamW/warm-up schedule (the shared loop uses Adam); its UNet is replaced by
diffusers' UNet2DModel of the same widths and depths (with diffusers' mid-block
attention).

Reward, termination and the next vector observation come from a separate
small CNN + LSTM head (DIAMOND's reward/end model) trained on the same windows.
diffusers is imported lazily, inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.models.config import ConfigMixin
from worldmodel.models.world import Context, State, Transition, VectorNorm, check_actions, draw_uniform
from worldmodel.spec import EnvSpec

UNET_DIR = "diffusion"
"""Where the UNet lies (diffusers `save_pretrained` format) in a model directory or a bundle."""
HEAD_FILE = "diffusion_head.safetensors"
"""The action/vector conditioning MLP and the reward/termination head, beside the UNet."""


@dataclass(frozen=True)
class DiffusionConfig(ConfigMixin):
    """Sizes and EDM constants. Defaults are DIAMOND's (Alonso et al. 2024, Atari 100k)."""

    action_dim: int
    """Discrete: number of actions (one-hot). Box: the action's length."""
    discrete_actions: bool
    vector_dim: int = 0
    """Length of the vector observation (0: the spec has none)."""
    image_size: int = 64
    """Frames are image_size x image_size."""
    channels: int = 3
    context_length: int = 4
    """L: frames (and actions) the denoiser conditions on."""
    block_out_channels: tuple[int, ...] = (64, 64, 64, 64)
    """UNet channels per level (DIAMOND: [64, 64, 64, 64]); the noise/condition embedding is 4x the first."""
    layers_per_block: int = 2
    """Residual blocks per UNet level (DIAMOND: depths [2, 2, 2, 2])."""
    norm_num_groups: int = 32
    """GroupNorm groups in the UNet; must divide every entry of block_out_channels."""
    sigma_data: float = 0.5
    """EDM's sigma_data: the std of frames scaled to [-1, 1]."""
    sigma_loc: float = -0.4
    """Training: log sigma ~ N(sigma_loc, sigma_scale^2)."""
    sigma_scale: float = 1.2
    train_sigma_min: float = 2e-3
    train_sigma_max: float = 20.0
    sample_sigma_min: float = 2e-3
    """Sampling: Karras schedule from sample_sigma_max down to sample_sigma_min, then 0."""
    sample_sigma_max: float = 5.0
    rho: float = 7.0
    sampling_steps: int = 3
    """Euler steps per generated frame (DIAMOND: 3)."""
    head_channels: tuple[int, ...] = (32, 32, 32, 32)
    """Reward/termination head: stride-2 convolutions (DIAMOND's reward/end encoder channels)."""
    head_hidden: int = 512
    """Reward/termination head: LSTM width (DIAMOND: 512)."""

    def __post_init__(self) -> None:
        if self.context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {self.context_length}")
        if self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {self.sampling_steps}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError(f"norm_num_groups {self.norm_num_groups} must divide block_out_channels {self.block_out_channels}")
        if self.image_size % (2 ** len(self.head_channels)):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.head_channels)} (head convolutions)")

    @classmethod
    def from_spec(cls, spec: EnvSpec, **overrides) -> DiffusionConfig:
        if spec.image.height != spec.image.width:
            raise ValueError(f"the diffusion backbone needs square frames, got {spec.image.shape}")
        return cls(
            action_dim=spec.action.dim,
            discrete_actions=spec.action.is_discrete,
            vector_dim=spec.vector.size if spec.vector is not None else 0,
            image_size=spec.image.height,
            channels=spec.image.channels,
            **overrides,
        )

    @property
    def embedding_dim(self) -> int:
        """Width of UNet2DModel's time embedding, which the condition embedding joins."""
        return self.block_out_channels[0] * 4

    def unet_kwargs(self) -> dict:
        """The `diffusers.UNet2DModel` keyword arguments of this config."""
        levels = len(self.block_out_channels)
        return {
            "sample_size": self.image_size,
            "in_channels": self.channels * (self.context_length + 1),
            "out_channels": self.channels,
            "block_out_channels": tuple(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "down_block_types": ("DownBlock2D",) * levels,
            "up_block_types": ("UpBlock2D",) * levels,
            "norm_num_groups": self.norm_num_groups,
            "class_embed_type": "identity",  # our condition embedding [B, 4 * C0] is added to the noise embedding
        }


# -- EDM pieces diffusers does not provide (training) ------------------------------------------


def edm_c_out(sigma: Tensor, sigma_data: float) -> Tensor:
    """c_out(sigma) = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2) (Karras et al. 2022, Table 1).

    The same factor EDMEulerScheduler.precondition_outputs uses; the training loss divides by it
    (EDM's loss weight lambda(sigma) = 1 / c_out^2)."""
    return sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()


def sample_training_sigma(batch: int, config: DiffusionConfig, device, generator=None) -> Tensor:
    """sigma [B]: log sigma ~ N(loc, scale^2), clipped to [train_sigma_min, train_sigma_max] (DIAMOND)."""
    log_sigma = torch.randn(batch, device=device, generator=generator) * config.sigma_scale + config.sigma_loc
    return log_sigma.exp().clamp(config.train_sigma_min, config.train_sigma_max)


def frames_to_unit(frames: Tensor) -> Tensor:
    """uint8 [..., H, W, C] -> float [..., C, H, W] in [-1, 1] (what sigma_data 0.5 assumes)."""
    return frames.movedim(-1, -3).float().div(127.5).sub(1.0)


def unit_to_frames(x: Tensor) -> Tensor:
    """float [..., C, H, W] in [-1, 1] -> uint8 [..., H, W, C], rounded."""
    return x.add(1.0).mul(127.5).clamp(0, 255).round().to(torch.uint8).movedim(-3, -1).contiguous()


class RewardHead(nn.Module):
    """Reward, termination and next vector from (frame_t, a_t, v_t) and an LSTM's memory.

    One LSTM cell steps the dream; `forward` runs the same cell over a sequence for training.
    """

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        layers, channels = [], config.channels
        for out in config.head_channels:
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.SiLU()]
            channels = out
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        side = config.image_size // 2 ** len(config.head_channels)
        self.project = nn.Linear(channels * side * side, config.head_hidden)
        self.cell = nn.LSTMCell(config.head_hidden + config.action_dim + config.vector_dim, config.head_hidden)
        self.out = nn.Linear(config.head_hidden, 2 + config.vector_dim)

    def initial_state(self, batch: int, device) -> tuple[Tensor, Tensor]:
        zeros = torch.zeros(batch, self.config.head_hidden, device=device)
        return zeros, zeros.clone()

    def step(self, frame: Tensor, action: Tensor, vector: Tensor | None, hc: tuple[Tensor, Tensor]):
        """frame [B, C, H, W] in [-1, 1], action features [B, A], vector [B, D] | None ->
        (reward [B], termination logit [B], next vector [B, D] | None), (h, c)."""
        features = F.silu(self.project(self.encoder(frame)))
        parts = [features, action] + ([vector] if vector is not None else [])
        h, c = self.cell(torch.cat(parts, dim=-1), hc)
        out = self.out(h)
        next_vector = out[:, 2:] if self.config.vector_dim else None
        return (out[:, 0], out[:, 1], next_vector), (h, c)

    def forward(self, frames: Tensor, actions: Tensor, vectors: Tensor | None, hc=None):
        """frames [B, T, C, H, W], actions [B, T, A], vectors [B, T, D] | None ->
        reward [B, T], termination logit [B, T], next vector [B, T, D] | None; and the last (h, c)."""
        b, t = frames.shape[:2]
        hc = hc if hc is not None else self.initial_state(b, frames.device)
        rewards, logits, nexts = [], [], []
        for i in range(t):
            (r, e, v), hc = self.step(frames[:, i], actions[:, i], None if vectors is None else vectors[:, i], hc)
            rewards.append(r), logits.append(e), nexts.append(v)
        stacked = torch.stack(nexts, 1) if self.config.vector_dim else None
        return torch.stack(rewards, 1), torch.stack(logits, 1), stacked, hc


class DiffusionWorld(nn.Module):
    """The trainable whole: the UNet (denoiser network), the condition embedding, the reward head."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        from diffusers import EDMEulerScheduler, UNet2DModel

        self.config = config
        self.unet = UNet2DModel(**config.unet_kwargs())
        width = config.context_length * (config.action_dim + config.vector_dim)
        self.condition = nn.Sequential(
            nn.Linear(width, config.embedding_dim), nn.SiLU(), nn.Linear(config.embedding_dim, config.embedding_dim)
        )
        self.head = RewardHead(config)
        # prediction_type "epsilon" is diffusers' name for EDM's F-parameterisation here:
        # D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with c_out > 0.
        self.scheduler = EDMEulerScheduler(
            sigma_min=config.sample_sigma_min, sigma_max=config.sample_sigma_max, sigma_data=config.sigma_data,
            rho=config.rho, prediction_type="epsilon", final_sigmas_type="zero",
        )

    def action_features(self, actions: Tensor) -> Tensor:
        """actions [...] int64 (discrete) or [..., A] float -> [..., A] float."""
        if self.config.discrete_actions:
            return F.one_hot(actions.long(), self.config.action_dim).float()
        return actions.float()

    def condition_embedding(self, actions: Tensor, vectors: Tensor | None) -> Tensor:
        """The L actions (and normalized vectors) [B, L, ...] -> [B, 4 * C0], added to the noise embedding."""
        parts = [self.action_features(actions)] + ([vectors.float()] if self.config.vector_dim else [])
        return self.condition(torch.cat(parts, dim=-1).flatten(1))

    def network(self, noisy: Tensor, sigma: Tensor, context: Tensor, condition: Tensor) -> Tensor:
        """F: noisy next frame [B, C, H, W], sigma [B], context frames [B, L, C, H, W] in [-1, 1]."""
        b, length, c, h, w = context.shape
        sigma4 = sigma.reshape(b, 1, 1, 1)
        # 1. EDM input and noise preconditioning (diffusers)
        scaled = self.scheduler.precondition_inputs(noisy, sigma4)
        c_noise = self.scheduler.precondition_noise(sigma)
        # 2. the context joins as channels, scaled to unit variance as in DIAMOND (obs / sigma_data)
        sample = torch.cat([scaled, context.reshape(b, length * c, h, w) / self.config.sigma_data], dim=1)
        # 3. the UNet, with the condition embedding added to the noise-level embedding
        return self.unet(sample, c_noise, class_labels=condition).sample

    def denoise(self, noisy: Tensor, sigma: Tensor, context: Tensor, condition: Tensor) -> Tensor:
        """D(x; sigma) = c_skip x + c_out F (diffusers' precondition_outputs)."""
        output = self.network(noisy, sigma, context, condition)
        return self.scheduler.precondition_outputs(noisy, output, sigma.reshape(-1, 1, 1, 1))

    def denoising_loss(
        self, frames: Tensor, actions: Tensor, vectors: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """frames [B, L + 1, H, W, C] uint8, actions [B, L(, A)], vectors [B, L, D]: EDM loss on frame L.

        E ||(D(x + sigma n; sigma) - x) / c_out||^2 = E ||F - (x - c_skip (x + sigma n)) / c_out||^2.
        `generator` fixes sigma and n (to compare models on the same draw)."""
        x = frames_to_unit(frames)
        context, target = x[:, :-1], x[:, -1]
        b = target.shape[0]
        sigma = sample_training_sigma(b, self.config, target.device, generator)
        noise = torch.randn(target.shape, device=target.device, generator=generator)
        noisy = target + sigma.reshape(b, 1, 1, 1) * noise
        denoised = self.denoise(noisy, sigma, context, self.condition_embedding(actions, vectors))
        c_out = edm_c_out(sigma, self.config.sigma_data).reshape(b, 1, 1, 1)
        return (((denoised - target) / c_out) ** 2).mean()

    def head_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Windows [B, T, ...]: reward MSE + termination BCE (+ next-vector MSE where it is in the window)."""
        frames = frames_to_unit(batch["h_image"])
        vectors = batch.get("h_vector")
        reward, logit, next_vector, _ = self.head(frames, self.action_features(batch["h_action"]), vectors)
        reward_loss = F.mse_loss(reward, batch["h_reward"].float())
        end_loss = F.binary_cross_entropy_with_logits(logit, batch["h_terminated"].float())
        logs = {"loss/reward": reward_loss.detach(), "loss/termination": end_loss.detach()}
        loss = reward_loss + end_loss
        if next_vector is not None:
            vector_loss = F.mse_loss(next_vector[:, :-1], vectors[:, 1:].float())
            logs["loss/vector"] = vector_loss.detach()
            loss = loss + vector_loss
        return loss, logs

    def loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective: denoising (d_* windows of L + 1) plus the head (h_* windows)."""
        denoising = self.denoising_loss(batch["d_image"], batch["d_action"][:, :-1], _context_vectors(batch))
        head, logs = self.head_loss(batch)
        return denoising + head, {"loss/denoising": denoising.detach(), **logs}

    @torch.no_grad()
    def sample_next(
        self, frames: Tensor, actions: Tensor, vectors: Tensor | None, generator=None,
        steps: int | None = None, noise_scale: float = 1.0,
    ) -> Tensor:
        """Frames [B, L, H, W, C] uint8 and their actions [B, L(, A)] (the last: the action taken now) ->
        the next frame [B, H, W, C] uint8, by `steps` Euler steps of EDMEulerScheduler.

        `generator`: one torch.Generator, or a list with one per row (each row's initial noise from its own)."""
        from diffusers import EDMEulerScheduler
        from diffusers.utils.torch_utils import randn_tensor

        context = frames_to_unit(frames)
        b, _, c, h, w = context.shape
        condition = self.condition_embedding(actions, vectors)
        scheduler = EDMEulerScheduler.from_config(self.scheduler.config)  # its own step counter: re-entrant
        scheduler.set_timesteps(steps or self.config.sampling_steps, device=context.device)
        if isinstance(generator, (list, tuple)) and len(generator) != b:
            raise ValueError(f"expected {b} generators (one per row), got {len(generator)}")
        x = randn_tensor((b, c, h, w), generator=generator, device=context.device, dtype=context.dtype)
        x = x * scheduler.sigmas[0].to(context.device) * noise_scale
        scheduler.is_scale_input_called = True  # `network` applies c_in itself (precondition_inputs)
        for i, t in enumerate(scheduler.timesteps):
            sigma = scheduler.sigmas[i].to(context.device)
            output = self.network(x, sigma.expand(b), context, condition)
            x = scheduler.step(output, t, x).prev_sample  # Euler, s_churn 0: draws no noise
        return unit_to_frames(x)


def _context_vectors(batch: dict[str, Tensor]) -> Tensor | None:
    vectors = batch.get("d_vector")
    return None if vectors is None else vectors[:, :-1]


class DiffusionWorldModel:
    """The WorldModel of the diffusion backbone.

    State: frames [B, L, H, W, C] uint8 (the last L frames, the newest last), actions [B, L - 1(, A)]
    (those taken at all but the newest frame), vectors [B, L, D] (normalized; when the spec has one),
    h and c [B, head_hidden] (the reward head's LSTM).
    """

    backend = "diffusion"

    def __init__(
        self,
        spec: EnvSpec,
        world: DiffusionWorld,
        *,
        vector_norm: dict[str, list[float]] | None = None,
        sampling_steps: int | None = None,
        seed: int | None = None,
        temperature: float = 1.0,
        device: str | torch.device = "cpu",
    ):
        self.spec = spec
        self.device = torch.device(device)
        self.world = world.to(self.device).eval()
        self.config = world.config
        self.sampling_steps = int(sampling_steps or self.config.sampling_steps)
        if self.sampling_steps < 1:
            raise ValueError(f"sampling_steps must be >= 1, got {self.sampling_steps}")
        self.temperature = float(temperature)
        """Scales the initial noise of each frame's sampling (1: the trained model as is)."""
        self.generator = None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))
        """Used when `step` is given no generator: a seeded model dreams reproducibly."""
        self.contexts: Context | None = None
        self.bundle_path = None
        self.bundle_config: dict | None = None
        self.vector_norm = VectorNorm(spec, vector_norm, self.device)

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def normalize_vector(self, vector) -> Tensor | None:
        return self.vector_norm.normalize(vector)

    @torch.no_grad()
    def initial_state(self, context: Context) -> State:
        """The last L context frames; the head's LSTM reads every context step but the newest."""
        frames = torch.as_tensor(context.frames, device=self.device)
        b, length = frames.shape[:2]
        big_l = self.context_length
        if length < big_l:
            raise ValueError(f"this model conditions on {big_l} frames: the context has {length}")
        actions = torch.as_tensor(context.actions, device=self.device)
        vectors = self.normalize_vector(context.vectors)
        if self.spec.vector is not None and vectors is None:
            raise ValueError("this model's spec has a vector observation: the context needs vectors")
        hc = self.world.head.initial_state(b, self.device)
        if length > 1:
            _, _, _, hc = self.world.head(
                frames_to_unit(frames[:, :-1]), self.world.action_features(actions[:, :-1]),
                None if vectors is None else vectors[:, :-1], hc,
            )
        state = {"frames": frames[:, -big_l:].contiguous(), "actions": actions[:, length - big_l : length - 1].contiguous(),
                 "h": hc[0], "c": hc[1]}
        if vectors is not None:
            state["vectors"] = vectors[:, -big_l:].contiguous()
        return state

    @torch.no_grad()
    def step(
        self, state: State, action: Tensor, generator=None, temperature: float | None = None
    ) -> tuple[State, Transition]:
        """Sample the next frame (per-row generators: a row dreams the same whatever shares its batch);
        the head gives reward, termination (drawn, as in V-M-C) and the next vector."""
        frames = state["frames"]
        b = frames.shape[0]
        action = check_actions(self.spec, action, b, self.device)
        generator = self.generator if generator is None else generator
        scale = self.temperature if temperature is None else float(temperature)
        actions = torch.cat([state["actions"], action[:, None]], dim=1)
        vectors = state.get("vectors")
        next_frame = self.world.sample_next(frames, actions, vectors, generator, self.sampling_steps, scale)
        (reward, logit, next_vector), (h, c) = self.world.head.step(
            frames_to_unit(frames[:, -1]), self.world.action_features(action),
            None if vectors is None else vectors[:, -1], (state["h"], state["c"]),
        )
        terminated = draw_uniform(b, generator, self.device) < torch.sigmoid(logit.float())
        next_state = {"frames": torch.cat([frames[:, 1:], next_frame[:, None]], dim=1), "actions": actions[:, 1:],
                      "h": h, "c": c}
        if vectors is not None:
            next_state["vectors"] = torch.cat([vectors[:, 1:], next_vector[:, None]], dim=1)
        return next_state, Transition(next_frame, self.vector_of(next_state), reward.float(), terminated)

    def vector_of(self, state: State) -> Tensor | None:
        if "vectors" not in state:
            return None
        return self.vector_norm.denormalize(state["vectors"][:, -1])

    def observation_of(self, state: State) -> Transition:
        b = state["frames"].shape[0]
        zeros = torch.zeros(b, device=self.device)
        return Transition(state["frames"][:, -1], self.vector_of(state), zeros, zeros.bool())


# -- on disk ----------------------------------------------------------------------------------


def save_diffusion(world: DiffusionWorld, directory, extra: dict | None = None):
    """directory/diffusion/ (the UNet, diffusers `save_pretrained`), directory/diffusion_head.safetensors
    (condition embedding + head) and directory/diffusion.json (config and `extra`)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from worldmodel.models.io import unwrap

    world = unwrap(world)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    world.unet.save_pretrained(directory / UNET_DIR, safe_serialization=True)
    rest = {k: v.detach().cpu().contiguous() for k, v in world.state_dict().items() if not k.startswith("unet.")}
    save_file(rest, str(directory / HEAD_FILE))
    (directory / "diffusion.json").write_text(json.dumps({"config": world.config.to_dict(), **(extra or {})}, indent=2))
    return directory


def load_diffusion(directory, config: DiffusionConfig | None = None, device="cpu") -> DiffusionWorld:
    """The DiffusionWorld saved by `save_diffusion` (the UNet through `UNet2DModel.from_pretrained`)."""
    import json
    from pathlib import Path

    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    directory = Path(directory)
    if config is None:
        config = DiffusionConfig.from_dict(json.loads((directory / "diffusion.json").read_text())["config"])
    world = DiffusionWorld(config)
    unet = UNet2DModel.from_pretrained(directory / UNET_DIR, low_cpu_mem_usage=False)  # no `accelerate` needed
    expected = config.unet_kwargs()
    for key in ("in_channels", "out_channels", "sample_size"):
        if unet.config[key] != expected[key]:
            raise ValueError(f"{directory / UNET_DIR}: UNet {key} is {unet.config[key]}, the config needs {expected[key]}")
    world.unet = unet
    rest = load_file(str(directory / HEAD_FILE))
    own = {k: v for k, v in world.state_dict().items() if not k.startswith("unet.")}
    missing, unexpected = set(own) - set(rest), set(rest) - set(own)
    if missing or unexpected:
        raise ValueError(f"{directory / HEAD_FILE} does not match: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    world.load_state_dict({**{f"unet.{k}": v for k, v in unet.state_dict().items()}, **rest})
    return world.to(device).eval()


def parameter_count(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


__all__ = [
    "DiffusionConfig", "DiffusionWorld", "DiffusionWorldModel", "RewardHead", "edm_c_out",
    "load_diffusion", "save_diffusion", "sample_training_sigma", "parameter_count",
]
