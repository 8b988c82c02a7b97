from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_UINT8: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_BOOL: _ClassVar[DType]

class ObservationMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OBSERVATION_MODE_UNSPECIFIED: _ClassVar[ObservationMode]
    OBSERVATION_MODE_PIXELS: _ClassVar[ObservationMode]
    OBSERVATION_MODE_LATENT: _ClassVar[ObservationMode]

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_RAW: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
DTYPE_UNSPECIFIED: DType
DTYPE_UINT8: DType
DTYPE_INT64: DType
DTYPE_FLOAT32: DType
DTYPE_BOOL: DType
OBSERVATION_MODE_UNSPECIFIED: ObservationMode
OBSERVATION_MODE_PIXELS: ObservationMode
OBSERVATION_MODE_LATENT: ObservationMode
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_RAW: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ImageSpec(_message.Message):
    __slots__ = ("height", "width", "channels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class ActionSpec(_message.Message):
    __slots__ = ("kind", "shape", "low", "high", "n")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[ActionSpec.Kind]
        KIND_BOX: _ClassVar[ActionSpec.Kind]
        KIND_DISCRETE: _ClassVar[ActionSpec.Kind]
    KIND_UNSPECIFIED: ActionSpec.Kind
    KIND_BOX: ActionSpec.Kind
    KIND_DISCRETE: ActionSpec.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    kind: ActionSpec.Kind
    shape: _containers.RepeatedScalarFieldContainer[int]
    low: _containers.RepeatedScalarFieldContainer[float]
    high: _containers.RepeatedScalarFieldContainer[float]
    n: int
    def __init__(self, kind: _Optional[_Union[ActionSpec.Kind, str]] = ..., shape: _Optional[_Iterable[int]] = ..., low: _Optional[_Iterable[float]] = ..., high: _Optional[_Iterable[float]] = ..., n: _Optional[int] = ...) -> None: ...

class EnvSpec(_message.Message):
    __slots__ = ("image", "vector_names", "action", "env_id", "frame_skip")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_NAMES_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_SKIP_FIELD_NUMBER: _ClassVar[int]
    image: ImageSpec
    vector_names: _containers.RepeatedScalarFieldContainer[str]
    action: ActionSpec
    env_id: str
    frame_skip: int
    def __init__(self, image: _Optional[_Union[ImageSpec, _Mapping]] = ..., vector_names: _Optional[_Iterable[str]] = ..., action: _Optional[_Union[ActionSpec, _Mapping]] = ..., env_id: _Optional[str] = ..., frame_skip: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "spec", "backends", "latent_size")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    LATENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: EnvSpec
    backends: _containers.RepeatedScalarFieldContainer[str]
    latent_size: int
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[EnvSpec, _Mapping]] = ..., backends: _Optional[_Iterable[str]] = ..., latent_size: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("model", "backend", "num_envs", "seed", "temperature", "max_episode_steps", "observation_mode", "image_encoding")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NUM_ENVS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_EPISODE_STEPS_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_MODE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    model: str
    backend: str
    num_envs: int
    seed: int
    temperature: float
    max_episode_steps: int
    observation_mode: ObservationMode
    image_encoding: ImageEncoding
    def __init__(self, model: _Optional[str] = ..., backend: _Optional[str] = ..., num_envs: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., max_episode_steps: _Optional[int] = ..., observation_mode: _Optional[_Union[ObservationMode, str]] = ..., image_encoding: _Optional[_Union[ImageEncoding, str]] = ...) -> None: ...

class CreateSessionResponse(_message.Message):
    __slots__ = ("session_id", "model", "backend", "num_envs")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    NUM_ENVS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: ModelInfo
    backend: str
    num_envs: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., backend: _Optional[str] = ..., num_envs: _Optional[int] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("image", "image_png", "vector", "latent")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PNG_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    LATENT_FIELD_NUMBER: _ClassVar[int]
    image: Tensor
    image_png: _containers.RepeatedScalarFieldContainer[bytes]
    vector: Tensor
    latent: Tensor
    def __init__(self, image: _Optional[_Union[Tensor, _Mapping]] = ..., image_png: _Optional[_Iterable[bytes]] = ..., vector: _Optional[_Union[Tensor, _Mapping]] = ..., latent: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("session_id", "seed", "env_indices", "seeds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    ENV_INDICES_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    seed: int
    env_indices: _containers.RepeatedScalarFieldContainer[int]
    seeds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., seed: _Optional[int] = ..., env_indices: _Optional[_Iterable[int]] = ..., seeds: _Optional[_Iterable[int]] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("observation",)
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    observation: Observation
    def __init__(self, observation: _Optional[_Union[Observation, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "actions", "reset_mask")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    RESET_MASK_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    actions: Tensor
    reset_mask: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, session_id: _Optional[str] = ..., actions: _Optional[_Union[Tensor, _Mapping]] = ..., reset_mask: _Optional[_Iterable[bool]] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("observation", "reward", "terminated", "truncated", "step")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    observation: Observation
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    step: int
    def __init__(self, observation: _Optional[_Union[Observation, _Mapping]] = ..., reward: _Optional[_Union[Tensor, _Mapping]] = ..., terminated: _Optional[_Union[Tensor, _Mapping]] = ..., truncated: _Optional[_Union[Tensor, _Mapping]] = ..., step: _Optional[int] = ...) -> None: ...

class StepManyRequest(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[StepRequest]
    def __init__(self, steps: _Optional[_Iterable[_Union[StepRequest, _Mapping]]] = ...) -> None: ...

class StepItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StepManyResponse(_message.Message):
    __slots__ = ("steps", "errors")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[StepResponse]
    errors: _containers.RepeatedCompositeFieldContainer[StepItemError]
    def __init__(self, steps: _Optional[_Iterable[_Union[StepResponse, _Mapping]]] = ..., errors: _Optional[_Iterable[_Union[StepItemError, _Mapping]]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
