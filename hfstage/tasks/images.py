"""Images with timm backbones: class folders, a ``path,label`` CSV or any ``datasets`` source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hfstage.config import DataConfig, StageConfig
from hfstage.data import images
from hfstage.data.sources import SplitRef, open_split, run_split_refs
from hfstage.errors import ConfigError, DataError
from hfstage.tasks.base import TASKS, CardFacts, Field, Splits, Task, as_split_ref, load_run_splits
from hfstage.tasks.sequences import MultiClassDecisions


@TASKS.register("image_classification")
class ImageClassificationTask(MultiClassDecisions, Task):
    """Images from class folders, a ``path,label`` CSV or any ``datasets`` source (``image`` and ``label``
    columns); any timm backbone; macro-averaged metrics.

    ``data.train_file``/``eval_file``/``test_file`` name folders (or CSV files) under ``data.path``, or the
    splits of a ``datasets`` source.
    """

    name = "image_classification"
    fields = (
        Field("image", "image", help="the image", own_key="path"),
        Field("label", "class_label", help="the class"),
    )
    card = CardFacts("image-classification", "image-classification", "Image classification", "image-classification",
                     'classify("image.png")')
    reads_unlabeled = True

    def __init__(self):
        super().__init__()
        self.classes: list[str] | None = None
        self.skip_bad = False

    def bind(self, model_config) -> None:
        """Use a trained model's classes (``id2label``) for the splits loaded next."""
        self.classes = [model_config.id2label[i] for i in range(model_config.num_labels)]

    def load_split(self, path: SplitRef | Path, field: str = "data", limit: int | None = None) -> images.ImageDataset:
        ref = as_split_ref(path, field)
        if ref.dataset:
            return images.ImageDataset.from_dataset(open_split(ref), self.columns, f"{ref} ({field})", self.classes,
                                                    limit, self.skip_bad, base=ref.folder)
        listed = images.load_image_list(ref.path, field, self.classes, self.skip_bad, columns=self.columns)
        return images.ImageDataset(listed, limit)

    def load_splits(self, data: DataConfig, given: dict | None = None, model: dict | None = None) -> Splits:
        self.configure(data, model)
        self.skip_bad = data.skip_bad_images
        refs = run_split_refs(data, given)
        if refs["train_file"].dataset:
            self.classes = None
            train = self.load_split(refs["train_file"], refs["train_file"].where, data.max_train_samples)
            if len(train.classes) < 2:
                raise DataError(f"{refs['train_file']}: {len(train.classes)} class(es); classification needs at least 2 "
                                "(data.train_file)")
            self.classes = train.classes
            rest = load_run_splits(self, data, ("eval_file", "test_file"), given)
            return Splits(train=train, eval=rest["eval_file"], test=rest.get("test_file"))
        root = Path(data.path)
        train = self.load_split(root / data.train_file, "data.train_file", data.max_train_samples)
        self.classes = train.classes
        if len(self.classes) < 2:
            raise DataError(f"{root / data.train_file}: {len(self.classes)} class(es); classification needs at least 2 "
                            "(data.train_file)")
        eval_set = self.load_split(root / data.eval_file, "data.eval_file", data.max_eval_samples)
        test = None if data.test_file is None else self.load_split(root / data.test_file, "data.test_file",
                                                                   data.max_eval_samples)
        return Splits(train=train, eval=eval_set, test=test)

    def load_unlabeled(self, path: Path, field: str) -> images.ImageDataset:
        """A folder of images to pseudo-label (class sub-folders, if any, are ignored)."""
        listed = images.load_image_list(path, field, self.classes, self.skip_bad, labelled=False)
        listed.labels[:] = -1
        return images.ImageDataset(listed)

    def with_labels(self, dataset: images.ImageDataset, chosen: np.ndarray, labels: np.ndarray) -> images.ImageDataset:
        """The ``chosen`` samples of ``dataset``, labelled ``labels``."""
        subset = images.ImageDataset(images.ImageList([dataset.paths[i] for i in chosen],
                                                      np.asarray(labels, dtype=np.int64), dataset.classes))
        return subset

    def model_args(self, splits: Splits) -> dict[str, Any]:
        classes = splits.train.classes
        return {"num_labels": len(classes), "id2label": dict(enumerate(classes)),
                "label2id": {c: i for i, c in enumerate(classes)}}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        images.check_image_augmentation(stage.augmentation, where, stage.loss["type"])  # class-wise strength allowed
        for name, factor in stage.class_augmentation.items():
            if factor < 0:
                raise ConfigError(f"{where}.class_augmentation.{name}: {factor} must be >= 0")

    def check_stage_model(self, stage: StageConfig, model, where: str) -> None:
        """Class names of ``class_augmentation`` exist in the model's classes."""
        if stage.class_augmentation:
            images.class_transforms(model.config, stage.augmentation, stage.class_augmentation, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None, target_match: dict | None = None,
                 **extra):
        """``target_match``: the fitted degradation of ``augmentation.match_target`` (``hfstage.adapt``)."""
        if model_config is None or not hasattr(model_config, "image_size"):
            raise DataError("image_classification needs an image model (model.type: timm) for its transforms")
        aug = stage.augmentation if (training and stage is not None) else None
        per_label = (images.class_transforms(model_config, aug or {}, stage.class_augmentation, f"stage '{stage.name}'")
                     if aug is not None and stage.class_augmentation else None)
        pre = None
        if aug and aug.get("match_target") and target_match:
            from hfstage.data.shift import MatchTarget

            pre = MatchTarget(target_match, aug["match_target"])
        return images.ImageCollator(images.image_transform(model_config, training, aug), aug, model_config.num_labels,
                                    per_label, pre)
