"""hfstage: staged (curriculum) training on transformers.Trainer and accelerate.

Importing the package registers hfstage's models with the transformers Auto classes, so
``AutoModel.from_pretrained(stage_dir)`` works on any saved stage. ``hfstage.train(config, train_dataset=...,
eval_dataset=...)`` runs a recipe from Python, on ``datasets.Dataset`` objects if you have them.
"""

from hfstage.version import __version__  # noqa: F401

from hfstage import models  # noqa: E402,F401  (registers the Auto classes)


def train(config, train_dataset=None, eval_dataset=None, test_dataset=None, overrides=(), callbacks=()):
    """Run (or resume) a recipe from Python; see ``hfstage.api.train``."""
    from hfstage.api import train as run_recipe

    return run_recipe(config, train_dataset, eval_dataset, test_dataset, overrides, callbacks)
