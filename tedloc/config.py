"""Stage configuration: frozen dataclasses, one per stage, with a help text per field.

Conventions (after open_clip's model configs and nanoGPT's checked config):

* Each field is declared with :func:`option`, which stores its help text in the field's
  metadata; the CLI builds one ``--option`` per field from it, so defaults live here only.
* Unknown keys are rejected (a typo must never silently fall back to a default).
* ``config_hash`` is the SHA-1 of the sorted-key JSON of the fields that affect outputs;
  fields listed in a class's ``NOT_HASHED`` (batch size, workers, device, ...) are left out
  so that changing them does not invalidate finished work.
* Numbers must be finite (``nan`` or ``inf`` is never a meaningful setting), ``device``
  fields must name a device, and ranges are each class's ``validate``.
* Fields holding user paths are listed in ``PATH_FIELDS``; :meth:`StageConfig.stored_dict`
  (what artifacts record) has them absolute, the config itself keeps them as typed.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
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
    #: Fields holding user paths -> their kind (``tedloc.paths.KINDS``); stored absolute.
    PATH_FIELDS: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        """All fields as JSON-compatible values (tuples become lists), paths as typed."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=_json_default))

    def stored_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the ``PATH_FIELDS`` made absolute: what artifacts record, so
        that a later stage run from another directory reads the same files.  Datasets and
        text files are left out of the hash (``NOT_HASHED``) and enter it by content, so a
        moved dataset keeps its results."""
        from tedloc.paths import absolute_spec

        values = self.to_dict()
        for name, kind in self.PATH_FIELDS.items():
            values[name] = absolute_spec(values[name], kind)
        return values

    def hashed_dict(self) -> dict[str, Any]:
        """The fields that affect outputs, paths absolute: ``clip:./clip`` typed in two
        directories names two models, and ``./clip`` and its absolute path the same one."""
        return {k: v for k, v in self.stored_dict().items() if k not in self.NOT_HASHED}

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
    if source == "command line" and not name.startswith("--"):
        name = "--" + name.replace("_", "-")  # as the user typed it
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
            raise ConfigError(f"{source}: {_quoted(name)} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(name, v, inner, source) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{source}: {_quoted(name)} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{source}: {_quoted(name)} must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{source}: {_quoted(name)} must be an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {_quoted(name)} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: {_quoted(name)} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{source}: {_quoted(name)} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {_quoted(name)} must be a string, got {value!r}")
        return value
    return value


def _quoted(name: str) -> str:
    return name if name.startswith("--") else f"'{name}'"


def config_from_dict(cls: type[C], values: dict[str, Any], *, source: str = "config") -> C:
    """Build ``cls`` from a mapping, rejecting unknown keys and coercing simple types."""
    types_ = field_types(cls)
    unknown = sorted(set(values) - set(types_))
    if unknown:
        close = sorted({m for key in unknown for m in difflib.get_close_matches(key, types_, n=1)})
        guess = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(
            f"{source}: unknown key(s) {', '.join(unknown)}{guess}; known: {', '.join(sorted(types_))}"
        )
    kwargs = {k: _coerce(k, v, types_[k], source) for k, v in values.items()}
    try:
        cfg = cls(**kwargs)
        validate = getattr(cfg, "validate", None)
        if callable(validate):
            validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except ConfigError as exc:
        # A value from a file: say which file and table it came from (instead of the stage).
        if source in ("command line", "config"):
            raise
        message = str(exc)
        stage = f"{getattr(cls, 'SECTION', '')}: "
        raise ConfigError(f"{source}: {message.removeprefix(stage)}") from None
    return cfg


#: What a ``device`` field accepts (checked before any model is built).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_fields(config: Any, stage: str) -> None:
    """Checks every stage config shares: finite numbers, a known device spelling.

    Called first by each config's ``validate`` (so configs built in code are checked too,
    not only those read from options and files).
    """
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{stage}: {field.name} must be a finite number, got {value}")
    device = getattr(config, "device", None)
    if isinstance(device, str) and not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"{stage}: device must be cpu, cuda, cuda:N, mps or auto, got {device!r}")


def config_sections() -> list[str]:
    """The tables a ``--config`` file may hold: one per stage (underscored) and ``demo``."""
    from tedloc.configs import STAGES

    return [name.replace("-", "_") for name in STAGES] + ["demo"]


def load_config_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read a ``--config`` file (TOML or JSON) into ``{section: {key: value}}``.

    Sections are the stage names with underscores (``text_embed``, ``pseudo_labels``,
    ``train``, ``evaluate``, ``demo``); the command line's dashed spelling
    (``pseudo-labels``) is accepted for the same table.  Keys are config field names.
    An unknown table is refused: a misspelt one would otherwise leave its stage on its
    defaults without a word.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; --config takes a TOML or JSON file")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); --config takes a TOML or JSON file") from None
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
    known = config_sections()
    sections: dict[str, dict[str, Any]] = {}
    spelt: dict[str, str] = {}
    for name, values in data.items():
        section = name.replace("-", "_")
        if section not in known:
            raise ConfigError(f"{path}: unknown table [{name}]; known tables: "
                              f"{', '.join(f'[{k}]' for k in known)}")
        if section in sections:
            raise ConfigError(f"{path}: tables [{spelt[section]}] and [{name}] are the same stage; "
                              f"merge them into [{section}]")
        sections[section] = values
        spelt[section] = name
    return sections
