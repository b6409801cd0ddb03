"""tedloc: TeD-Loc (text distillation for weakly supervised object localization).

The package is a pipeline of four resumable stages that cache their results on disk:
``text-embed`` → ``pseudo-labels`` → ``train`` → ``evaluate``.  See README.md.
"""

__version__ = "0.1.0"
