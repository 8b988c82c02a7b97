"""A small mixin that makes a config dataclass plain JSON-able data.

Every model config is a frozen dataclass of ints, floats, bools and tuples, so
it can be written into a bundle's config.json and read back without pickle.
JSON has no tuples, so `from_dict` turns lists back into tuples for the fields
typed as tuples; that makes `from_dict(json.loads(json.dumps(c.to_dict()))) == c`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Self


def _is_tuple_type(hint: Any) -> bool:
    """True for `tuple[...]`, and for unions such as `tuple[int, ...] | None` that contain one."""
    if hint is tuple or typing.get_origin(hint) is tuple:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_is_tuple_type(arg) for arg in typing.get_args(hint))
    return False


class ConfigMixin:
    """Adds `to_dict` / `from_dict` to a dataclass."""

    def to_dict(self) -> dict[str, Any]:
        """The config as a dict of plain values (tuples stay tuples; JSON makes them lists)."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be a dataclass to use ConfigMixin")
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build the config from `to_dict`'s output (or its JSON round trip).

        Raises ValueError naming any unknown or missing keys, so a typo in a
        config file fails loudly instead of silently falling back to a default.
        """
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__} needs a dict, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys are {sorted(fields)}")
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"missing {cls.__name__} keys {missing}")
        hints = typing.get_type_hints(cls)
        kwargs = {
            key: tuple(value) if isinstance(value, list) and _is_tuple_type(hints[key]) else value
            for key, value in data.items()
        }
        return cls(**kwargs)


JSON_TYPE_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}


def json_key(data: Any, key: str, kind: type | tuple[type, ...], where: str, *, required: bool = True) -> Any:
    """data[key] (None when absent and not required) if it is of `kind`; otherwise a UserError naming the
    key and the file (`where`), so a hand-edited or damaged config.json is one line, not a KeyError."""
    from worldmodel.errors import UserError

    kinds = kind if isinstance(kind, tuple) else (kind,)
    wanted = " or ".join(JSON_TYPE_NAMES.get(k, k.__name__) for k in kinds)
    if not isinstance(data, dict):
        raise UserError(f"{where} must hold a JSON object with {key!r}, got {type(data).__name__}")
    if key not in data:
        if required:
            raise UserError(f"{where} lacks the key {key!r} ({wanted}): the file is damaged or not one of ours")
        return None
    value = data[key]
    is_bool = isinstance(value, bool)
    if not isinstance(value, kinds) or (is_bool and bool not in kinds and (int in kinds or float in kinds)):
        raise UserError(f"{where}: key {key!r} must be {wanted}, got {type(value).__name__} {str(value)[:40]!r}")
    return value
