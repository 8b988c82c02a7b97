"""M: the MDN-RNN of Ha & Schmidhuber 2018 ("World Models", appendix A.2).

An LSTM reads, at each step t, the latent z_t, the action a_t (one-hot when
discrete) and, in the multimodal case, the vector observation v_t. Its hidden
state feeds four heads:

- a mixture density network: per z dimension, a mixture of K Gaussians over
  z_{t+1} (logits, means, log standard deviations);
- the reward r_t of taking a_t (a scalar, MSE);
- the termination after a_t (a logit, binary cross-entropy);
- the next vector v_{t+1} (MSE), when the spec has one.

`forward` runs the sequence (training); `step` runs the same LSTM on a
length-1 sequence (dreaming), so the two share weights by construction.
Sampling follows the original code: mixture logits divided by the temperature
tau, standard deviations scaled by sqrt(tau).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Categorical, MixtureSameFamily, Normal

from worldmodel.models.noise import Noise, uniform_and_normal

from worldmodel.models.config import ConfigMixin

if TYPE_CHECKING:
    from worldmodel.spec import EnvSpec

LSTMState = tuple[Tensor, Tensor]
"""(h, c), each [num_layers=1, B, hidden_size], as nn.LSTM takes it."""


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of values [B, T] over the steps where mask [B, T] is true (all when None)."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def gmm_nll(
    z_next: Tensor,
    logits: Tensor,
    mu: Tensor,
    log_sigma: Tensor,
    mask: Tensor | None = None,
) -> Tensor:
    """Negative log-likelihood of z_next under a mixture of Gaussians per z dimension.

        -log p(z) = -sum_i log sum_k pi_{ik} N(z_i; mu_{ik}, sigma_{ik}^2),
        pi_{ik} = softmax_k(logits_{ik}),  sigma_{ik} = exp(log_sigma_{ik}),

    summed over the Z dimensions i and averaged over batch and time (over the
    steps where mask is true, when a mask is given).

    Shapes: z_next [B, T, Z]; logits, mu, log_sigma [B, T, Z, K]; mask [B, T]
    (bool) or None. Returns a scalar.
    """
    mixture = MixtureSameFamily(Categorical(logits=logits), Normal(mu, log_sigma.exp()))
    nll = -mixture.log_prob(z_next).sum(dim=-1)  # [B, T]
    return _masked_mean(nll, mask)


class MDNOutput(NamedTuple):
    """What the MDN-RNN predicts; every tensor has leading dims [B, T] (or [B] from `step`)."""

    logits: Tensor
    """Mixture logits [B, T, Z, K]."""
    mu: Tensor
    """Component means [B, T, Z, K]."""
    log_sigma: Tensor
    """Component log standard deviations [B, T, Z, K]."""
    reward: Tensor | None
    """Predicted reward of the step [B, T]; None from `step` when reward_from_next (see `next_reward`)."""
    termination_logit: Tensor
    """Logit of "the episode terminated after this step" [B, T]."""
    vector: Tensor | None = None
    """Predicted next vector observation [B, T, D], or None when vector_dim == 0."""
    hidden: Tensor | None = None
    """The LSTM output the heads read [B, T, H] (after dropout): `next_reward` takes it."""

    def at(self, t: int) -> MDNOutput:
        """The outputs of time step t, [B, ...]; indexing, not squeeze(), so B = 1 stays a batch."""
        return MDNOutput(*(None if x is None else x[:, t] for x in self))


@dataclass(frozen=True)
class MDNRNNConfig(ConfigMixin):
    """Sizes of the MDN-RNN; the defaults are the paper's (CarRacing)."""

    latent_dim: int = 32
    """Size of z (the VAE's latent_dim)."""
    action_dim: int = 3
    """Box: the action size. Discrete: the number of actions n (one-hot width)."""
    discrete_actions: bool = False
    """True when actions are int64 indices in [0, action_dim), one-hot encoded inside."""
    vector_dim: int = 0
    """Size of the vector observation fed in and predicted; 0 for image-only specs."""
    hidden_size: int = 256
    """LSTM hidden units."""
    num_mixtures: int = 5
    """Gaussians per z dimension in the mixture density head (K)."""
    predict_delta: bool = False
    """Mixture means (and the next vector) are offsets from the current z (and vector), not
    absolute values, when set. Not in the paper (hence off by default): where consecutive
    frames barely move z (CarRacing), the absolute form spends capacity re-learning the
    identity and can lose to copying z_t (eval-model); on CartPole the absolute form made
    the dream that transferred better (tests/test_agents.py)."""

    reward_from_next: bool = False
    """The reward head reads [h, z_{t+1}, v_{t+1}] (the next latent and vector: the posterior sample in
    training, the dreamed one in a dream) instead of h alone. What decides a reward (CarRacing: a car
    on a fresh road tile, its speed) shows in the next observation, so the dream pays for what it
    shows. Not in the paper; the termination head stays on h (a terminal step has no next frame)."""
    dropout: float = 0.0
    """Dropout rate on M's inputs and on the LSTM output before the heads, in training."""
    dream_dropout: bool = False
    """Keep that dropout on while dreaming (Dropout's Dream Land, Wellmer & Kwok 2021): every dream
    step then runs a different sub-network, which a controller cannot exploit as easily. Masks are
    drawn from the dream's per-row generators, so dreams stay reproducible."""

    def __post_init__(self) -> None:
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"MDNRNNConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("latent_dim", "action_dim", "hidden_size", "num_mixtures"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"MDNRNNConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.vector_dim, int) or self.vector_dim < 0:
            raise ValueError(f"MDNRNNConfig.vector_dim must be an int >= 0, got {self.vector_dim!r}")
        if not isinstance(self.discrete_actions, bool):
            raise ValueError(f"MDNRNNConfig.discrete_actions must be a bool, got {self.discrete_actions!r}")

    @classmethod
    def from_spec(cls, spec: EnvSpec, **overrides: Any) -> MDNRNNConfig:
        """The config for a spec's action and vector sizes, with other fields overridden."""
        return cls(
            action_dim=spec.action.dim,
            discrete_actions=spec.action.is_discrete,
            vector_dim=spec.vector.size if spec.vector is not None else 0,
            **overrides,
        )


class MDNRNN(nn.Module):
    """(z_t, a_t, v_t) sequences -> mixture over z_{t+1}, r_t, termination_t, v_{t+1}."""

    def __init__(self, config: MDNRNNConfig) -> None:
        super().__init__()
        self.config = config
        z, k, hidden = config.latent_dim, config.num_mixtures, config.hidden_size
        self.input_dim = z + config.action_dim + config.vector_dim
        self.lstm = nn.LSTM(self.input_dim, hidden, batch_first=True)
        # One linear per head: 3 mixture parameters per (z dim, component).
        self.mdn_head = nn.Linear(hidden, 3 * z * k)
        next_dim = z + config.vector_dim if config.reward_from_next else 0
        self.reward_head = nn.Linear(hidden + next_dim, 1)
        self.termination_head = nn.Linear(hidden, 1)
        self.vector_head = nn.Linear(hidden, config.vector_dim) if config.vector_dim > 0 else None

    # -- inputs -------------------------------------------------------------
    def _action_features(self, action: Tensor, lead: tuple[int, ...]) -> Tensor:
        """action: int64 indices [*lead] (discrete) or float [*lead, A] (box) -> float [*lead, A]."""
        cfg = self.config
        if cfg.discrete_actions:
            if tuple(action.shape) != lead or action.is_floating_point():
                raise ValueError(
                    f"discrete actions must be integer indices of shape {lead}, got {action.dtype} {tuple(action.shape)}"
                )
            return F.one_hot(action.long(), cfg.action_dim).to(torch.float32)
        if tuple(action.shape) != (*lead, cfg.action_dim) or not action.is_floating_point():
            raise ValueError(
                f"box actions must be float of shape {(*lead, cfg.action_dim)}, got {action.dtype} {tuple(action.shape)}"
            )
        return action

    def _inputs(self, z: Tensor, action: Tensor, vector: Tensor | None) -> Tensor:
        """Concatenate z [*lead, Z], action and vector [*lead, D] into LSTM inputs [*lead, input_dim]."""
        cfg = self.config
        lead = tuple(z.shape[:-1])
        if z.shape[-1] != cfg.latent_dim:
            raise ValueError(f"z must end in latent_dim={cfg.latent_dim}, got shape {tuple(z.shape)}")
        parts = [z, self._action_features(action, lead).to(z.dtype)]
        if cfg.vector_dim > 0:
            if vector is None or tuple(vector.shape) != (*lead, cfg.vector_dim):
                got = None if vector is None else tuple(vector.shape)
                raise ValueError(f"this MDN-RNN needs a vector of shape {(*lead, cfg.vector_dim)}, got {got}")
            parts.append(vector.to(z.dtype))
        elif vector is not None:
            raise ValueError("this MDN-RNN has vector_dim=0 but a vector was given")
        return torch.cat(parts, dim=-1)

    # -- outputs ------------------------------------------------------------
    def _heads(self, h: Tensor, z_now: Tensor, vector_now: Tensor | None) -> MDNOutput:
        """LSTM outputs h [B, T, hidden] -> MDNOutput of [B, T, ...] tensors; z_now [B, T, Z] and
        vector_now [B, T, D] are what the means are offsets from when predict_delta is set."""
        b, t, _ = h.shape
        z, k = self.config.latent_dim, self.config.num_mixtures
        logits, mu, log_sigma = self.mdn_head(h).view(b, t, z, 3, k).unbind(dim=3)
        vector = self.vector_head(h) if self.vector_head is not None else None
        if self.config.predict_delta:
            mu = mu + z_now[..., None]
            if vector is not None and vector_now is not None:
                vector = vector + vector_now
        return MDNOutput(
            logits=logits,
            mu=mu,
            log_sigma=log_sigma,
            reward=None if self.config.reward_from_next else self.reward_head(h)[..., 0],
            termination_logit=self.termination_head(h)[..., 0],
            vector=vector,
            hidden=h,
        )

    def next_reward(self, hidden: Tensor, z_next: Tensor, vector_next: Tensor | None) -> Tensor:
        """With reward_from_next: the reward [*lead] from h [*lead, H] and the next z [*lead, Z] (and vector)."""
        parts = [hidden, z_next] + ([vector_next] if self.config.vector_dim > 0 else [])
        return self.reward_head(torch.cat(parts, dim=-1))[..., 0]

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> LSTMState:
        """Zero (h, c), each [1, batch, hidden_size]."""
        shape = (1, batch, self.config.hidden_size)
        return torch.zeros(shape, device=device), torch.zeros(shape, device=device)

    def forward(
        self,
        z: Tensor,
        action: Tensor,
        vector: Tensor | None = None,
        state: LSTMState | None = None,
    ) -> tuple[MDNOutput, LSTMState]:
        """Run a sequence.

        z [B, T, Z]; action [B, T] int64 (discrete) or [B, T, A] float (box);
        vector [B, T, D] when vector_dim > 0; state (h, c) [1, B, H] or None
        (zeros). Returns the MDNOutput ([B, T, ...]) and the final state.
        """
        x = F.dropout(self._inputs(z, action, vector), self.config.dropout, self.training)
        h, new_state = self.lstm(x, state)
        out = self._heads(F.dropout(h, self.config.dropout, self.training), z, vector)
        if self.config.reward_from_next:
            # Teacher forcing: step t's reward reads the real z_{t+1}; the last step has none (zeros, masked in loss).
            shifted = (lambda x: None if x is None else torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1))
            out = out._replace(reward=self.next_reward(out.hidden, shifted(z), shifted(vector)))
        return out, new_state

    def step(
        self,
        z: Tensor,
        action: Tensor,
        vector: Tensor | None = None,
        state: LSTMState | None = None,
        dream: bool = False,
        generator: Noise = None,
    ) -> tuple[MDNOutput, LSTMState]:
        """One step for a batch: z [B, Z]; action [B] or [B, A]; vector [B, D] or None.

        The same LSTM as `forward`, run on a length-1 sequence; outputs are [B, ...]. A `dream`
        step of a model with dream_dropout (in eval mode) drops units with masks drawn from `generator`.
        """
        x = self._inputs(z, action, vector)
        keep = self._dream_masks(x.shape[0], x.device, generator) if dream else None
        if keep is not None:
            x = x * keep[0]
        h, new_state = self.lstm(x[:, None], state)
        if keep is not None:
            h = h * keep[1][:, None]
        return self._heads(h, z[:, None], None if vector is None else vector[:, None]).at(0), new_state

    def _dream_masks(self, batch: int, device, generator) -> tuple[Tensor, Tensor] | None:
        """Inverted-dropout masks (input [B, I], hidden [B, H]) for a dream step, or None when the
        dream runs without dropout; drawn from `generator` (one per row keeps rows independent)."""
        rate = self.config.dropout
        if self.training or not self.config.dream_dropout or rate == 0.0:
            return None
        sizes = (self.input_dim, self.config.hidden_size)
        uniform, _ = uniform_and_normal(generator, batch, sum(sizes), 0, torch.device(device))
        keep = (uniform >= rate).float() / (1.0 - rate)
        return keep[:, : sizes[0]], keep[:, sizes[0] :]

    @torch.no_grad()
    def sample_next_z(self, out: MDNOutput, temperature: float = 1.0, generator: Noise = None) -> Tensor:
        """Sample z_{t+1} [*lead, Z] from the mixture in out ([*lead, Z, K] tensors), with noise drawn
        from `generator`: per-row streams (a row then samples the same whatever shares its batch), one
        torch.Generator, or None. See `next_z_from`."""
        *lead, z, _ = out.logits.shape
        rows, per_row = lead[0] if lead else 1, math.prod(lead[1:]) * z
        uniform, normal = uniform_and_normal(generator, rows, per_row, per_row, out.mu.device, out.mu.dtype)
        return self.next_z_from(out, temperature, uniform.reshape(*lead, z), normal.reshape(*lead, z))

    @staticmethod
    def next_z_from(out: MDNOutput, temperature: float, uniform: Tensor, normal: Tensor) -> Tensor:
        """z_{t+1} [*lead, Z] from the mixture in out, given a uniform and a standard normal [*lead, Z].

        As in the original code, the mixture logits are divided by the temperature and the standard
        deviations scaled by sqrt(temperature). torch.distributions' sample() takes no generator, so
        the component is drawn by inverting the mixture CDF at the uniform, and the normal is the
        Gaussian noise: the caller decides where both come from, which makes dreams reproducible.
        """
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        k = out.logits.shape[-1]
        # The unnormalised CDF, searched at uniform x total: torch.softmax over a last dimension this
        # short is slow on CPU (590 us vs 93 us at [256, 32, 5], one thread), and a dream step is ~4 ms.
        logits = out.logits.float() / temperature
        cdf = (logits - logits.amax(-1, keepdim=True)).exp().cumsum(-1)
        component = torch.searchsorted(cdf, uniform.float()[..., None] * cdf[..., -1:]).clamp(max=k - 1)
        mu = out.mu.gather(-1, component)[..., 0]
        sigma = out.log_sigma.gather(-1, component)[..., 0].exp() * math.sqrt(temperature)
        return mu + sigma * normal.to(mu.dtype)

    def loss(
        self,
        z: Tensor,
        action: Tensor,
        reward: Tensor,
        terminated: Tensor,
        vector: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss on windows of T >= 2 steps.

        z [B, T, Z]; action [B, T] or [B, T, A]; reward [B, T]; terminated
        [B, T] bool; vector [B, T, D] when vector_dim > 0; mask [B, T] bool
        (true on real steps) or None.

        The inputs at t predict z[t+1] and vector[t+1] (T-1 pairs, both ends
        masked in) and reward[t], terminated[t] (all T steps).
        loss = gmm_nll + reward MSE + termination BCE (+ vector MSE).
        """
        b, t, _ = z.shape
        if t < 2:
            raise ValueError(f"the MDN-RNN loss needs windows of at least 2 steps, got T={t}")
        if tuple(reward.shape) != (b, t) or tuple(terminated.shape) != (b, t):
            raise ValueError(
                f"reward and terminated must be [B, T] = {(b, t)}, got {tuple(reward.shape)} and {tuple(terminated.shape)}"
            )
        if mask is not None and tuple(mask.shape) != (b, t):
            raise ValueError(f"mask must be [B, T] = {(b, t)}, got {tuple(mask.shape)}")
        mask = mask.bool() if mask is not None else None
        out, _ = self(z, action, vector)

        pair_mask = mask[:, :-1] & mask[:, 1:] if mask is not None else None
        gmm = gmm_nll(z[:, 1:], out.logits[:, :-1], out.mu[:, :-1], out.log_sigma[:, :-1], pair_mask)
        reward_mask = mask
        if self.config.reward_from_next:  # step t reads z_{t+1}: a window's (or episode's) last step has none
            pairs = pair_mask if pair_mask is not None else torch.ones_like(reward[:, 1:], dtype=torch.bool)
            reward_mask = torch.cat([pairs, torch.zeros_like(pairs[:, :1])], dim=1)
        reward_loss = _masked_mean((out.reward - reward.to(out.reward.dtype)).pow(2), reward_mask)
        termination_loss = _masked_mean(
            F.binary_cross_entropy_with_logits(
                out.termination_logit, terminated.to(out.termination_logit.dtype), reduction="none"
            ),
            mask,
        )
        loss = gmm + reward_loss + termination_loss
        logs = {
            "loss/gmm": gmm.detach(),
            "loss/reward": reward_loss.detach(),
            "loss/termination": termination_loss.detach(),
        }
        if out.vector is not None and vector is not None:
            vector_loss = _masked_mean((out.vector[:, :-1] - vector[:, 1:]).pow(2).mean(dim=-1), pair_mask)
            loss = loss + vector_loss
            logs["loss/vector"] = vector_loss.detach()
        return loss, logs
