"""Stage text-embed: class names -> prompts -> text encoder -> QR-orthogonalized anchors.

Identity: ``config_hash`` covers the hashed config fields plus, by content, what they
point to: the dataset's class names (label order), the names after the class-name map,
the templates actually used (from ``templates`` or ``templates_file``) and the
fingerprint of the text encoder's weights.  It is computed without loading the encoder,
so a finished run with the same identity returns at once.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tedloc.artifacts.lock import StageLock
from tedloc.artifacts.store import MANIFEST, ArtifactHeader, prepare_stage_dir, write_manifest
from tedloc.artifacts.text_embed import (
    FILE_NAME,
    FORMAT,
    FORMAT_VERSION,
    STAGE_DIR,
    SUPPORTED_VERSIONS,
    write_text_embed,
)
from tedloc.config import hash_json
from tedloc.configs.text_embed import Config
from tedloc.errors import ConfigError, InputError
from tedloc.paths import absolute_encoder_spec

log = logging.getLogger(__name__)


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of non-blank, non-'#' lines."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason})") from None
    return [(n, s.strip()) for n, s in enumerate(text.splitlines(), 1)
            if s.strip() and not s.strip().startswith("#")]


def read_templates_file(path: str | Path) -> list[str]:
    """Templates, one per line (blank lines and '#' comments skipped); each needs '{}'."""
    path = Path(path)
    templates = []
    for line_no, text in _text_lines(path):
        if "{}" not in text:
            raise InputError(path, f"template {text!r} has no '{{}}' for the class name", line_no)
        templates.append(text)
    if not templates:
        raise InputError(path, "no templates in the file")
    return templates


def read_class_name_map(path: str | Path) -> dict[str, str]:
    """``original -> nicer`` from a CSV (``,``) or TSV (tab) file, one pair per line.

    A first line ``original,nicer`` is taken as a header; '#' lines are comments.
    """
    path = Path(path)
    mapping: dict[str, str] = {}
    first: dict[str, int] = {}
    for index, (line_no, text) in enumerate(_text_lines(path)):
        sep = "\t" if "\t" in text else ","
        parts = [p.strip() for p in text.split(sep)]
        if index == 0 and [p.lower() for p in parts] == ["original", "nicer"]:
            continue
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise InputError(path, f"expected 'original,nicer', got {text!r}", line_no)
        if parts[0] in mapping:
            raise InputError(path, f"{parts[0]!r} mapped twice (first on line {first[parts[0]]})", line_no)
        mapping[parts[0]] = parts[1]
        first[parts[0]] = line_no
    return mapping


def apply_class_name_map(class_names: list[str], mapping: dict[str, str], *, source: str) -> list[str]:
    """The prompt names: ``mapping[name]`` where given, else the name itself."""
    unused = sorted(set(mapping) - set(class_names))
    if unused:
        log.warning("%s: %d name(s) not among the dataset's classes, ignored: %s", source,
                    len(unused), ", ".join(unused[:5]) + (" ..." if len(unused) > 5 else ""))
    return [mapping.get(name, name) for name in class_names]


def resolve_templates(config: Config) -> list[str]:
    return read_templates_file(config.templates_file) if config.templates_file else list(config.templates)


def resolve_class_names(config: Config) -> tuple[list[str], list[str], str]:
    """(dataset class names in label order, names for the prompts, where the names came from)."""
    from tedloc.data.source import DatasetSource

    dataset = DatasetSource.of(config).open(config.split)
    names = list(dataset.class_names)
    log.info("text-embed: class names of %s from %s", config.dataset, dataset.class_names_source or "the dataset")
    if not names:
        raise InputError(config.dataset, f"split {config.split!r} has no classes")
    prompt_names = names
    if config.class_name_map:
        prompt_names = apply_class_name_map(names, read_class_name_map(config.class_name_map),
                                            source=config.class_name_map)
    seen: dict[str, int] = {}
    for label, name in enumerate(prompt_names):
        if name in seen:
            # Identical prompts give identical embeddings: no anchor could tell them apart.
            raise ConfigError(f"{config.dataset}: classes {seen[name]} and {label} are both named "
                              f"{name!r}; give them distinct names with class_name_map")
        seen[name] = label
    return names, prompt_names, dataset.class_names_source


def make_header(config: Config, *, class_names: list[str], prompt_names: list[str],
                templates: list[str], encoder_fingerprint: str) -> ArtifactHeader:
    config_hash = hash_json({
        "config": config.hashed_dict(),
        "class_names": class_names,
        "prompt_names": prompt_names,
        "templates": templates,
        "encoder_fingerprint": encoder_fingerprint,
    })
    return ArtifactHeader(format=FORMAT, format_version=FORMAT_VERSION, config=config.stored_dict(),
                          config_hash=config_hash, upstream_hash="")


def run(config: Config, *, workdir: Path, overwrite: bool = False) -> Path:
    """Compute the anchors into ``<workdir>/text_embed/``; return the manifest path."""
    from tedloc.pipeline import text_encoders
    from tedloc.pipeline.orthogonalize import orthogonalize

    config.validate()
    directory = Path(workdir) / STAGE_DIR
    class_names, prompt_names, names_source = resolve_class_names(config)
    templates = resolve_templates(config)

    encoder = None
    fingerprint = text_encoders.text_encoder_fingerprint(config.text_encoder)
    if fingerprint is None:  # weights not on disk yet (hub model): load to learn their identity
        encoder = text_encoders.build_text_encoder(config.text_encoder, device=config.device)
        fingerprint = encoder.fingerprint
    header = make_header(config, class_names=class_names, prompt_names=prompt_names,
                         templates=templates, encoder_fingerprint=fingerprint)

    with StageLock(directory / ".lock"):
        if prepare_stage_dir(directory, header, supported_versions=SUPPORTED_VERSIONS, overwrite=overwrite):
            log.info("text-embed: %s is up to date (hash %s); nothing to do", directory, header.identity)
            return directory / MANIFEST
        if encoder is None:
            encoder = text_encoders.build_text_encoder(config.text_encoder, device=config.device)
        raw = text_encoders.class_embeddings(encoder, prompt_names, templates, batch_size=config.batch_size)
        try:
            result = orthogonalize(raw, enabled=config.orthogonalize)
        except ValueError as exc:
            raise ConfigError(f"text-embed ({config.text_encoder}): {exc}") from None
        attrs = {
            "text_encoder": absolute_encoder_spec(encoder.id),
            "encoder_fingerprint": fingerprint,
            "orthogonalization": result.branch,
            "mean_abs_cos_before": result.mean_abs_cos_before,
            "mean_abs_cos_after": result.mean_abs_cos_after,
            "class_names_source": names_source,  # where the names came from (they enter the hash)
        }
        path = write_text_embed(directory / FILE_NAME, header, class_names=class_names,
                                prompt_names=prompt_names, templates=templates, raw=raw,
                                anchors=result.anchors, attrs=attrs)
        manifest = write_manifest(directory, header, files=[FILE_NAME], extra={
            **attrs, "num_classes": len(class_names), "dim": int(raw.shape[1]),
            "dataset": header.config["dataset"], "split": config.split, "templates": templates,
        })
    log.info(
        "text-embed: %d classes (%s%s) encoded with %s (d=%d) from %d template(s) %s; "
        "orthogonalization '%s': mean |cos| between different classes %.4g before, %.4g after; "
        "anchors written to %s",
        len(class_names), ", ".join(prompt_names[:8]), ", ..." if len(prompt_names) > 8 else "",
        encoder.id, raw.shape[1], len(templates), templates[:3], result.branch,
        result.mean_abs_cos_before, result.mean_abs_cos_after, path)
    return manifest
