"""Same/different image pairs: one logit per pair, binary metrics."""

from __future__ import annotations

from pathlib import Path
import logging
from typing import Any

import numpy as np

from hfstage.config import DataConfig, StageConfig
from hfstage.data import npz_pairs
from hfstage.data.sources import SplitRef, open_split, run_split_refs
from hfstage.metrics import classification_metrics
from hfstage.tasks.base import TASKS, CardFacts, Field, Splits, Task, as_split_ref, load_run_splits

logger = logging.getLogger("hfstage")


@TASKS.register("pair_classification")
class PairClassificationTask(Task):
    """Same/different image pairs (``.npz`` files or any ``datasets`` source); one logit per pair; binary metrics.

    Images of any representation, mode and size are converted to the model's channels (``model.in_channels``,
    default 1) and size (``model.image_size``, default: the training split's first image's)."""

    name = "pair_classification"
    fields = (
        Field("image_a", "image", help="the first image of the pair"),
        Field("image_b", "image", help="the second image of the pair"),
        Field("pair", "image_pair", optional=True, alternative_to=("image_a", "image_b"),
              help="both images in one value (instead of image_a and image_b)"),
        Field("label", "binary_label", help="1 = the two images match"),
    )
    card = CardFacts(None, "image-classification", "Image pair classification (same/different)",
                     "pair-classification", 'classify({"image_a": "a.png", "image_b": "b.png"})')

    def __init__(self):
        super().__init__()
        self.channels: int | None = None  # the model's channels and image size: what every split is converted to
        self.size: tuple[int, int] | None = None

    def configure(self, data: DataConfig, model: dict | None = None) -> None:
        super().configure(data, model)
        model = model or {}
        self.channels = int(model.get("in_channels", 1))
        size = model.get("image_size")
        self.size = None if size is None else (tuple(size)[-2:] if isinstance(size, (list, tuple)) else (size, size))

    def bind(self, model_config) -> None:
        """Read later splits as the trained model takes them: its channels and image size."""
        self.channels = int(getattr(model_config, "in_channels", 1))
        size = getattr(model_config, "image_size", None)
        self.size = tuple(size)[-2:] if size is not None else None

    def load_split(self, split: SplitRef | Path, field: str = "data", limit: int | None = None) -> npz_pairs.PairDataset:
        """One split, validated; ``field`` names the config field in error messages."""
        ref = as_split_ref(split, field)
        if ref.dataset:
            return npz_pairs.PairDataset.from_dataset(open_split(ref), self.columns, f"{ref} ({field})", limit,
                                                      base=ref.folder, channels=self.channels, size=self.size)
        dataset = npz_pairs.npz_as_dataset(ref.path, field, self.columns)  # data.columns names its keys
        return npz_pairs.PairDataset.from_dataset(dataset, {}, f"{ref.path} ({field})", limit, checked=True,
                                                  channels=self.channels, size=self.size)

    def load_splits(self, data: DataConfig, given: dict | None = None, model: dict | None = None) -> Splits:
        self.configure(data, model)
        refs = run_split_refs(data, given)
        train = self.load_split(refs["train_file"], refs["train_file"].where, data.max_train_samples)
        self.size = self.size or train.image_size  # later splits take the training split's size
        sets = {"train_file": train, **load_run_splits(self, data, ("eval_file", "test_file"), given)}
        for field, ds in sets.items():
            stored = ds.stored_size
            if stored is not None and stored != tuple(self.size):
                logger.warning("%s: images of %dx%d are resized to %dx%d (the model's image size; set model.image_size "
                               "to choose it)", refs[field], *stored, *self.size)
        return Splits(train=train, eval=sets["eval_file"], test=sets.get("test_file"))

    def model_args(self, splits: Splits) -> dict[str, Any]:
        return {"image_size": list(splits.train.image_size)}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        npz_pairs.check_pair_augmentation(stage.augmentation, where)
        super().check_stage(stage, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None, **extra):
        return npz_pairs.PairCollator(stage.augmentation if (training and stage is not None) else None)

    def save_with_model(self, folder: Path, model_config) -> None:
        """The pair-classification pipeline's settings: the images' size and channels (uint8 is scaled by 1/255)."""
        from hfstage.pipelines import save_processor

        save_processor(folder, "pairs", image_size=list(model_config.image_size), in_channels=model_config.in_channels)

    def decide(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs -> (predicted class, probability of the positive class) per sample."""
        if isinstance(predictions, (tuple, list)):  # logits first, any extra model outputs after
            predictions = predictions[0]
        logits = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)[:, 0]
        probs = 1 / (1 + np.exp(-logits))
        return (logits > 0).astype(np.int64), probs

    def compute_metrics(self, eval_pred, **decision) -> dict[str, float]:
        preds, _ = self.decide(eval_pred.predictions)
        return classification_metrics(preds, np.asarray(eval_pred.label_ids), average="binary")
