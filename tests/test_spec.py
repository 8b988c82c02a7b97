"""EnvSpec: JSON and gymnasium round trips, and clear errors."""

import numpy as np
import torch
import pytest
from gymnasium import spaces

from worldmodel.spec import ActionSpec, EnvSpec, ImageSpec, VectorSpec

SPECS = [
    EnvSpec(ImageSpec(64, 64, 3), ActionSpec.box([-1, 0, 0], [1, 1, 1]), VectorSpec(("speed", "steer")), "CarRacing-v3"),
    EnvSpec(ImageSpec(64, 64, 3), ActionSpec.discrete(6), None, "ALE/Pong-v5", frame_skip=4),
]


@pytest.mark.parametrize("spec", SPECS, ids=["box+vector", "discrete"])
def test_json_and_gymnasium_round_trips(spec):
    assert EnvSpec.from_json(spec.to_json()) == spec
    obs_space, act_space = spec.observation_space(), spec.action_space()
    names = spec.vector.names if spec.vector else None
    again = EnvSpec.from_spaces(obs_space, act_space, vector_names=names, env_id=spec.env_id, frame_skip=spec.frame_skip)
    assert again == spec
    sample = obs_space.sample()
    image = sample["image"] if isinstance(sample, dict) else sample
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_spaces_are_exact():
    box = SPECS[0]
    assert box.observation_space() == spaces.Dict(
        {"image": spaces.Box(0, 255, (64, 64, 3), np.uint8), "vector": spaces.Box(-np.inf, np.inf, (2,), np.float32)}
    )
    assert box.action_space() == spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32))
    assert SPECS[1].action_space() == spaces.Discrete(6)
    assert SPECS[1].action.dim == 6 and box.action.dim == 3


def test_check_action():
    box, discrete = SPECS
    assert box.check_action([0.5, 0.2, 0.0]).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        box.check_action([0.5, 0.2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        box.check_action([np.nan, 0.2, 0.0])
    assert discrete.check_action(np.int32(5)) == 5
    with pytest.raises(ValueError, match=r"in \[0, 6\)"):
        discrete.check_action(6)
    with pytest.raises(ValueError, match="integer"):
        discrete.check_action(1.5)


def test_bad_specs_say_what_is_wrong():
    with pytest.raises(ValueError, match="kind must be"):
        ActionSpec("continuous")
    with pytest.raises(ValueError, match="n > 0"):
        ActionSpec.discrete(0)
    with pytest.raises(ValueError, match="low must be <= high"):
        ActionSpec.box([1.0], [0.0])
    with pytest.raises(ValueError, match="unique"):
        VectorSpec(("a", "a"))
    with pytest.raises(ValueError, match="positive int"):
        ImageSpec(0, 64)
    with pytest.raises(ValueError, match="version 7"):
        EnvSpec.from_dict(dict(SPECS[0].to_dict(), version=7))
    with pytest.raises(ValueError, match="malformed"):
        EnvSpec.from_dict({"image": {"height": 64}})
    with pytest.raises(ValueError, match="only Box and Discrete"):
        EnvSpec.from_spaces(SPECS[1].observation_space(), spaces.MultiBinary(3))


def test_check_actions_is_one_check_for_batches_with_one_tolerance():
    box, discrete = SPECS
    low, high = np.asarray(box.action.low, np.float32), np.asarray(box.action.high, np.float32)
    # Float32 rounding past a bound is accepted and clipped onto it; anything further is an error.
    rounded = box.check_actions(np.stack([low - 5e-7, high + 5e-7]))
    np.testing.assert_array_equal(rounded, np.stack([low, high]))
    with pytest.raises(ValueError, match="must lie in"):
        box.check_actions(np.stack([high + 1e-4]))
    with pytest.raises(ValueError, match=r"shape \(2, 3\)"):
        box.check_actions(np.zeros((3, 3), np.float32), batch=2)
    assert box.check_actions(torch.zeros(2, 3), batch=2).dtype == np.float32
    np.testing.assert_array_equal(discrete.check_actions(torch.tensor([0, 5])), [0, 5])
    with pytest.raises(ValueError, match="integers"):
        discrete.check_actions(np.array([True, False]))
    with pytest.raises(ValueError, match="integers"):
        discrete.check_actions(np.array([0.0, 1.0]))
