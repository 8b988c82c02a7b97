"""Conversions between wire messages (worldmodel.v1) and numpy / EnvSpec, shared by server and client.

Tensors travel as dtype + shape + raw little-endian bytes; a malformed tensor
raises ValueError with a message that says what was expected.
"""

from __future__ import annotations

import numpy as np

from worldmodel.spec import OBSERVATION_MODES, ActionSpec, EnvSpec, ImageSpec, VectorSpec
from worldmodel.v1 import simulator_pb2 as pb

DTYPES = {
    pb.DTYPE_UINT8: np.dtype("<u1"),
    pb.DTYPE_INT64: np.dtype("<i8"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_BOOL: np.dtype("?"),
}
CODES = {dtype.kind + str(dtype.itemsize): code for code, dtype in DTYPES.items()}
OBSERVATION_MODE_CODES: dict[str, int] = {
    mode: pb.ObservationMode.Value(f"OBSERVATION_MODE_{mode.upper()}") for mode in OBSERVATION_MODES
}
"""{"pixels": OBSERVATION_MODE_PIXELS, "latent": ...}: the modes of worldmodel.spec.OBSERVATION_MODES as the
proto's enum codes them (a mode the proto lacks fails here, at import)."""
OWNER_SEPARATOR = "."
SESSION_METADATA = "session_id"
"""gRPC metadata naming the session a call is for: Ray Serve's proxy routes on it (services/serve_routing.py)."""


def owner_of(session_id: str) -> str:
    """The key of the replica that made a session id (`KEY.RANDOM` on Ray Serve); "" for a single server's."""
    key, separator, _ = session_id.partition(OWNER_SEPARATOR)
    return key if separator else ""


def routing_metadata(session_id: str) -> tuple[tuple[str, str], ...]:
    """The metadata that routes a call for `session_id` to its replica on Ray Serve: its owner's key alone
    (short whatever the id), or nothing for a single server's id or one no replica could have made."""
    owner = owner_of(session_id)
    if not owner or len(owner) > 64 or not (owner.isascii() and owner.isalnum()):
        return ()
    return ((SESSION_METADATA, owner + OWNER_SEPARATOR),)


def to_tensor(array) -> pb.Tensor:
    array = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    code = CODES.get(array.dtype.kind + str(array.dtype.itemsize))
    if code is None:
        raise ValueError(f"no wire dtype for {array.dtype}")
    data = np.ascontiguousarray(array, dtype=DTYPES[code])
    return pb.Tensor(dtype=code, shape=list(array.shape), data=data.tobytes())


def from_tensor(tensor: pb.Tensor, what: str = "tensor") -> np.ndarray:
    if tensor.dtype not in DTYPES:
        raise ValueError(f"{what}: unknown dtype {tensor.dtype}; use one of {[pb.DType.Name(c) for c in DTYPES]}")
    dtype = DTYPES[tensor.dtype]
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"{what}: negative dimension in shape {shape}")
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(tensor.data) != expected:
        raise ValueError(f"{what}: shape {shape} of {pb.DType.Name(tensor.dtype)} needs {expected} bytes, got {len(tensor.data)}")
    # bytearray copies: the array is writable (torch refuses to share read-only numpy memory).
    return np.frombuffer(bytearray(tensor.data), dtype=dtype).reshape(shape)


def actions_from_proto(tensor: pb.Tensor, spec: EnvSpec, num_envs: int) -> np.ndarray:
    """A step's actions, or ValueError saying what was expected: the wire tensor must be int64
    [num_envs] for a discrete space, float32 [num_envs, *shape] for a box; its values are then
    checked (and box actions clipped onto the bounds) by the spec's one checker, EnvSpec.check_actions."""
    if spec.action.is_discrete:
        code, shape = pb.DTYPE_INT64, (num_envs,)
    else:
        code, shape = pb.DTYPE_FLOAT32, (num_envs, *spec.action.shape)
    # The rank is compared before the shape is copied: a request may declare millions of dimensions.
    if tensor.dtype != code or len(tensor.shape) != len(shape) or tuple(tensor.shape) != shape:
        name = pb.DType.Name(tensor.dtype) if tensor.dtype in pb.DType.values() else str(tensor.dtype)
        got = f"shape {tuple(tensor.shape)}" if len(tensor.shape) <= 8 else f"a shape of {len(tensor.shape)} dimensions"
        raise ValueError(
            f"actions: expected {pb.DType.Name(code)} of shape {shape} (one action of {spec.action.describe()} "
            f"per env), got {name} of {got}"
        )
    return spec.check_actions(from_tensor(tensor, "actions"), num_envs)


def spec_to_proto(spec: EnvSpec) -> pb.EnvSpec:
    action = spec.action
    return pb.EnvSpec(
        image=pb.ImageSpec(height=spec.image.height, width=spec.image.width, channels=spec.image.channels),
        vector_names=list(spec.vector.names) if spec.vector is not None else [],
        action=pb.ActionSpec(
            kind=pb.ActionSpec.KIND_DISCRETE if action.is_discrete else pb.ActionSpec.KIND_BOX,
            shape=list(action.shape), low=list(action.low), high=list(action.high), n=action.n,
        ),
        env_id=spec.env_id,
        frame_skip=spec.frame_skip,
    )


def spec_from_proto(message: pb.EnvSpec) -> EnvSpec:
    a = message.action
    if a.kind == pb.ActionSpec.KIND_DISCRETE:
        action = ActionSpec.discrete(a.n)
    else:
        action = ActionSpec("box", shape=tuple(a.shape), low=tuple(a.low), high=tuple(a.high))
    return EnvSpec(
        ImageSpec(message.image.height, message.image.width, message.image.channels),
        action,
        VectorSpec(tuple(message.vector_names)) if message.vector_names else None,
        env_id=message.env_id,
        frame_skip=message.frame_skip or 1,
    )


def encode_png(images: np.ndarray) -> list[bytes]:
    """uint8 [N, H, W, C] -> one PNG per image (imageio; torchvision 0.29 deprecated its codecs)."""
    import imageio.v3 as iio

    return [iio.imwrite("<bytes>", np.ascontiguousarray(img), extension=".png") for img in images]


def decode_png(blobs) -> np.ndarray:
    import imageio.v3 as iio

    return np.stack([iio.imread(bytes(b), extension=".png") for b in blobs])


def observation_to_proto(observation: dict, png: bool) -> pb.Observation:
    message = pb.Observation()
    if "latent" in observation:
        message.latent.CopyFrom(to_tensor(observation["latent"]))
        return message
    images = observation["image"]
    images = np.asarray(images.cpu() if hasattr(images, "cpu") else images)
    if png:
        message.image_png.extend(encode_png(images))
    else:
        message.image.CopyFrom(to_tensor(images))
    if "vector" in observation:
        message.vector.CopyFrom(to_tensor(observation["vector"]))
    return message


def observation_from_proto(message: pb.Observation) -> dict[str, np.ndarray]:
    out = {}
    if message.HasField("latent"):
        out["latent"] = from_tensor(message.latent, "latent")
    if message.HasField("image"):
        out["image"] = from_tensor(message.image, "image")
    elif len(message.image_png):
        out["image"] = decode_png(message.image_png)
    if message.HasField("vector"):
        out["vector"] = from_tensor(message.vector, "vector")
    return out

