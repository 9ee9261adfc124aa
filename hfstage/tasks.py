"""Tasks: what binds a data kind to its collator, its stage augmentations and its metrics.

A new task is a data module plus an entry here; the curriculum engine is the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from hfstage.config import DataConfig, StageConfig
from hfstage.data import audio, images, npz_pairs, npz_sequences
from hfstage.data.sources import SplitRef, dataset_fingerprint, has_split, open_split, run_split_refs
from hfstage.errors import ConfigError, DataError
from hfstage.metrics import classification_metrics
from hfstage.registry import Registry

TASKS: Registry = Registry("task")


@dataclass
class Splits:
    train: Dataset
    eval: Dataset
    test: Dataset | None
    train_sha256: str | None = None  # what the training data was, when it came from Python objects (hfstage.train)
    eval_sha256: str | None = None  # likewise the eval split (a train_on_eval stage trains on it too)


def load_run_splits(task, data: DataConfig, fields=("train_file", "eval_file", "test_file"),
                    given: dict | None = None) -> dict[str, Dataset]:
    """The run's splits named by ``fields`` (of data.train_file/eval_file/test_file), by field, through
    ``task.load_split``; a ``datasets`` source without a ``test`` split runs without one unless ``data.test_file``
    names it. ``given``: data sets passed in from Python (see ``run_split_refs``)."""
    task.columns = dict(data.columns)
    sets = {}
    for field, ref in run_split_refs(data, given).items():
        if ref is None or field not in fields:
            continue
        if ref.dataset and field == "test_file" and data.test_file == DataConfig.test_file and not has_split(ref):
            continue
        limit = data.max_train_samples if field == "train_file" else data.max_eval_samples
        sets[field] = task.load_split(ref, ref.where, limit)
    return sets


def as_split_ref(split: SplitRef | Path, field: str) -> SplitRef:
    return split if isinstance(split, SplitRef) else SplitRef(str(Path(split).parent), Path(split).name, field)


def _no_class_augmentation(task, stage: StageConfig, where: str) -> None:
    if stage.class_augmentation:
        raise ConfigError(f"{where}.class_augmentation: class-wise augmentation strength is for image_classification, "
                          f"not {task.name}")


@TASKS.register("pair_classification")
class PairClassificationTask:
    """Same/different image pairs (``.npz`` files or any ``datasets`` source); one logit per pair; binary metrics."""

    name = "pair_classification"

    def __init__(self):
        self.columns: dict[str, str] = {}  # data.columns

    def load_split(self, split: SplitRef | Path, field: str = "data", limit: int | None = None) -> npz_pairs.PairDataset:
        """One split, validated; ``field`` names the config field in error messages."""
        ref = as_split_ref(split, field)
        if ref.dataset:
            return npz_pairs.PairDataset.from_dataset(open_split(ref), self.columns, f"{ref} ({field})", limit)
        dataset = npz_pairs.npz_as_dataset(ref.path, field)
        return npz_pairs.PairDataset.from_dataset(dataset, {}, f"{ref.path} ({field})", limit, checked=True)

    def load_splits(self, data: DataConfig, given: dict | None = None) -> Splits:
        sets = load_run_splits(self, data, given=given)
        train = sets["train_file"]
        refs = run_split_refs(data, given)
        for field, ds in sets.items():
            if ds.image_size != train.image_size:
                what = f"column {self.columns.get('pair', 'pair')!r}" if refs[field].dataset else "key 'x'"
                raise DataError(f"{refs[field]}: {what} has images of shape {ds.image_size} but {refs['train_file']} "
                                f"has {train.image_size} (data.{field})")
        return Splits(train=train, eval=sets["eval_file"], test=sets.get("test_file"))

    def model_args(self, splits: Splits) -> dict[str, Any]:
        """Arguments the model's config takes from the data (not from the recipe)."""
        return {"image_size": list(splits.train.image_size)}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        npz_pairs.check_pair_augmentation(stage.augmentation, where)
        _no_class_augmentation(self, stage, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None):
        return npz_pairs.PairCollator(stage.augmentation if (training and stage is not None) else None)

    @staticmethod
    def save_with_model(folder: Path, model_config) -> None:
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

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        preds, _ = self.decide(eval_pred.predictions)
        return classification_metrics(preds, np.asarray(eval_pred.label_ids), average="binary")


class MultiClassDecisions:
    """Softmax over C logits; macro-averaged metrics."""

    def decide(self, predictions) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs -> (predicted class, class probabilities (N, C)) per sample."""
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        logits = np.asarray(predictions, dtype=np.float64)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        return logits.argmax(axis=1), probs

    def compute_metrics(self, eval_pred) -> dict[str, float]:
        preds, _ = self.decide(eval_pred.predictions)
        return classification_metrics(preds, np.asarray(eval_pred.label_ids), average="macro")


@TASKS.register("sequence_classification")
class SequenceClassificationTask(MultiClassDecisions):
    """Feature clips (``.npz`` files or any ``datasets`` source); C-class logits; macro-averaged metrics."""

    name = "sequence_classification"

    def __init__(self):
        self.columns: dict[str, str] = {}  # data.columns
        self.classes: list[str] | None = None  # the training split's class names, for string labels

    def bind(self, model_config) -> None:
        """Use a trained model's classes for string labels of the splits loaded next."""
        names = getattr(model_config, "id2label", None) or {}
        if names and not all(str(v).startswith("LABEL_") for v in names.values()):
            self.classes = [names[i] for i in range(len(names))]

    def load_split(self, split: SplitRef | Path, field: str = "data",
                   limit: int | None = None) -> npz_sequences.SequenceDataset:
        ref = as_split_ref(split, field)
        if ref.dataset:
            return npz_sequences.SequenceDataset.from_dataset(open_split(ref), self.columns, f"{ref} ({field})",
                                                              self.classes, limit)
        dataset = npz_sequences.npz_as_dataset(ref.path, field)
        return npz_sequences.SequenceDataset.from_dataset(dataset, {}, f"{ref.path} ({field})", None, limit,
                                                          checked=True)

    def load_splits(self, data: DataConfig, given: dict | None = None) -> Splits:
        self.classes = None
        refs = run_split_refs(data, given)
        self.columns = dict(data.columns)
        train = self.load_split(refs["train_file"], refs["train_file"].where, data.max_train_samples)
        self.classes = train.classes
        sets = {"train_file": train, **load_run_splits(self, data, ("eval_file", "test_file"), given)}
        n_classes = self.num_labels(train)
        for field, ds in sets.items():
            where = refs[field]
            x, y = ((f"column {self.columns.get(f, f)!r}" for f in ("features", "label")) if where.dataset
                    else ("key 'x'", "key 'y'"))
            if ds.feature_dim != train.feature_dim:
                raise DataError(f"{where}: {x} has {ds.feature_dim} features per frame but {refs['train_file']} has "
                                f"{train.feature_dim} (data.{field})")
            if int(ds.y.max()) >= n_classes:
                raise DataError(f"{where}: {y} has class {int(ds.y.max())}, outside the {n_classes} classes "
                                f"of the training split (data.{field})")
        return Splits(train=train, eval=sets["eval_file"], test=sets.get("test_file"))

    @staticmethod
    def num_labels(train) -> int:
        return len(train.classes) if train.classes else int(train.y.max()) + 1

    def model_args(self, splits: Splits) -> dict[str, Any]:
        classes = splits.train.classes
        names = {"id2label": dict(enumerate(classes)), "label2id": {c: i for i, c in enumerate(classes)}} if classes else {}
        return {"input_dim": splits.train.feature_dim, "num_labels": self.num_labels(splits.train), **names}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        npz_sequences.check_sequence_augmentation(stage.augmentation, where)
        _no_class_augmentation(self, stage, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None):
        return npz_sequences.SequenceCollator(stage.augmentation if (training and stage is not None) else None)

    @staticmethod
    def save_with_model(folder: Path, model_config) -> None:
        """The feature-sequence-classification pipeline's settings: the feature count of a (T, F) sequence."""
        from hfstage.pipelines import save_processor

        save_processor(folder, "sequences", input_dim=model_config.input_dim)


@TASKS.register("image_classification")
class ImageClassificationTask(MultiClassDecisions):
    """Images from class folders, a ``path,label`` CSV or any ``datasets`` source (``image`` and ``label``
    columns); any timm backbone; macro-averaged metrics.

    ``data.train_file``/``eval_file``/``test_file`` name folders (or CSV files) under ``data.path``, or the
    splits of a ``datasets`` source.
    """

    name = "image_classification"

    def __init__(self):
        self.classes: list[str] | None = None
        self.skip_bad = False
        self.columns: dict[str, str] = {}  # data.columns

    def bind(self, model_config) -> None:
        """Use a trained model's classes (``id2label``) for the splits loaded next."""
        self.classes = [model_config.id2label[i] for i in range(model_config.num_labels)]

    def load_split(self, path: SplitRef | Path, field: str = "data", limit: int | None = None) -> images.ImageDataset:
        ref = as_split_ref(path, field)
        if ref.dataset:
            return images.ImageDataset.from_dataset(open_split(ref), self.columns, f"{ref} ({field})", self.classes,
                                                    limit, self.skip_bad)
        listed = images.load_image_list(ref.path, field, self.classes, self.skip_bad)
        return images.ImageDataset(listed, limit)

    def load_splits(self, data: DataConfig, given: dict | None = None) -> Splits:
        self.skip_bad = data.skip_bad_images
        self.columns = dict(data.columns)
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

    @staticmethod
    def with_labels(dataset: images.ImageDataset, chosen: np.ndarray, labels: np.ndarray) -> images.ImageDataset:
        """The ``chosen`` samples of ``dataset``, labelled ``labels``."""
        subset = images.ImageDataset(images.ImageList([dataset.paths[i] for i in chosen],
                                                      np.asarray(labels, dtype=np.int64), dataset.classes))
        return subset

    def model_args(self, splits: Splits) -> dict[str, Any]:
        classes = splits.train.classes
        return {"num_labels": len(classes), "id2label": dict(enumerate(classes)),
                "label2id": {c: i for i, c in enumerate(classes)}}

    def check_stage(self, stage: StageConfig, where: str) -> None:
        images.check_image_augmentation(stage.augmentation, where, stage.loss["type"])
        for name, factor in stage.class_augmentation.items():
            if factor < 0:
                raise ConfigError(f"{where}.class_augmentation.{name}: {factor} must be >= 0")

    def check_stage_model(self, stage: StageConfig, model, where: str) -> None:
        """Class names of ``class_augmentation`` exist in the model's classes."""
        if stage.class_augmentation:
            images.class_transforms(model.config, stage.augmentation, stage.class_augmentation, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None, target_match: dict | None = None):
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


@TASKS.register("speech_assessment")
class SpeechAssessmentTask:
    """Clips + canonical phonemes -> CTC phonemes and per-phoneme mispronunciation.

    ``data.path`` holds ``metadata.jsonl``; ``train_file``/``eval_file``/``test_file`` name its ``split``
    values. The phoneme vocabulary comes from the training split and is saved, as a ``Wav2Vec2Processor``,
    next to every stage. Stage augmentation: ``noise`` (Gaussian noise, fraction of the clip's std) and
    ``gain`` (random gain, +- dB).
    """

    name = "speech_assessment"
    label_names = ("labels", "error_labels")

    def __init__(self):
        self.vocab: dict[str, int] | None = None
        self.processor = None
        self.columns: dict[str, str] = {}  # data.columns

    def load_split(self, path: SplitRef | Path, field: str = "data", limit: int | None = None) -> audio.AudioDataset:
        ref = as_split_ref(path, field)
        if ref.dataset:
            clips = audio.clips_from_dataset(open_split(ref), self.columns, f"{ref} ({field})")
        else:
            clips = audio.load_clips(ref.path.parent, ref.path.name, field)
        if self.vocab is None:
            self.vocab = audio.build_vocabulary(clips)
        return audio.AudioDataset(clips, self.vocab, limit)

    def load_splits(self, data: DataConfig, given: dict | None = None) -> Splits:
        sets = load_run_splits(self, data, given=given)
        self._make_processor()
        return Splits(train=sets["train_file"], eval=sets["eval_file"], test=sets.get("test_file"))

    def _make_processor(self) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.processor = audio.make_processor(self.vocab, Path(tmp))

    @staticmethod
    def split_fingerprint(path: SplitRef | Path, field: str = "data") -> str:
        """SHA-256 of the metadata (which clip is in which split) and the bytes of the split's clips (a ``datasets``
        split: of its Arrow files)."""
        import hashlib

        from hfstage.checkpoint import fingerprint

        ref = as_split_ref(path, field)
        if ref.dataset:
            return dataset_fingerprint(open_split(ref))
        path = ref.path
        root = Path(path).parent
        meta, _ = audio.read_metadata(root)
        digest = hashlib.sha256(fingerprint(meta).encode())
        for clip in audio.load_clips(root, Path(path).name, field):
            digest.update(fingerprint(clip.path).encode())
        return digest.hexdigest()

    def data_fingerprint(self, data: DataConfig, field: str = "train_file") -> str:
        return self.split_fingerprint(run_split_refs(data)[field], f"data.{field}")

    def bind_stage(self, stage_dir: Path) -> None:
        """Read splits with a saved stage's processor: its feature extractor and its phoneme vocabulary."""
        from transformers import Wav2Vec2Processor

        self.processor = Wav2Vec2Processor.from_pretrained(stage_dir)
        self.vocab = self.processor.tokenizer.get_vocab()

    def evaluate_stage(self, checkpoint, path: Path, field: str, accelerator, batch_size: int = 32):
        """(metrics, one row per clip) of a saved stage on a split: loss, PER, error detection; the rows hold
        the reference and predicted phonemes and error flags. The task is bound to the stage (``bind_stage``, done by
        ``evaluation.checkpoint_task``)."""
        import torch
        from torch.utils.data import DataLoader

        from hfstage.losses.speech import CTCMispronunciationLoss
        from hfstage.metrics.speech import error_flags, greedy_decode, speech_metrics

        dataset = self.load_split(path, field)
        model = checkpoint.load_model().eval().to(accelerator.device)
        loader = DataLoader(dataset, batch_size=min(batch_size, 32), shuffle=False,
                            collate_fn=audio.AudioCollator(self.processor.feature_extractor))
        loss_fn, total, clips = CTCMispronunciationLoss(), 0.0, []
        with torch.no_grad():
            for batch in loader:
                labels, error_labels = batch.pop("labels"), batch.pop("error_labels")
                out = model(**{k: v.to(accelerator.device) for k, v in batch.items()})
                total += float(loss_fn(out, labels.to(accelerator.device), error_labels.to(accelerator.device))) * len(labels)
                acoustic = out.get("acoustic_logits")  # a recogniser that reads the canonical phonemes
                for i in range(len(labels)):
                    n, frames = int(batch["canonical_mask"][i].sum()), int(out.output_lengths[i])
                    clips.append((out.logits[i, :frames].float().cpu().numpy(),
                                  out.error_logits[i, :n].float().cpu().numpy(),
                                  labels[i][labels[i] >= 0].numpy(), error_labels[i, :n].numpy(),
                                  None if acoustic is None else acoustic[i, :frames].float().cpu().numpy()))

        def pad(arrays, value):
            shape = (len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:])
            out = np.full(shape, value, dtype=np.float64)
            for row, a in enumerate(arrays):
                out[row, : len(a)] = a
            return out

        threshold = float(getattr(model.config, "error_threshold", 0.5))  # chosen on the eval split when trained
        metrics = {"loss": total / max(1, len(dataset))}
        metrics.update(speech_metrics(pad([c[0] for c in clips], -100.0), np.array([len(c[0]) for c in clips]),
                                      pad([c[2] for c in clips], -100).astype(np.int64), pad([c[1] for c in clips], -100.0),
                                      pad([c[3] for c in clips], -100).astype(np.int64), threshold,
                                      None if clips[0][4] is None else pad([c[4] for c in clips], -100.0)))
        tokens = self.processor.tokenizer.convert_ids_to_tokens
        rows = [{"id": clip_id, "canonical": " ".join(c.canonical), "spoken": " ".join(c.spoken),
                 "predicted": " ".join(tokens(greedy_decode(ctc, len(ctc)))),
                 "labels": " ".join(str(v) for v in c.labels),
                 "predicted_labels": " ".join(str(int(v)) for v in error_flags(errs, threshold))}
                for clip_id, c, (ctc, errs, *_) in zip(dataset.ids, dataset.clips, clips)]
        return metrics, rows

    def save_with_model(self, folder: Path, model_config=None) -> None:
        """The Wav2Vec2Processor (feature extractor + phoneme vocabulary): model and processor reload together."""
        self.processor.save_pretrained(folder)

    def model_args(self, splits: Splits) -> dict[str, Any]:
        return {"vocab_size": len(self.vocab), "pad_token_id": self.vocab[audio.PAD]}

    @staticmethod
    def check_stage_model(stage: StageConfig, model, where: str) -> None:
        """SpecAugment masks act on the mel_conformer encoder's features (wav2vec2 has its own mask_time_prob)."""
        masks = [k for k in ("time_mask", "freq_mask") if stage.augmentation.get(k)]
        if masks and model.config.encoder.get("type") != "mel_conformer":
            raise ConfigError(f"{where}.augmentation.{masks[0]}: SpecAugment masks need model.encoder.type: "
                              "mel_conformer (a wav2vec2 encoder masks with its own encoder.mask_time_prob)")

    def check_stage(self, stage: StageConfig, where: str) -> None:
        if stage.loss["type"] != "ctc_mispronunciation":
            raise ConfigError(f"{where}.loss: speech_assessment trains with loss ctc_mispronunciation, not "
                              f"{stage.loss['type']}")
        audio.check_audio_augmentation(stage.augmentation, where)
        _no_class_augmentation(self, stage, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None):
        aug = stage.augmentation if (training and stage is not None) else {}
        return audio.AudioCollator(self.processor.feature_extractor, aug.get("noise", 0.0), aug.get("gain", 0.0),
                                   aug.get("time_mask", 0.0), aug.get("freq_mask", 0.0), aug.get("speed", 0.0))

    def decide(self, predictions):
        raise ConfigError("speech_assessment models predict phoneme sequences; evaluate them with their own metrics "
                          "(stacking and class decisions do not apply)")

    def compute_metrics(self, eval_pred, error_threshold: float = 0.5) -> dict[str, float]:
        from hfstage.metrics.speech import speech_metrics

        ctc_logits, error_logits, lengths = eval_pred.predictions[:3]
        acoustic = eval_pred.predictions[3] if len(eval_pred.predictions) > 3 else None  # ctc_context: canonical
        labels, error_labels = eval_pred.label_ids
        return speech_metrics(ctc_logits, lengths, labels, error_logits, error_labels, error_threshold, acoustic)

    @staticmethod
    def tuned_decision(metrics: dict) -> dict[str, float]:
        """The error flags' threshold chosen on the eval split at the stage's end (its best F1): saved in the model's
        config, and used for the test split, by ``evaluate`` and by the pipeline."""
        return {"error_threshold": float(metrics.get("eval_error_best_threshold", 0.5))}

    @staticmethod
    def error_rate(train: audio.AudioDataset) -> float:
        """The fraction of the training split's canonical phonemes that are mispronounced (``pos_weight: auto``)."""
        labels = [v for clip in train.clips for v in clip.labels]
        return sum(labels) / max(1, len(labels))
