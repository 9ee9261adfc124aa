"""Model surgery for a stage: freezing by name patterns, dropout, and per-group learning rates.

Kept outside the training loop (as timm's ``_manipulate.py`` is), so the trainer, the curriculum and
``plan`` all use the same rules:

- ``freeze_patterns``: glob patterns of parameter names; a pattern starting with ``!`` keeps what it
  matches trainable. Fully frozen modules stay in eval mode (a frozen backbone's BatchNorm keeps its
  running statistics).
- ``dropout``: the p of every dropout layer.
- ``lr_multipliers`` (glob -> multiplier, first match wins) and ``encoder_lr``/``head_lr`` (the model's
  encoder against the rest): one optimizer parameter group per (multiplier, weight decay) pair.
"""

from __future__ import annotations

import dataclasses
import fnmatch

from torch import nn

from hfstage.errors import ConfigError


def matching(names: list[str], pattern: str) -> list[str]:
    """Names matching a glob (a leading ``!`` of a freeze exclusion is ignored here)."""
    return [n for n in names if fnmatch.fnmatchcase(n, pattern.removeprefix("!"))]


def frozen_names(names: list[str], patterns: list[str]) -> list[str]:
    """Names matched by a freeze pattern and by no ``!`` exclusion (``[backbone.*, '!backbone.fc.*']``)."""
    keep = [p[1:] for p in patterns if p.startswith("!")]
    freeze_ = [p for p in patterns if not p.startswith("!")]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in freeze_)
            and not any(fnmatch.fnmatchcase(n, k) for k in keep)]


def frozen_count(model: nn.Module, patterns: list[str]) -> int:
    """How many parameter elements ``patterns`` would freeze."""
    chosen = set(frozen_names([n for n, _ in model.named_parameters()], patterns))
    return sum(p.numel() for n, p in model.named_parameters() if n in chosen)


def check_patterns(model: nn.Module, stage, where: str, model_type: str) -> None:
    """Every ``freeze_patterns``/``lr_multipliers`` pattern matches a parameter, and something stays trainable."""
    names = [n for n, _ in model.named_parameters()]
    for field in ("freeze_patterns", "lr_multipliers"):
        for pattern in getattr(stage, field):
            if not matching(names, pattern):
                raise ConfigError(f"{where}.{field}: {pattern!r} matches no parameter of model '{model_type}' "
                                  f"(names look like {', '.join(names[:3])})")
    if stage.freeze_patterns and len(frozen_names(names, stage.freeze_patterns)) == len(names):
        raise ConfigError(f"{where}.freeze_patterns: every parameter would be frozen; nothing would train")


def freeze(model: nn.Module, patterns: list[str], where: str) -> int:
    """Freeze parameters matching any pattern; put fully frozen modules in eval mode for good.

    A frozen backbone's BatchNorm would otherwise keep updating its running statistics every time the
    Trainer calls ``model.train()``. Returns the number of frozen parameters (elements).
    """
    if not patterns:
        return 0
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not matching(names, pattern):
            raise ConfigError(
                f"{where}.freeze_patterns: {pattern!r} matches no parameter (names look like {', '.join(names[:3])})"
            )
    chosen = set(frozen_names(names, patterns))
    frozen = 0
    for name, param in model.named_parameters():
        if name in chosen:
            param.requires_grad_(False)
            frozen += param.numel()
    for module in _topmost_frozen_modules(model):
        module.register_forward_pre_hook(_keep_eval)
    return frozen


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def keep_batchnorm_statistics(model: nn.Module) -> None:
    """Every BatchNorm layer with running statistics stays in eval mode (normalising with the statistics it has,
    never updating them) while its scale and shift still train."""
    for module in batchnorm_layers(model):
        module.register_forward_pre_hook(_keep_eval)


def _keep_eval(module: nn.Module, _inputs) -> None:
    if module.training:
        module.eval()


def _topmost_frozen_modules(model: nn.Module) -> list[nn.Module]:
    def all_frozen(m: nn.Module) -> bool:
        params = list(m.parameters())
        return bool(params) and not any(p.requires_grad for p in params)

    found = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if all_frozen(child):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def set_dropout(model: nn.Module, p: float | None) -> None:
    if p is None:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = p


def with_encoder_lr(stage, model, where: str):
    """``encoder_lr``/``head_lr`` as the stage's learning rate and a leading ``lr_multipliers`` entry."""
    if stage.encoder_lr is None and stage.head_lr is None:
        return stage
    prefix = getattr(model, "encoder_prefix", None)
    if prefix is None:
        raise ConfigError(f"{where}.encoder_lr: model '{type(model).__name__}' has no single encoder to give its own "
                          "learning rate; use lr_multipliers with parameter-name patterns")
    lr = stage.head_lr if stage.head_lr is not None else stage.lr
    multipliers = {f"{prefix}*": (stage.encoder_lr if stage.encoder_lr is not None else stage.lr) / lr}
    return dataclasses.replace(stage, lr=lr, lr_multipliers={**multipliers, **stage.lr_multipliers})


def parameter_groups(model: nn.Module, lr_multipliers: dict[str, float], decay: set[str], base_lr: float,
                     weight_decay: float, where: str) -> list[dict]:
    """Optimizer groups: one per (learning-rate multiplier, weight decay or not) of the trainable parameters."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for pattern in lr_multipliers:
        if not matching(names, pattern):
            raise ConfigError(f"{where}.lr_multipliers: {pattern!r} matches no trainable parameter")
    groups: dict[tuple[float, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        mult = next((m for pat, m in lr_multipliers.items() if fnmatch.fnmatchcase(name, pat)), 1.0)
        groups.setdefault((mult, name in decay), []).append(param)
    return [{"params": params, "lr": base_lr * mult, "weight_decay": weight_decay if has_decay else 0.0}
            for (mult, has_decay), params in groups.items()]
