"""Stage configuration: frozen dataclasses, one per stage, with a help text per field.

Conventions (after open_clip's model configs and nanoGPT's checked config):

* Each field is declared with :func:`option`, which stores its help text in the field's
  metadata; the CLI builds one ``--option`` per field from it, so defaults live here only.
* Unknown keys are rejected (a typo must never silently fall back to a default).
* ``config_hash`` is the SHA-1 of the sorted-key JSON of the fields that affect outputs;
  fields listed in a class's ``NOT_HASHED`` (batch size, workers, device, ...) are left out
  so that changing them does not invalidate finished work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from tedloc.errors import ConfigError

C = TypeVar("C")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a default and a help text (shown by ``--help``)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    metadata = {"help": help, **kwargs}
    return dataclasses.field(default=default, metadata=metadata)


class StageConfig:
    """Mixin for stage configs.  Subclasses are ``@dataclasses.dataclass(frozen=True)``."""

    #: Field names that do not change the stage's outputs (excluded from the hash).
    NOT_HASHED: ClassVar[frozenset[str]] = frozenset()
    #: Section name inside a ``--config`` file (e.g. ``"train"``).
    SECTION: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-compatible values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))

    def hashed_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in self.NOT_HASHED}

    def config_hash(self) -> str:
        """SHA-1 (hex, 16 chars) of the fields that affect outputs."""
        return hash_json(self.hashed_dict())

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], *, source: str = "config") -> C:
        """Build a config from ``values``; unknown keys and ill-typed values are errors."""
        return config_from_dict(cls, values, source=source)

    def replace(self: C, **changes: Any) -> C:
        return config_from_dict(type(self), {**dataclasses.asdict(self), **changes})


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON-serializable: {type(obj).__name__}")


def hash_json(obj: Any, length: int = 16) -> str:
    """SHA-1 of the canonical (sorted keys, no spaces) JSON of ``obj``, first ``length`` hex chars."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, value: Any, tp: Any, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(name, value, non_none[0], source)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{name}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(name, v, inner, source) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{source}: '{name}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{source}: '{name}' must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{source}: '{name}' must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: '{name}' must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{name}' must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{name}' must be a string, got {value!r}")
        return value
    return value


def config_from_dict(cls: type[C], values: dict[str, Any], *, source: str = "config") -> C:
    """Build ``cls`` from a mapping, rejecting unknown keys and coercing simple types."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
            f"known: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(k, v, types_[k], source) for k, v in values.items()}
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``--config`` file (TOML or JSON) into ``{section: {key: value}}``.

    Sections are the stage names with underscores (``text_embed``, ``pseudo_labels``,
    ``train``, ``evaluate``, ``demo``); keys are config field names.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error becomes one line
        raise ConfigError(f"{path}: cannot parse config file: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a table per stage, e.g. [train] with its keys")
    return data
