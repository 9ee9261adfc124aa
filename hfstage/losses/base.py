"""The loss registry and the one convention every training loss follows.

A loss is an ``nn.Module`` called as ``loss(outputs, labels, **targets)``: ``outputs`` is what the model
returned (a ``ModelOutput`` or mapping holding ``logits``; a bare logits tensor is accepted too),
``labels`` the batch's labels, and ``targets`` the further batch keys the loss names in ``label_keys``
(the speech loss takes ``error_labels``). Because every loss has this one signature, a wrapper such as
distillation composes with any of them.

A recipe names a loss and its arguments as ``loss: focal`` or ``loss: {type: focal, gamma: 3}``; the
mapping is checked against the loss class's constructor (``loss_spec``), so a loss's parameters are
its constructor's arguments and nothing else. ``label_smoothing`` is a stage field that every loss
taking it receives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hfstage.arguments import accepted_arguments, check_arguments, defaults_of
from hfstage.errors import ConfigError
from hfstage.registry import Registry

LOSSES: Registry = Registry("loss", "hfstage.losses")


def logits_of(outputs) -> torch.Tensor:
    """The ``logits`` of a model's outputs (or the tensor itself)."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs["logits"]


class StageLoss(nn.Module):
    """Base class of the training losses: ``forward(outputs, labels, **targets)`` returns a scalar mean."""

    label_keys: tuple[str, ...] = ()  # batch keys, besides ``labels``, the loss takes as targets
    bound_from_model: tuple[str, ...] = ()  # constructor arguments set by ``bind_model``, never by a recipe
    checks: dict[str, tuple] = {}  # argument -> (predicate, "must be ..."), applied when a recipe is loaded

    def bind_model(self, model) -> None:
        """Take what the loss needs from the model being trained (called by the trainer)."""

    def evaluation(self) -> StageLoss | None:
        """The loss behind ``eval_loss``; None means plain cross-entropy, so stages that train with different
        losses are compared on one scale."""
        return None

    def distillation_logits(self, outputs, student_outputs, **targets) -> list[torch.Tensor]:
        """The scores a teacher's soft targets are matched on: ``(M, C)`` class scores or ``(M,)`` binary logits,
        one row per prediction (positions padded away; ``student_outputs`` gives the lengths)."""
        return [logits_of(outputs)]

    def get_config_dict(self) -> dict[str, Any]:
        """The loss's arguments and their values (for ``plan``, records and model cards)."""
        return {name: getattr(self, name) for name in accepted_arguments(type(self), self.bound_from_model)
                if hasattr(self, name)}


def loss_spec(spec: Any, where: str) -> dict[str, Any]:
    """A recipe's ``loss`` (a name, or a mapping with ``type``) checked against the loss's constructor, as
    ``{"type": name, every argument: value}`` with the defaults filled in."""
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a loss name or a mapping with 'type', got {spec!r}")
    if "type" not in spec:
        raise ConfigError(f"{where}.type: missing; name a loss ({', '.join(LOSSES.names())})")
    name = str(spec["type"])
    cls = LOSSES.get(name, where)
    args = {k: v for k, v in spec.items() if k != "type"}
    if "label_smoothing" in args:
        raise ConfigError(f"{where}.label_smoothing: label smoothing is a stage field (every loss that takes it "
                          "receives it); set label_smoothing on the stage")
    return {"type": name, **loss_arguments(cls, args, where, f"loss '{name}'", ("label_smoothing",))}


def loss_arguments(cls: type[StageLoss], args: dict[str, Any], where: str, what: str,
                   exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """``args`` checked against ``cls``'s constructor (its ``checks`` applied), with every default filled in."""
    exclude = (*exclude, *cls.bound_from_model)
    return {**defaults_of(cls, exclude), **check_arguments(cls, args, where, what, exclude, cls.checks)}


def takes_label_smoothing(name: str) -> bool:
    return "label_smoothing" in accepted_arguments(LOSSES.get(name))


def build_loss(spec: dict[str, Any], label_smoothing: float = 0.0, where: str = "loss") -> StageLoss:
    """The loss a stage asks for (``spec`` as ``loss_spec`` returns it), with the stage's label smoothing."""
    spec = loss_spec(spec, where)
    cls = LOSSES.get(spec["type"], where)
    args = {k: v for k, v in spec.items() if k != "type"}
    if takes_label_smoothing(spec["type"]):
        args["label_smoothing"] = label_smoothing
    elif label_smoothing:
        raise ConfigError(f"{where}: loss '{spec['type']}' takes no label smoothing; set label_smoothing: 0")
    return cls(**args)


def describe(spec: dict[str, Any], label_smoothing: float = 0.0) -> str:
    """``focal(alpha=1,gamma=2,label_smoothing=0.1)``: a loss and its arguments on one line."""
    args = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in spec.items() if k != "type"]
    if label_smoothing:
        args.append(f"label_smoothing={label_smoothing:g}")
    return spec["type"] + (f"({','.join(args)})" if args else "")
