"""Models, one module per family, each a ``PreTrainedModel`` registered with the Auto classes.

Importing hfstage registers them, so ``AutoModel.from_pretrained(stage_dir)`` rebuilds any saved
stage from its ``config.json`` (the model type is read from there, never guessed from a folder name).
The registry and ``build_model`` live in ``models/base.py``.
"""

from __future__ import annotations

from hfstage.models import estimator, pair_cnn, sequence, speech, timm_classifier  # noqa: F401  (registers the models)
from hfstage.models.base import (
    MODELS,
    build_model,
    load_saved_config,
    load_saved_model,
    save_stage_model,
)

__all__ = ["MODELS", "build_model", "load_saved_config", "load_saved_model", "save_stage_model"]
