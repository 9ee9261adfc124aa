"""The model registry and the one way a model is built from a recipe's ``model`` mapping."""

from __future__ import annotations

from hfstage.arguments import check_arguments
from hfstage.errors import ConfigError
from hfstage.registry import Registry

MODELS: Registry = Registry("model", "hfstage.models")


def build_model(model_cfg: dict, where: str = "model", load_weights: bool = False, **task_args):
    """Build a model from the run's ``model`` mapping (``type`` + config args): randomly initialised, or,
    with ``load_weights`` and ``pretrained: true``, with the backbone's published weights."""
    args = dict(model_cfg)
    model_cls = MODELS.get(args.pop("type"), f"{where}.type")
    config_cls = model_cls.config_class
    # names only: a config class's own __init__ converts and checks its values
    check_arguments(config_cls, args, where, f"model '{model_cfg['type']}'", typed=False)
    try:
        config = config_cls(**{**task_args, **args})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    model = model_cls(config)
    if load_weights and getattr(config, "pretrained", False):
        model.load_pretrained_backbone()
    return model


# -- saved stages: the one way a stage folder's model and config are read back, and written

NATIVE_SECTION = "hfstage_timm"  # hfstage's own config inside a transformers-native (timm_wrapper) config.json


def save_stage_model(model, folder) -> None:
    """Write a finished stage's model: its own ``save_stage`` when it has one (timm images: transformers' native
    format), else ``save_pretrained`` (safetensors)."""
    if hasattr(model, "save_stage"):
        model.save_stage(folder)
    else:
        model.save_pretrained(folder, safe_serialization=True)


def _native(folder) -> dict | None:
    """``config.json`` of a stage saved in a transformers-native format with hfstage's config inside, else None."""
    import json
    from pathlib import Path

    try:
        saved = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if saved.get("model_type") == "timm_wrapper" and NATIVE_SECTION in saved else None


def is_native(folder) -> bool:
    """Whether a stage folder holds a transformers-native model that hfstage rebuilds from its own config inside."""
    return _native(folder) is not None


def load_saved_model(folder):
    """A stage folder's model as hfstage trains and evaluates it."""
    saved = _native(folder)
    if saved is not None:
        return MODELS.get("timm").from_native(folder, saved)
    from transformers import AutoModel

    MODELS.load_plugins()  # a plug-in's model registers its Auto classes when it loads

    return AutoModel.from_pretrained(folder)


def load_saved_config(folder):
    """A stage folder's model config as hfstage reads it (classes, image size, preprocessing)."""
    saved = _native(folder)
    if saved is not None:
        return MODELS.get("timm").native_config(saved)
    from transformers import AutoConfig

    MODELS.load_plugins()

    return AutoConfig.from_pretrained(folder)
