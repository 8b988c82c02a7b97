"""dm_env_rpc tensors in and out of a world: its specs, the settings and actions it takes, the
observations it gives.

A dm_env_rpc Tensor declares its shape apart from its payload, and `tensor_utils.unpack_tensor`
broadcasts a one-element payload to the declared shape (`np.full`): a 19-byte Step declaring
[8000, 8000] allocated about 1 GB and held the event loop for seconds. So every tensor a client
sends is sized here first, from the declared shape and the payload's element count (both O(1) to
read), against what the spec allows; only a tensor of the expected shape is ever unpacked.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
from dm_env_rpc.v1 import dm_env_rpc_pb2 as dm
from dm_env_rpc.v1 import tensor_spec_utils, tensor_utils

from services.sessions import ServedModel
from services.status import echo
from worldmodel.spec import EnvSpec

ACTION_UID = 1
WORLD_SETTINGS = {
    "model": str, "backend": str, "observation": str, "seed": int, "temperature": float, "max_episode_steps": int,
}
RESET_SETTINGS = {"seed": int}


class ProtocolError(Exception):
    """A request the protocol or this server refuses; goes back in the stream as google.rpc.Status."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> ProtocolError:
    return ProtocolError(grpc.StatusCode.INVALID_ARGUMENT, message)


# -- specs ------------------------------------------------------------------------
def _tensor_spec(name: str, dtype, shape, minimum=None, maximum=None) -> dm.TensorSpec:
    spec = dm.TensorSpec(name=name, dtype=tensor_utils.np_type_to_data_type(dtype), shape=list(shape))
    if minimum is not None or maximum is not None:
        # As the spec's dtype: dm-env-rpc checks integer bounds against integer limits only.
        tensor_spec_utils.set_bounds(spec, np.asarray(minimum, dtype), np.asarray(maximum, dtype))
    return spec


def world_specs(served: ServedModel, observation: str) -> dm.ActionObservationSpecs:
    """The action (uid 1) and observations of a world, from the model's EnvSpec; uids count from 1."""
    spec = served.spec
    if spec.action.is_discrete:
        action = _tensor_spec("action", np.int64, (), 0, spec.action.n - 1)
    else:
        action = _tensor_spec("action", np.float32, spec.action.shape, spec.action.low, spec.action.high)
    if observation == "latent":
        observed = [_tensor_spec("latent", np.float32, (served.latent_size(),))]
    else:
        observed = [_tensor_spec("image", np.uint8, spec.image.shape, 0, 255)]
        if spec.vector is not None:
            observed.append(_tensor_spec("vector", np.float32, (spec.vector.size,)))
    # dm_env's conventions: reward and discount are float64 scalars, the discount in [0, 1].
    observed += [_tensor_spec("reward", np.float64, ()), _tensor_spec("discount", np.float64, (), 0.0, 1.0)]
    return dm.ActionObservationSpecs(
        actions={ACTION_UID: action}, observations={uid: s for uid, s in enumerate(observed, start=1)}
    )


# -- sizing a client's tensor before unpacking it -----------------------------------
def payload_length(tensor: dm.Tensor, what: str) -> int:
    """Elements in the payload (int8s and uint8s are bytes: one element a byte), or INVALID_ARGUMENT."""
    kind = tensor.WhichOneof("payload")
    if kind is None:
        raise invalid(f"{what} has no payload")
    return len(getattr(tensor, kind).array)


def resolved_shape(tensor: dm.Tensor, expected: tuple[int, ...], what: str) -> tuple[int, ...]:
    """The tensor's declared shape, its one -1 dimension inferred from the payload as dm_env_rpc does,
    or INVALID_ARGUMENT unless it is `expected` with a payload that unpacks to it without any large
    allocation: `prod(expected)` elements, or one (broadcast, as the protocol allows)."""
    count = payload_length(tensor, what)
    if len(tensor.shape) != len(expected):  # counted first: a shape may declare millions of dimensions
        shown = list(tensor.shape[:8]) + (["..."] if len(tensor.shape) > 8 else [])
        raise invalid(f"{what} must have shape {list(expected)}, got {shown} ({len(tensor.shape)} dimensions)")
    shape = [int(d) for d in tensor.shape]
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise invalid(f"{what}: shape {shape} has more than one variable (-1) dimension or a negative one")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or count % known:
            raise invalid(f"{what}: a payload of {count} elements does not fill shape {shape}")
        shape[shape.index(-1)] = count // known
    if tuple(shape) != tuple(expected):
        raise invalid(f"{what} must have shape {list(expected)}, got {shape}")
    if count not in (math.prod(expected), 1):
        raise invalid(f"{what}: shape {shape} needs {math.prod(expected)} elements (or 1 to broadcast), got {count}")
    return tuple(shape)


def unpack_sized(tensor: dm.Tensor, expected: tuple[int, ...], what: str):
    """`tensor_utils.unpack_tensor`, once `resolved_shape` has bounded what it allocates."""
    resolved_shape(tensor, expected, what)
    try:
        return tensor_utils.unpack_tensor(tensor)
    except (TypeError, ValueError) as err:
        raise invalid(f"{what}: {err}") from None


# -- settings and actions -------------------------------------------------------------
def parse_settings(settings, known: dict[str, type], request: str) -> dict:
    """Scalar settings of the known names and types, or INVALID_ARGUMENT saying which and why."""
    parsed = {}
    for name, tensor in settings.items():
        if name not in known:
            raise invalid(f"{request}: unknown setting {echo(name)}; known: {sorted(known) or 'none'}")
        try:
            value = unpack_sized(tensor, (), "its value")
        except ProtocolError as err:
            raise invalid(f"{request}: setting {name!r} is not a scalar tensor ({err.message})") from None
        want = known[name]
        if not _is_a(value, want):
            raise invalid(f"{request}: setting {name!r} must be a scalar {want.__name__}, got {echo(value)}")
        parsed[name] = want(value)
    return parsed


def _is_a(value, want: type) -> bool:
    """Does an unpacked scalar fit a setting of type `want` (an int fits a float; a bool fits nothing)?"""
    if isinstance(value, (bool, np.bool_)):
        return False
    if want is str:
        return isinstance(value, str)
    if want is int:
        return isinstance(value, (int, np.integer))
    return isinstance(value, (int, float, np.integer, np.floating))


def reset_seed(settings, request: str) -> int | None:
    """The optional `seed` of Reset and ResetWorld."""
    seed = parse_settings(settings, RESET_SETTINGS, request).get("seed")
    if seed is not None and seed < 0:
        raise invalid(f"{request}: seed must be >= 0, got {seed}")
    return seed


def unpack_action(actions, spec: dm.TensorSpec, env_spec: EnvSpec) -> np.ndarray:
    """The one action of a Step as a batch of one env: its uid, dtype and shape checked against the
    world's action spec before it is unpacked, its values by the EnvSpec's one checker (bounds,
    finiteness, clipping)."""
    if len(actions) != 1 or ACTION_UID not in actions:
        unknown = next((uid for uid in actions if uid != ACTION_UID), None)
        if unknown is not None:
            raise invalid(f"no action uid {unknown}; this world's actions: {{{ACTION_UID}: {spec.name!r}}}")
        raise invalid(f"missing action {spec.name!r} (uid {ACTION_UID}): every step after a sequence's first needs one")
    tensor = actions[ACTION_UID]
    want = tensor_utils.data_type_to_np_type(spec.dtype)
    try:
        got = tensor_utils.get_tensor_type(tensor)
    except TypeError:
        raise invalid(f"action {spec.name!r} has no payload; expected {want}") from None
    if got != want:
        raise invalid(f"action {spec.name!r} must be {np.dtype(want)}, got {np.dtype(got)}")
    value = np.array(unpack_sized(tensor, tuple(spec.shape), f"action {spec.name!r}"))
    try:
        return env_spec.check_actions(value[None], 1)
    except ValueError as err:
        raise invalid(f"action {spec.name!r}: {err}") from None


def pack_observations(requested, specs: dm.ActionObservationSpecs, observation: dict, reward: float, discount: float):
    values = {"reward": np.float64(reward), "discount": np.float64(discount)}
    for name, tensor in observation.items():
        values[name] = tensor[0].detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor[0])
    out = {}
    for uid in requested:
        spec = specs.observations[uid]
        out[uid] = tensor_utils.pack_tensor(values[spec.name], dtype=tensor_utils.data_type_to_np_type(spec.dtype))
    return out
