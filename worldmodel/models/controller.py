"""C: the linear controller of Ha & Schmidhuber 2018 ("World Models", section 2.3).

a_t = W [z_t, h_t] + b, squashed into the action space: tanh and an affine map
into [low, high] per dimension for box actions, argmax for discrete ones. It is
deliberately tiny (867 parameters for CarRacing) so CMA-ES can evolve it.

For CMA-ES the parameters flatten to one vector, laid out as
[W.flatten() (row-major, [A, I]), b ([A])], and `population_actions` evaluates
a whole population, one parameter vector per row, in one batched matmul.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from worldmodel.models.config import ConfigMixin

if TYPE_CHECKING:
    from worldmodel.spec import EnvSpec


@dataclass(frozen=True)
class ControllerConfig(ConfigMixin):
    """Sizes and action bounds of the controller (plain data, from an EnvSpec's numbers)."""

    input_dim: int
    """Size of the features the controller reads, e.g. latent_dim + hidden_size for [z, h]."""
    action_dim: int
    """Box: the action size. Discrete: the number of actions n."""
    discrete_actions: bool = False
    """True: act by argmax over action_dim scores (int64). False: box actions in [low, high]."""
    low: tuple[float, ...] = ()
    """Box only: the lower bound per action dimension (finite)."""
    high: tuple[float, ...] = ()
    """Box only: the upper bound per action dimension (finite)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "low", tuple(float(v) for v in self.low))
        object.__setattr__(self, "high", tuple(float(v) for v in self.high))
        for name in ("input_dim", "action_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ControllerConfig.{name} must be a positive int, got {value!r}")
        if self.discrete_actions:
            if self.low or self.high:
                raise ValueError("a discrete controller takes no low/high bounds")
            return
        if len(self.low) != self.action_dim or len(self.high) != self.action_dim:
            raise ValueError(
                f"a box controller needs {self.action_dim} low and high bounds, got {len(self.low)}/{len(self.high)}"
            )
        if not all(math.isfinite(v) for v in (*self.low, *self.high)):
            raise ValueError(f"a box controller needs finite bounds (tanh maps onto them), got {self.low} / {self.high}")
        if any(lo > hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"low must be <= high, got {self.low} / {self.high}")

    @classmethod
    def from_spec(cls, spec: EnvSpec, input_dim: int) -> ControllerConfig:
        """The config for a spec's action space, reading features of size input_dim."""
        action = spec.action
        if action.is_discrete:
            return cls(input_dim=input_dim, action_dim=action.n, discrete_actions=True)
        return cls(input_dim=input_dim, action_dim=action.dim, low=action.low, high=action.high)


class Controller(nn.Module):
    """features [B, input_dim] -> actions [B, A] float (box) or [B] int64 (discrete)."""

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.input_dim, config.action_dim)
        if not config.discrete_actions:
            # Not persistent: the bounds are config data, the state dict holds only weights.
            self.register_buffer("low", torch.tensor(config.low, dtype=torch.float32), persistent=False)
            self.register_buffer("high", torch.tensor(config.high, dtype=torch.float32), persistent=False)

    @property
    def num_params(self) -> int:
        """Length of the flat parameter vector: A * I + A."""
        return self.config.action_dim * self.config.input_dim + self.config.action_dim

    def get_flat(self) -> Tensor:
        """The parameters as one 1-D tensor [num_params] (a copy): [W.flatten(), b]."""
        return parameters_to_vector(self.parameters()).detach().clone()

    @torch.no_grad()
    def set_flat(self, vec: Tensor) -> None:
        """Load parameters from a 1-D vector [num_params] laid out as `get_flat` returns it."""
        vec = torch.as_tensor(vec, dtype=torch.float32)
        if tuple(vec.shape) != (self.num_params,):
            raise ValueError(f"expected a flat parameter vector of shape ({self.num_params},), got {tuple(vec.shape)}")
        # A copy: vector_to_parameters makes the parameters views of the vector it is given.
        vector_to_parameters(vec.to(self.linear.weight.device).clone(), self.parameters())

    def flat_for_action(self, action) -> Tensor:
        """Flat parameters of the controller that does `action` [A] (box) whatever it sees: zero weights and
        the bias tanh maps onto it (kept 0.5% inside the bounds, where tanh is still finite)."""
        if self.config.discrete_actions:
            raise ValueError("a discrete controller has no constant action to start from: use zero parameters")
        action = torch.as_tensor(action, dtype=torch.float32)
        unit = 2.0 * (action - self.low.cpu()) / (self.high.cpu() - self.low.cpu()).clamp(min=1e-12) - 1.0
        bias = torch.atanh(unit.clamp(-0.99, 0.99))
        return torch.cat([torch.zeros(self.config.action_dim * self.config.input_dim), bias])

    def _unflatten(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """params [N, num_params] -> (weight [N, A, I], bias [N, A]): each row laid out as
        parameters_to_vector lays out (weight, bias), so row n equals `set_flat(params[n])`."""
        n, _ = params.shape
        a, i = self.config.action_dim, self.config.input_dim
        return params[:, : a * i].reshape(n, a, i), params[:, a * i :]

    def _squash(self, scores: Tensor) -> Tensor:
        """Pre-activations [N, A] -> actions: argmax [N] int64, or tanh mapped into [low, high] [N, A]."""
        if self.config.discrete_actions:
            return scores.argmax(dim=-1)
        return self.low + (torch.tanh(scores) + 1.0) * 0.5 * (self.high - self.low)

    @staticmethod
    def _scores(weight: Tensor, bias: Tensor, features: Tensor) -> Tensor:
        """weight [N, A, I], bias [N, A], features [N, I] -> W_n f_n + b_n [N, A], one bmm.

        `act` and `population_actions` both go through here so they agree exactly.
        """
        return torch.bmm(weight, features[:, :, None])[:, :, 0] + bias

    def _check_features(self, features: Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.config.input_dim:
            raise ValueError(f"features must be [B, {self.config.input_dim}], got {tuple(features.shape)}")

    def forward(self, features: Tensor) -> Tensor:
        """features [B, input_dim] -> actions [B, A] (box) or [B] int64 (discrete)."""
        self._check_features(features)
        b, _ = features.shape
        weight = self.linear.weight.expand(b, -1, -1)
        bias = self.linear.bias.expand(b, -1)
        return self._squash(self._scores(weight, bias, features))

    @torch.no_grad()
    def act(self, features: Tensor) -> Tensor:
        """Actions for features [B, input_dim], without gradients: [B, A] float or [B] int64."""
        return self(features)

    @torch.no_grad()
    def population_actions(self, params: Tensor, features: Tensor) -> Tensor:
        """Each row with its own parameters: params [N, num_params], features [N, input_dim].

        Returns [N, A] float (box) or [N] int64 (discrete); row n equals `act`
        on features[n] after `set_flat(params[n])`. The module's own weights
        are not used or changed.
        """
        self._check_features(features)
        n, _ = features.shape
        if tuple(params.shape) != (n, self.num_params):
            raise ValueError(f"params must be [N={n}, {self.num_params}], got {tuple(params.shape)}")
        weight, bias = self._unflatten(params.to(features.dtype))
        return self._squash(self._scores(weight, bias, features))
