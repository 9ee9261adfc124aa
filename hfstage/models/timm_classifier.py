"""Any timm backbone as a ``PreTrainedModel``: ``model: {type: timm, backbone: resnet18, ...}``.

A finished stage with the plain (linear) head is saved in transformers' own timm format (model type
``timm_wrapper``: ``TimmWrapperForImageClassification``, its image processor read from ``config.json``'s
``pretrained_cfg``), so ``AutoModelForImageClassification``, ``AutoImageProcessor`` and
``pipeline("image-classification")`` load it without hfstage; ``config.json`` also keeps hfstage's own config
(``hfstage_timm``), from which hfstage rebuilds this class (``from_native``). The cosine (ArcFace) head and
stages saved by older versions use model type ``hfstage_timm`` and reload by ``AutoModel`` after
``import hfstage``. Either way the config carries the preprocessing (size, mean, std, interpolation), so
evaluation and prediction rebuild exactly the transforms the model was trained with.

``pretrained: true`` loads timm's weights for the backbone when they are in the Hub cache or the Hub
answers; otherwise a clear error says so at once (timm's own download would retry for a minute).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import ModelOutput

from hfstage.errors import ConfigError
from hfstage.models.base import MODELS, NATIVE_SECTION


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
        # the preprocessing in timm's terms, read by transformers' TimmWrapperImageProcessor (AutoImageProcessor)
        self.pretrained_cfg = {"input_size": [self.in_chans, self.image_size, self.image_size], "mean": self.mean,
                               "std": self.std, "interpolation": self.interpolation, "crop_pct": 1.0,
                               "crop_mode": "center"}


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

    # -- a finished stage in transformers' native timm format

    def _native_state(self) -> tuple[dict[str, torch.Tensor], str] | None:
        """The weights under timm's own names for a model with this many classes (``timm_model.`` prefixed, as
        ``TimmWrapperForImageClassification`` holds them) and the classifier's name; None if they do not map."""
        import timm

        if self.config.head != "linear":
            return None
        with torch.device("meta"):  # only the names and shapes: nothing is allocated
            probe = timm.create_model(self.config.backbone, **{**self._timm_kwargs(self.config),
                                                               "num_classes": self.config.num_labels})
        classifier = next((n for n, m in probe.named_modules() if m is probe.get_classifier()), None)
        if not classifier:
            return None
        state = {f"timm_model.{k}": v for k, v in self.backbone.state_dict().items()}
        state.update({f"timm_model.{classifier}.{k}": v for k, v in self.head.state_dict().items()})
        wanted = {f"timm_model.{k}": tuple(v.shape) for k, v in probe.state_dict().items()}
        if {k: tuple(v.shape) for k, v in state.items()} != wanted:
            return None
        return state, classifier

    def save_stage(self, folder) -> None:
        """Write the finished stage: transformers' native timm format when the head is the plain linear one (see the
        module doc), else ``save_pretrained``."""
        import json
        from pathlib import Path

        import transformers
        from safetensors.torch import save_file

        native = self._native_state()
        if native is None:
            self.save_pretrained(folder, safe_serialization=True)
            return
        state, classifier = native
        c = self.config
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        model_args = {k: v for k, v in self._timm_kwargs(c).items() if k not in ("pretrained", "num_classes")}
        own = {k: getattr(c, k) for k in NATIVE_FIELDS}  # (pretrained_cfg is written at the top level)
        config = {
            "architectures": ["TimmWrapperForImageClassification"],
            "model_type": "timm_wrapper",
            "architecture": c.backbone,
            "num_classes": c.num_labels,
            "label_names": [str(c.id2label[i]) for i in range(c.num_labels)],
            "model_args": model_args,
            "do_pooling": True,
            "initializer_range": 0.02,
            "pretrained_cfg": {"input_size": [c.in_chans, c.image_size, c.image_size], "mean": list(c.mean),
                               "std": list(c.std), "interpolation": c.interpolation, "crop_pct": 1.0,
                               "crop_mode": "center", "num_classes": c.num_labels, "classifier": classifier},
            "transformers_version": transformers.__version__,
            NATIVE_SECTION: own,
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def native_config(cls, saved: dict) -> TimmClassifierConfig:
        """hfstage's config of a stage saved in the native format (``config.json`` as a dict)."""
        names = saved["label_names"]
        return TimmClassifierConfig(**saved[NATIVE_SECTION], num_labels=len(names), id2label=dict(enumerate(names)),
                                    label2id={n: i for i, n in enumerate(names)})

    @classmethod
    def from_native(cls, folder, saved: dict) -> TimmClassifier:
        """This class, rebuilt from a stage saved in the native format."""
        from pathlib import Path

        from safetensors.torch import load_file

        model = cls(cls.native_config(saved))
        classifier = saved["pretrained_cfg"]["classifier"]
        weights = load_file(str(Path(folder) / "model.safetensors"))
        state = {}
        for key, value in weights.items():
            name = key.removeprefix("timm_model.")
            if name.startswith(classifier + "."):
                state["head." + name[len(classifier) + 1:]] = value
            else:
                state["backbone." + name] = value
        model.load_state_dict(state, strict=True)
        return model.eval()


NATIVE_FIELDS = ("backbone", "image_size", "in_chans", "pretrained", "drop_rate", "drop_path_rate", "mean", "std",
                 "interpolation", "head", "cosine_scale", "hf_hub_id")


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
# a cosine-head stage (hfstage's own format) through the same three calls as a native one, after `import hfstage`
AutoModelForImageClassification.register(TimmClassifierConfig, TimmClassifier)


def _register_image_processor() -> None:
    """``AutoImageProcessor`` gives a cosine-head stage transformers' TimmWrapperImageProcessor. Registered by class
    name, as transformers maps its own models: the class, and with it timm (which imports wandb when installed, ~1 s
    together), is imported when a processor is loaded, not with hfstage."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    IMAGE_PROCESSOR_MAPPING.register(TimmClassifierConfig, {"pil": "TimmWrapperImageProcessor"}, exist_ok=True)


_register_image_processor()
