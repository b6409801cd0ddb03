"""User paths: how they are stored in artifacts, and the checks made before any work.

A path the user types (``--dataset data``, ``--class-name-map names.csv``,
``--encoder clip:./clip``) means the file relative to the directory the command runs in.
Stored as typed, a later stage run from another directory would read whatever has that
name there; so every path that goes into an artifact's config or manifest is stored
absolute (:func:`absolute_spec`), while messages and logs keep showing what was typed.
Configs name their path fields in ``PATH_FIELDS`` (field -> kind, see :data:`KINDS`).

Output paths (the workdir, ``predict``'s JSON file and overlay folder) are checked before
anything is computed (:func:`check_workdir`, :func:`check_output_file`,
:func:`check_output_dir`), so that a wrong one costs nothing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tedloc.errors import ConfigError

log = logging.getLogger(__name__)

#: Kinds of path fields: a dataset spec, an image/text encoder spec, or a plain file.
KINDS = ("dataset", "encoder", "file")


def _absolute(path: str) -> str:
    # abspath, not resolve(): a symlinked data folder keeps the name the user gave it.
    return os.path.abspath(os.path.expanduser(path))


def absolute_dataset_spec(spec: str) -> str:
    """``spec`` with a local folder (or a local ``hf:`` source) made absolute.

    ``demo`` stays ``demo`` (the bundled data moves with tedloc); ``hf:<name>`` stays as
    given unless ``<name>`` is a local path (a hub name is not relative to anything).
    """
    if not spec or spec == "demo":
        return spec
    if spec.startswith("hf:"):
        source, sep, query = spec[3:].partition("?")
        parquet_dir = Path(source).parent if source.endswith(".parquet") else None
        local = Path(source).exists() or (parquet_dir is not None and parquet_dir.is_dir())
        if source and local and not os.path.isabs(source):
            return f"hf:{_absolute(source)}{sep}{query}"
        return spec
    return _absolute(spec)


def absolute_encoder_spec(spec: str) -> str:
    """``clip:<folder>``, ``open_clip:<model>/<file>`` and ``open_clip:local-dir:<folder>``
    with the local path made absolute;
    built-in names and hub ids unchanged."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        return spec
    if kind == "clip" and Path(rest).exists() and not os.path.isabs(rest):
        return f"clip:{_absolute(rest)}"
    if kind == "open_clip" and rest.startswith("local-dir:"):
        folder = rest[len("local-dir:"):]
        if Path(folder).is_dir() and not os.path.isabs(folder):
            return f"open_clip:local-dir:{_absolute(folder)}"
        return spec
    if kind == "open_clip" and not rest.startswith("hf-hub:"):
        model, slash, pretrained = rest.partition("/")
        if slash and Path(pretrained).is_file() and not os.path.isabs(pretrained):
            return f"open_clip:{model}/{_absolute(pretrained)}"
    return spec


def absolute_spec(value: str, kind: str) -> str:
    """The value of a ``PATH_FIELDS`` field as it is stored (see the module docstring)."""
    if not isinstance(value, str) or not value:
        return value
    if kind == "dataset":
        return absolute_dataset_spec(value)
    if kind == "encoder":
        return absolute_encoder_spec(value)
    if kind == "file":
        return _absolute(value)
    raise ValueError(f"unknown path kind {kind!r} (known: {', '.join(KINDS)})")


def is_relative_spec(spec: str) -> bool:
    """Whether a recorded dataset spec names a local folder relative to the current directory
    (artifacts of earlier versions stored it as typed)."""
    return bool(spec) and spec != "demo" and not spec.startswith("hf:") and not os.path.isabs(spec)


def recorded_dataset(spec: str, where: str | Path) -> str:
    """A dataset spec read back from an artifact (``where``), warning when it is relative:
    it is then read from the current directory, which may not be the one it was made in."""
    if is_relative_spec(spec):
        log.warning("%s records the dataset as %r, relative to the directory it was made in; reading %s "
                    "(pass --dataset to choose it explicitly)", where, spec, _absolute(spec))
    return spec


# ----------------------------------------------------------------------------- outputs

def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (as the OS sees it)."""
    current = path
    while not os.path.lexists(current) and current != current.parent:
        current = current.parent
    return current


def _check_creatable(path: Path, what: str, hint: str) -> None:
    """The folders above ``path`` are folders (or can be made) and writable."""
    existing = _first_existing(path.parent if path.parent != path else path)
    if not existing.is_dir():
        raise ConfigError(f"{existing}: is a file, so {what} {path} cannot be created under it; {hint}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing}: not writable, so {what} {path} cannot be created; {hint}")


def check_workdir(workdir: str | Path) -> Path:
    """Refuse a workdir that is a file, lies below a file, or cannot be created.

    Returns the workdir as given.  An existing folder is accepted as it is (a read-only one
    still serves the stages that only read it).
    """
    workdir = Path(workdir)
    hint = "choose another --workdir"
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"{workdir}: the workdir is a file, not a folder; {hint}")
    if not workdir.exists():
        _check_creatable(workdir, "the workdir", hint)
    return workdir


def check_output_file(path: str | Path, option: str) -> Path:
    """Refuse an output file path that is a folder or cannot be created (``option`` names
    the command-line option in the message)."""
    path = Path(path)
    hint = f"give {option} a file name"
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; {hint}, e.g. {path / 'predictions.json'}")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{path}: not writable; {hint} in a writable folder")
    _check_creatable(path, "the file", hint + " in a writable folder")
    return path


def check_output_dir(path: str | Path, option: str) -> Path:
    """Refuse an output folder path that is a file or cannot be created."""
    path = Path(path)
    hint = f"give {option} a folder"
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path}: is a file, not a folder; {hint}")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{path}: not writable; {hint} you can write to")
    else:
        _check_creatable(path, "the folder", hint + " you can write to")
    return path
