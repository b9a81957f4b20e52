"""One policy for every configuration dataclass: built from plain mappings (JSON files, model
files), nested dataclasses built recursively, lists turned into the tuples a field declares,
every value checked against its field's type hint, and unknown keys refused with their names and
the place they were found.

Every configuration (preprocessing, sampling, augmentation, detection, inference defaults,
training, a model file's information) goes through :func:`config_from_dict` and back
through :func:`config_to_dict`.
"""

from __future__ import annotations

import dataclasses
import numbers
import typing
from typing import Any, Dict, Mapping, Type, TypeVar

from .errors import ConfigError

T = TypeVar("T")


_SCALARS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def describe_type(hint: Any) -> str:
    """What a field's type hint asks for, in the words of an error message."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        named = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(describe_type(a) for a in args)})"
        return f"a list of {describe_type(args[0]) if args else 'values'}"
    if origin is dict:
        return f"a mapping of {describe_type(args[0])} to {describe_type(args[1])}" if args else "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    return _SCALARS.get(hint, getattr(hint, "__name__", str(hint)))


def _refuse(hint: Any, value: Any, where: str) -> ConfigError:
    shown = "null" if value is None else f"{value!r} ({type(value).__name__})"
    return ConfigError(f"{where}: expected {describe_type(hint)}, got {shown}")


def _convert(hint: Any, value: Any, where: str) -> Any:
    """``value`` as the field's type ``hint`` asks (lists as declared tuples, mappings as nested
    dataclasses), checked on the way: a bool is not a number, a whole number is a number, text is
    neither, null only where the hint is Optional. Checked here, when the file is read, so that a
    wrong type is named by its field before any work starts, not found by a comparison later."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X] and a value: X's own message, e.g. a nested field's
            return _convert_optional(hint, options[0], value, where)
        for option in options:
            try:
                return _convert(option, value, where)
            except ConfigError:
                continue
        raise _refuse(hint, value, where)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, Mapping):
            return config_from_dict(hint, value, where)
        if isinstance(value, hint):
            return value
        raise _refuse(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _refuse(hint, value, where)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise _refuse(hint, value, where)
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _refuse(hint, value, where)
        key_hint, value_hint = args if args else (Any, Any)
        return {_convert(key_hint, k, where): _convert(value_hint, v, f"{where}[{k!r}]") for k, v in value.items()}
    if hint is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    else:  # a hint this policy does not know (a Literal, a TypeVar): the dataclass's own checks judge
        ok = True
    if not ok:
        raise _refuse(hint, value, where)
    return value


def _convert_optional(hint: Any, option: Any, value: Any, where: str) -> Any:
    """``value`` (not None) of an ``Optional[option]`` field, converted as ``option``: a value of
    the wrong shape is refused as "``option`` or null"; an error from inside it (a nested
    dataclass's field, its own checks) keeps its message, which names what is wrong."""
    try:
        return _convert(option, value, where)
    except ConfigError as exc:
        if str(exc).startswith(f"{where}: expected "):
            raise _refuse(hint, value, where) from None
        raise


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


#: The configuration files read (recipes, training configurations): JSON only; PyYAML is not a
#: dependency, and one format is one way to write them.
CONFIG_EXTENSIONS = (".json",)


def read_config_file(path) -> Dict[str, Any]:
    """The mapping a JSON configuration file holds; ConfigError naming the file when it is
    missing, of another format, does not parse, or is not a mapping of field names to values."""
    import json
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() not in CONFIG_EXTENSIONS:
        raise ConfigError(f"configuration files are JSON ({', '.join(CONFIG_EXTENSIONS)}), not "
                          f"{path.suffix or 'files without an extension'}; write it as JSON", path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: json's parse errors
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
