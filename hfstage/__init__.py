"""hfstage: staged (curriculum) training on transformers.Trainer and accelerate.

Importing the package registers hfstage's models with the transformers Auto classes (when transformers is
imported, so ``import hfstage`` itself loads neither torch nor transformers), so ``AutoModel.from_pretrained(stage_dir)``
works on any saved stage. The functions the command line calls are here too, loaded on first use::

    import hfstage

    cfg = hfstage.load_config("configs/quickstart.yaml", ["quick_test=true"])
    run = hfstage.train(cfg)                                   # hfstage train
    result = hfstage.evaluate("runs/quickstart", split="test")  # hfstage evaluate
    hfstage.push("runs/quickstart", "me/quickstart")           # hfstage push

``train`` (also on ``datasets.Dataset`` objects), ``evaluate``, ``predict``, ``stack``, ``search``, ``push``, ``pull``,
``load_config``; see docs/python-api.md.
"""

import importlib.abc
import importlib.util
import sys

from hfstage.version import __version__  # noqa: F401

_registered = False


def _register() -> None:
    """Register hfstage's models with the transformers Auto classes and its pipelines (``pipeline("pair-classification"
    | "feature-sequence-classification" | "pronunciation-assessment")``), once."""
    global _registered
    if _registered:
        return
    _registered = True
    from hfstage import models  # noqa: F401  (each model module registers its Auto classes)
    from hfstage.pipelines import register_pipelines

    register_pipelines()


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Runs ``_register`` right after ``transformers`` is imported: ``import hfstage`` stays light (a help text
    imports neither torch nor transformers), and ``AutoModel.from_pretrained(stage)`` / ``pipeline(...)`` after
    ``import hfstage`` work as they always did, since they import transformers first."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register()

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:  # already paid for: register now
    _register()
else:
    sys.meta_path.insert(0, _AfterTransformers())

# name -> (module, attribute): imported when first used, so ``import hfstage`` stays as light as the Auto classes
_API = {
    "train": ("hfstage.api", "train"),
    "predict": ("hfstage.api", "predict"),
    "evaluate": ("hfstage.api", "evaluate"),
    "stack": ("hfstage.stacking", "stack"),
    "search": ("hfstage.stage_search.runner", "search"),
    "auto": ("hfstage.automl.runner", "auto"),
    "push": ("hfstage.api", "push"),
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
