"""Config dataclasses: unknown keys rejected, types coerced, hash ignores NOT_HASHED fields."""

import dataclasses
import json

import pytest

from tedloc.config import StageConfig, load_config_file, option
from tedloc.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class _Cfg(StageConfig):
    NOT_HASHED = frozenset({"batch_size"})
    lr: float = option(1e-3, "learning rate")
    epochs: int = option(3, "epochs")
    flip: bool = option(True, "flip")
    templates: tuple[str, ...] = option(("Image of a {}.",), "templates")
    batch_size: int = option(8, "batch size")


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match="unknown key.*lr_typo"):
        _Cfg.from_dict({"lr_typo": 1})


def test_values_are_coerced_and_bad_types_refused():
    cfg = _Cfg.from_dict({"lr": "0.5", "epochs": "7", "flip": "false", "templates": "a {}"})
    assert (cfg.lr, cfg.epochs, cfg.flip, cfg.templates) == (0.5, 7, False, ("a {}",))
    with pytest.raises(ConfigError, match="epochs.*integer"):
        _Cfg.from_dict({"epochs": "three"})


def test_hash_ignores_not_hashed_fields_only():
    base = _Cfg()
    assert base.config_hash() == base.replace(batch_size=64).config_hash()
    assert base.config_hash() != base.replace(lr=0.1).config_hash()


def test_config_file_sections(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nepochs = 5\n')
    assert load_config_file(toml) == {"train": {"epochs": 5}}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": 3}))
    with pytest.raises(ConfigError, match="bad.json"):
        load_config_file(bad)
