"""Models, one module per family, each a ``PreTrainedModel`` registered with the Auto classes.

Importing hfstage registers them, so ``AutoModel.from_pretrained(stage_dir)`` rebuilds any saved
stage from its ``config.json`` (the model type is read from there, never guessed from a folder name).
"""

from __future__ import annotations

from hfstage.registry import Registry

MODELS: Registry = Registry("model")

from hfstage.models import pair_cnn, sequence, speech, timm_classifier  # noqa: E402,F401  (registers the models)


def build_model(model_cfg: dict, where: str = "model", load_weights: bool = False, **task_args):
    """Build a model from the run's ``model`` mapping (``type`` + config args): randomly initialised, or,
    with ``load_weights`` and ``pretrained: true``, with the backbone's published weights."""
    import inspect

    from hfstage.errors import ConfigError
    from hfstage.registry import closest

    args = dict(model_cfg)
    model_cls = MODELS.get(args.pop("type"), f"{where}.type")
    config_cls = model_cls.config_class
    accepted = [p for p in inspect.signature(config_cls.__init__).parameters if p not in ("self", "kwargs")]
    for key in args:
        if key not in accepted:
            raise ConfigError(f"{where}.{key}: unknown argument of model '{model_cfg['type']}'{closest(key, accepted)}")
    try:
        config = config_cls(**{**task_args, **args})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    model = model_cls(config)
    if load_weights and getattr(config, "pretrained", False):
        model.load_pretrained_backbone()
    return model
