"""One policy for every configuration dataclass: built from plain mappings (JSON, YAML, model
files), nested dataclasses built recursively, lists turned into the tuples a field declares,
and unknown keys refused with their names and the place they were found.

Every configuration (preprocessing, sampling, augmentation, detection, inference defaults,
training, a model file's information) goes through :func:`config_from_dict` and back
through :func:`config_to_dict`.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Dict, Mapping, Type, TypeVar

from .errors import ConfigError

T = TypeVar("T")


def _unwrap_optional(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _convert(hint: Any, value: Any, where: str) -> Any:
    hint = _unwrap_optional(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return config_from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if args and args[-1] is not Ellipsis and len(args) == len(value):
            return tuple(_convert(a, v, where) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        (inner,) = typing.get_args(hint) or (Any,)
        return [_convert(inner, v, where) for v in value]
    return value


def config_from_dict(cls: Type[T], values: Mapping[str, Any], where: str = "") -> T:
    """Build the dataclass ``cls`` from ``values``.

    Raises:
        ConfigError: for keys ``cls`` has no field for (named, with the known ones), values
            of the wrong shape, or whatever the dataclass's own checks refuse.
    """
    where = where or cls.__name__
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping of field names to values, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints.get(name, Any), value, f"{where}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def read_config_file(path) -> Dict[str, Any]:
    """The mapping a JSON or YAML configuration file holds; ConfigError naming the file when it
    is missing, does not parse, or is not a mapping of field names to values."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            import json

            values = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - encoding, JSON and YAML parse errors
        raise ConfigError(f"cannot parse config ({exc})", path) from None
    if not isinstance(values, dict):
        raise ConfigError("config must be a mapping of field names to values", path)
    return values


def config_to_dict(config: Any) -> Dict[str, Any]:
    """Plain JSON-ready dict of a configuration dataclass (tuples become lists)."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
