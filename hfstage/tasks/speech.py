"""Speech: clips + canonical phonemes -> CTC phonemes and per-phoneme mispronunciation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hfstage.config import DataConfig, StageConfig
from hfstage.data import audio
from hfstage.data.sources import SplitRef, dataset_fingerprint, open_split, run_split_refs
from hfstage.errors import ConfigError
from hfstage.tasks.base import TASKS, CardFacts, Field, Splits, Task, as_split_ref, load_run_splits


def decisions(config) -> tuple[float, str | None, float | None]:
    """What a speech model's config says was chosen on the eval split: (error threshold, recogniser, edit penalty);
    a model saved before recognisers were chosen reports its own output layer."""
    from hfstage.metrics.recognition import PRIMARY

    return (float(getattr(config, "error_threshold", 0.5)), getattr(config, "recognizer", PRIMARY),
            getattr(config, "edit_penalty", None))


def heard_names(heard: list[str], canonical: list[str], canonical_ids, unk_id: int | None) -> list[str]:
    """The recognised phonemes with each ``<unk>`` named: the k-th one is the k-th canonical phoneme the model never
    heard in training (only a kept prompt phoneme is ``<unk>``: no recogniser proposes it), so "you said" shows what
    the learner was asked for there; left as ``<unk>`` when the counts differ."""
    unknown = [c for c, i in zip(canonical, canonical_ids) if int(i) == unk_id]
    if sum(h == audio.UNK for h in heard) != len(unknown):
        return list(heard)
    names = iter(unknown)
    return [next(names) if h == audio.UNK else h for h in heard]


@TASKS.register("speech_assessment")
class SpeechAssessmentTask(Task):
    """Clips + canonical phonemes -> CTC phonemes and per-phoneme mispronunciation.

    ``data.path`` holds ``metadata.jsonl``; ``train_file``/``eval_file``/``test_file`` name its ``split``
    values. The phoneme vocabulary comes from the training split and is saved, as a ``Wav2Vec2Processor``,
    next to every stage. Stage augmentation: ``noise`` (Gaussian noise, fraction of the clip's std), ``speed``
    (speed perturbation), SpecAugment masks (``time_mask``, ``freq_mask``) and ``vtlp`` (vocal tract length
    perturbation); the last three warp or mask the mel_conformer encoder's features.
    """

    name = "speech_assessment"
    fields = (
        Field("audio", "audio", help="the clip", own_key="path"),
        Field("canonical", "phonemes", help="the phonemes the learner should say"),
        Field("spoken", "phonemes", help="the phonemes said (the CTC target)"),
        Field("labels", "phoneme_labels", help="one 0/1 per canonical phoneme (1 = mispronounced)"),
    )
    source_keys = ("split",)  # metadata.jsonl/csv: the column naming each clip's split
    card = CardFacts("automatic-speech-recognition", "automatic-speech-recognition",
                     "Phoneme recognition and mispronunciation detection", "pronunciation-assessment",
                     'classify({"audio": "clip.wav", "canonical": "k ae t"})')
    label_names = ("labels", "error_labels", "canonical_ids")  # canonical_ids: for the prompt-aware PERs and MDD
    headline_metrics = ("per", "prompt_echo_per", "error_f1")  # the PER of echoing the prompt, beside the PER
    evaluates_own_outputs = True
    has_lengths = True

    def __init__(self):
        super().__init__()
        self.vocab: dict[str, int] | None = None
        self.processor = None

    def load_split(self, path: SplitRef | Path, field: str = "data", limit: int | None = None) -> audio.AudioDataset:
        ref = as_split_ref(path, field)
        if ref.dataset:
            clips = audio.clips_from_dataset(open_split(ref), self.columns, f"{ref} ({field})")
        else:
            clips = audio.load_clips(ref.path.parent, ref.path.name, field, self.columns)
        if self.vocab is None:
            self.vocab = audio.build_vocabulary(clips)
        return audio.AudioDataset(clips, self.vocab, limit)

    def load_splits(self, data: DataConfig, given: dict | None = None, model: dict | None = None) -> Splits:
        self.configure(data, model)
        sets = load_run_splits(self, data, given=given)
        self._make_processor()
        return Splits(train=sets["train_file"], eval=sets["eval_file"], test=sets.get("test_file"))

    def _make_processor(self) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.processor = audio.make_processor(self.vocab, Path(tmp))

    def split_fingerprint(self, path: SplitRef | Path, field: str = "data") -> str:
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
        for clip in audio.load_clips(root, Path(path).name, field, self.columns):
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
        from hfstage.metrics.recognition import diagnosis_text
        from hfstage.metrics.speech import error_flags, speech_evaluation

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
                                  None if acoustic is None else acoustic[i, :frames].float().cpu().numpy(),
                                  batch["canonical_ids"][i, :n].numpy()))

        def pad(arrays, value):
            shape = (len(arrays), max(len(a) for a in arrays), *arrays[0].shape[1:])
            out = np.full(shape, value, dtype=np.float64)
            for row, a in enumerate(arrays):
                out[row, : len(a)] = a
            return out

        # chosen on the eval split when the stage was trained (a model saved before: its own output layer)
        threshold, recognizer, penalty = decisions(model.config)
        metrics = {"loss": total / max(1, len(dataset))}
        scores, told = speech_evaluation(
            pad([c[0] for c in clips], -100.0), np.array([len(c[0]) for c in clips]),
            pad([c[2] for c in clips], -100).astype(np.int64), pad([c[1] for c in clips], -100.0),
            pad([c[3] for c in clips], -100).astype(np.int64), threshold,
            None if clips[0][4] is None else pad([c[4] for c in clips], -100.0),
            pad([c[5] for c in clips], -100).astype(np.int64), recognizer, penalty)
        metrics.update(scores)
        tokens = self.processor.tokenizer.convert_ids_to_tokens
        rows = []
        for i, (clip_id, c, (_, errs, *_, ids)) in enumerate(zip(dataset.ids, dataset.clips, clips)):
            what, inserted = diagnosis_text(told.diagnosis(i), lambda p: tokens(int(p)))
            what = " ".join("unassessed" if ids[j] == model.config.unk_token_id else said  # never heard in training
                            for j, said in enumerate(what.split()))
            heard = heard_names(tokens(told.heard[i]), c.canonical, ids, model.config.unk_token_id)
            rows.append({"id": clip_id, "canonical": " ".join(c.canonical), "spoken": " ".join(c.spoken),
                         "predicted": " ".join(heard), "labels": " ".join(str(v) for v in c.labels),
                         "predicted_labels": " ".join(str(int(v)) for v in error_flags(errs, threshold)),
                         "diagnosis": what, "insertions": inserted})
        return metrics, rows

    def save_with_model(self, folder: Path, model_config=None) -> None:
        """The Wav2Vec2Processor (feature extractor + phoneme vocabulary): model and processor reload together."""
        self.processor.save_pretrained(folder)

    def model_args(self, splits: Splits) -> dict[str, Any]:
        return {"vocab_size": len(self.vocab), "pad_token_id": self.vocab[audio.PAD],
                "unk_token_id": self.vocab[audio.UNK]}

    def check_stage_model(self, stage: StageConfig, model, where: str) -> None:
        """SpecAugment masks and VTLP act on the mel_conformer encoder's features (wav2vec2 reads the raw waveform and
        has its own mask_time_prob)."""
        masks = [k for k in audio.FEATURE_AUGMENTATIONS if stage.augmentation.get(k)]
        if masks and model.config.encoder.get("type") != "mel_conformer":
            what = "VTLP warps" if masks[0] == "vtlp" else "SpecAugment masks"
            raise ConfigError(f"{where}.augmentation.{masks[0]}: {what} the log-mel features of model.encoder.type: "
                              "mel_conformer; a wav2vec2 encoder reads the raw waveform (it masks with its own "
                              "encoder.mask_time_prob)")

    def check_stage(self, stage: StageConfig, where: str) -> None:
        if stage.loss["type"] != "ctc_mispronunciation":
            raise ConfigError(f"{where}.loss: speech_assessment trains with loss ctc_mispronunciation, not "
                              f"{stage.loss['type']}")
        audio.check_audio_augmentation(stage.augmentation, where)
        super().check_stage(stage, where)

    def collator(self, stage: StageConfig | None, training: bool, model_config=None, **extra):
        aug = stage.augmentation if (training and stage is not None) else {}
        return audio.AudioCollator(self.processor.feature_extractor, aug.get("noise", 0.0), aug.get("time_mask", 0.0),
                                   aug.get("freq_mask", 0.0), aug.get("speed", 0.0), aug.get("vtlp", 0.0))

    def decide(self, predictions):
        raise ConfigError("speech_assessment models predict phoneme sequences; evaluate them with their own metrics "
                          "(stacking and class decisions do not apply)")

    def compute_metrics(self, eval_pred, error_threshold: float = 0.5, recognizer: str | None = None,
                        edit_penalty: float | None = None) -> dict[str, float]:
        from hfstage.metrics.speech import speech_metrics

        ctc_logits, error_logits, lengths = eval_pred.predictions[:3]
        acoustic = eval_pred.predictions[3] if len(eval_pred.predictions) > 3 else None  # ctc_context: canonical
        labels, error_labels, canonical = eval_pred.label_ids
        return speech_metrics(ctc_logits, lengths, labels, error_logits, error_labels, error_threshold, acoustic,
                              canonical, recognizer, edit_penalty)

    def tuned_decision(self, metrics: dict) -> dict[str, Any]:
        """Chosen on the eval split at the stage's end, saved in the model's config, and used for the test split, by
        ``evaluate`` and by the pipeline: the error flags' threshold (its best F1) and the recogniser whose sequence
        is reported as heard (the lowest PER; metrics.recognition), with the prompt-aware decoder's edit penalty."""
        from hfstage.metrics.recognition import PER_KEYS, best_recognizer

        decision: dict[str, Any] = {"error_threshold": float(metrics.get("eval_error_best_threshold", 0.5))}
        rates = {name: metrics[f"eval_{key}"] for name, key in PER_KEYS.items() if f"eval_{key}" in metrics}
        if "prompt_aware" in rates:
            decision["recognizer"] = best_recognizer(rates)
            decision["edit_penalty"] = float(metrics["eval_edit_penalty"])
        return decision

    def error_rate(self, train: audio.AudioDataset) -> float:
        """The fraction of the training split's canonical phonemes that are mispronounced (``pos_weight: auto``)."""
        labels = [v for clip in train.clips for v in clip.labels]
        return sum(labels) / max(1, len(labels))
