"""One frozen dataclass config per stage (importable without torch, so ``--help`` is fast).

``STAGES`` maps a CLI stage name to ``(config module, stage module)``; each config module
defines ``Config`` and each stage module defines ``run(config, *, workdir, overwrite)``.
"""

STAGES = {
    "text-embed": ("tedloc.configs.text_embed", "tedloc.stages.text_embed"),
    "pseudo-labels": ("tedloc.configs.pseudo_labels", "tedloc.stages.pseudo_labels"),
    "train": ("tedloc.configs.train", "tedloc.stages.train"),
    "evaluate": ("tedloc.configs.evaluate", "tedloc.stages.evaluate"),
}
