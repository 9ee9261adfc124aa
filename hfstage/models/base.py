"""The model registry and the one way a model is built from a recipe's ``model`` mapping."""

from __future__ import annotations

from hfstage.arguments import check_arguments
from hfstage.errors import ConfigError
from hfstage.registry import Registry

MODELS: Registry = Registry("model")


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
