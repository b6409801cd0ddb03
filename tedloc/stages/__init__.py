"""One module per stage, each with ``run(config, *, workdir, overwrite=False) -> Path``."""
