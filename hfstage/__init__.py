"""hfstage: staged (curriculum) training on transformers.Trainer and accelerate.

Importing the package registers hfstage's models with the transformers Auto classes, so
``AutoModel.from_pretrained(stage_dir)`` works on any saved stage. The functions the command line calls are here
too, loaded on first use::

    import hfstage

    cfg = hfstage.load_config("configs/quickstart.yaml", ["quick_test=true"])
    run = hfstage.train(cfg)                                   # hfstage train
    result = hfstage.evaluate("runs/quickstart", split="test")  # hfstage evaluate
    hfstage.push("runs/quickstart", "me/quickstart")           # hfstage push

``train`` (also on ``datasets.Dataset`` objects), ``evaluate``, ``predict``, ``stack``, ``push``, ``pull``,
``load_config``; see docs/python-api.md.
"""

from hfstage.version import __version__  # noqa: F401

from hfstage import models  # noqa: E402,F401  (registers the Auto classes)
from hfstage.pipelines import register_pipelines  # noqa: E402

register_pipelines()  # pipeline("pair-classification" | "feature-sequence-classification" | "pronunciation-assessment")

# name -> (module, attribute): imported when first used, so ``import hfstage`` stays as light as the Auto classes
_API = {
    "train": ("hfstage.api", "train"),
    "predict": ("hfstage.api", "predict"),
    "evaluate": ("hfstage.api", "evaluate"),
    "stack": ("hfstage.stacking", "stack"),
    "push": ("hfstage.hub.push", "push"),
    "pull": ("hfstage.hub.pull", "pull"),
    "load_config": ("hfstage.config", "load_config"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        module, attribute = _API[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hfstage' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API})
