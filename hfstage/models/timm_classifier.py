"""Any timm backbone as a ``PreTrainedModel``: ``model: {type: timm, backbone: resnet18, ...}``.

The saved stage is ``config.json`` (model type ``hfstage_timm``: backbone name, classes, image size and
the preprocessing the model expects) + ``model.safetensors``, and reloads by ``AutoModel``. The config
carries the preprocessing (size, mean, std, interpolation) the way a Hugging Face image processor
would, so evaluation and prediction rebuild exactly the transforms the model was trained with.

``pretrained: true`` loads timm's weights for the backbone when they are in the Hub cache or the Hub
answers; otherwise a clear error says so at once (timm's own download would retry for a minute).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from hfstage.errors import ConfigError
from hfstage.models.base import MODELS


class TimmClassifierConfig(PretrainedConfig):
    model_type = "hfstage_timm"

    def __init__(self, backbone: str = "resnet18", num_labels: int | None = None, image_size: int = 224,
                 in_chans: int = 3, pretrained: bool = False, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 mean: list[float] | None = None, std: list[float] | None = None, interpolation: str | None = None,
                 head: str = "linear", cosine_scale: float = 30.0, **kwargs):
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)
        import timm

        if not timm.is_model(backbone):
            from hfstage.arguments import closest

            raise ValueError(f"backbone {backbone!r} is not a timm model{closest(backbone, timm.list_models())}")
        if image_size < 8:
            raise ValueError(f"image_size {image_size} must be >= 8")
        if not 0 <= drop_rate < 1 or not 0 <= drop_path_rate < 1:
            raise ValueError("drop_rate and drop_path_rate must be in [0, 1)")
        if head not in ("linear", "cosine"):
            raise ValueError(f"head {head!r} must be linear or cosine")
        if cosine_scale <= 0:
            raise ValueError(f"cosine_scale {cosine_scale} must be > 0")
        self.head = head
        self.cosine_scale = float(cosine_scale)
        defaults = timm.get_pretrained_cfg(backbone)
        defaults = defaults.to_dict() if defaults is not None else {}
        self.backbone = backbone
        self.image_size = int(image_size)
        self.in_chans = int(in_chans)
        self.pretrained = bool(pretrained)
        self.drop_rate = float(drop_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.mean = list(mean or defaults.get("mean") or (0.485, 0.456, 0.406))
        self.std = list(std or defaults.get("std") or (0.229, 0.224, 0.225))
        self.interpolation = interpolation or defaults.get("interpolation") or "bilinear"
        self.hf_hub_id = defaults.get("hf_hub_id")


@dataclass
class ClassifierOutput(ModelOutput):
    logits: torch.Tensor | None = None


class CosineHead(nn.Module):
    """``s * cos(theta)`` between L2-normalised features and L2-normalised class weights (for ArcFace)."""

    def __init__(self, in_features: int, num_labels: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, in_features))
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * nn.functional.linear(nn.functional.normalize(features, dim=-1),
                                                 nn.functional.normalize(self.weight, dim=-1))


@MODELS.register("timm")
class TimmClassifier(PreTrainedModel):
    config_class = TimmClassifierConfig
    main_input_name = "pixel_values"
    encoder_prefix = "backbone."  # encoder_lr applies to these parameters

    def __init__(self, config: TimmClassifierConfig):
        super().__init__(config)
        import timm

        # the backbone ends in pooled features (timm's num_classes=0); the classifier is always `head`,
        # so `freeze_patterns: [backbone.*]` is a head-only stage whatever the backbone
        self.backbone = timm.create_model(config.backbone, **self._timm_kwargs(config))
        if config.head == "cosine":
            self.head = CosineHead(self.backbone.num_features, config.num_labels, config.cosine_scale)
        else:
            self.head = nn.Linear(self.backbone.num_features, config.num_labels)
        self.post_init()

    @staticmethod
    def _timm_kwargs(config) -> dict:
        kwargs = {"pretrained": False, "num_classes": 0, "in_chans": config.in_chans, "drop_rate": config.drop_rate}
        if config.drop_path_rate:
            kwargs["drop_path_rate"] = config.drop_path_rate
        return kwargs

    def _init_weights(self, module):
        """timm initialises its own layers; the head is a plain linear layer."""
        if module is getattr(self, "head", None):
            nn.init.normal_(module.weight, std=0.01)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def load_pretrained_backbone(self) -> None:
        """timm's pretrained weights for the backbone (the classifier stays freshly initialised)."""
        import timm

        name = self.config.backbone
        hub_id = self.config.hf_hub_id
        if hub_id and not _cached(hub_id):
            _check_hub_reachable(f"model.pretrained: weights of {name} ({hub_id})")
        try:
            source = timm.create_model(name, **{**self._timm_kwargs(self.config), "pretrained": True})
        except Exception as exc:  # timm/huggingface_hub raise many kinds; one clear message
            raise ConfigError(f"model.pretrained: could not load timm's weights for {name}: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        self.backbone.load_state_dict(source.state_dict())

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> ClassifierOutput:
        return ClassifierOutput(logits=self.head(self.backbone(pixel_values)))


def _cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(hub_id, f), str) for f in ("model.safetensors", "pytorch_model.bin"))


def _check_hub_reachable(what: str, timeout: float = 3.0) -> None:
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"{what} are not in the Hub cache and the Hub ({constants.ENDPOINT}) cannot be reached ({exc}); "
            "set model.pretrained=false to start from random weights, or download them first "
            "(`hf download <repo>` on a machine with access, then copy the cache)"
        ) from None


AutoConfig.register(TimmClassifierConfig.model_type, TimmClassifierConfig)
AutoModel.register(TimmClassifierConfig, TimmClassifier)
