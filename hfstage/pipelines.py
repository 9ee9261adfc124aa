"""transformers pipelines for hfstage's task kinds: score one sample (or a list) from Python.

Registered with transformers' ``PIPELINE_REGISTRY`` when hfstage is imported::

    import hfstage
    from transformers import pipeline

    same = pipeline("pair-classification", model="runs/quickstart/stage_5_polishing")
    same({"image_a": "a.png", "image_b": "b.png"})        # {'label': 'same', 'score': 0.97}

- ``pair-classification``: ``{"image_a": ..., "image_b": ...}``, each a PIL image, an array (uint8, or floats
  in [0, 1]) or a path -> ``{"label": "same" | "different", "score"}``.
- ``feature-sequence-classification``: a (T, F) array -> ``{"label": <class name>, "score"}``.
- ``pronunciation-assessment``: ``{"audio": path | waveform (16 kHz) | {"array", "sampling_rate"}, "canonical":
  "k ae t" | [phonemes]}`` -> the recognised phonemes and each canonical phoneme's mispronunciation probability.

Each pipeline turns its input into exactly the batch the task's own collator makes in training and evaluation
(so its numbers equal ``hfstage evaluate``'s per-sample predictions), with the settings the stage saved beside
its model (``preprocessor_config.json``; speech: the ``Wav2Vec2Processor`` files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.pipelines import Pipeline

from hfstage.errors import DataError

PROCESSOR_FILE = "preprocessor_config.json"


def save_processor(folder: Path, kind: str, **settings) -> None:
    """What a pipeline needs besides the model, written into a stage folder."""
    (Path(folder) / PROCESSOR_FILE).write_text(json.dumps({"hfstage_processor": kind, **settings}, indent=2) + "\n",
                                               encoding="utf-8")


class _StagePipeline(Pipeline):
    """A pipeline over one saved hfstage stage: nothing for transformers to load but the model."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def _sanitize_parameters(self, **kwargs):
        return {}, {}, {}

    def _stage_folder(self) -> Path:
        return Path(self.model.config.name_or_path)

    def _settings(self, kind: str) -> dict[str, Any]:
        path = self._stage_folder() / PROCESSOR_FILE
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return settings if settings.get("hfstage_processor") == kind else {}

    def _forward(self, model_inputs):
        with torch.no_grad():
            return self.model(**model_inputs)


class PairClassificationPipeline(_StagePipeline):
    """Two images -> same or different, with the probability of the label given."""

    def preprocess(self, inputs):
        from hfstage.data.npz_pairs import PairCollator

        if not isinstance(inputs, dict) or not {"image_a", "image_b"} <= set(inputs):
            raise DataError("pair-classification: give {'image_a': ..., 'image_b': ...} (a PIL image, an array or a path "
                            "each), or a list of such dicts")
        a, b = self._image(inputs["image_a"], "image_a"), self._image(inputs["image_b"], "image_b")
        if a.dtype != b.dtype:  # one uint8, one float: the uint8 one scaled as the collator would
            a, b = (x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32) for x in (a, b))
        pair = np.stack([a, b])
        batch = PairCollator()({"pixel_values": torch.from_numpy(pair)[None], "labels": torch.zeros(1)})
        return {"pixel_values": batch["pixel_values"]}

    def _image(self, image, name: str) -> np.ndarray:
        """One image (uint8, or floats in [0, 1]) in the layout the model was trained on: (H, W) or (C, H, W)."""
        from PIL import Image

        settings = self._settings("pairs")  # what the stage saved; older stages: the model config
        channels = int(settings.get("in_channels", self.model.config.in_channels))
        height, width = settings.get("image_size", self.model.config.image_size)
        if isinstance(image, (str, Path)):
            image = Image.open(image)
        if isinstance(image, Image.Image):
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            array = np.asarray(image)
            array = array if channels == 1 else array.transpose(2, 0, 1)
        else:
            array = np.asarray(image)
            if channels > 1 and array.ndim == 3 and array.shape[-1] == channels and array.shape[0] != channels:
                array = array.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
        wanted = (height, width) if channels == 1 else (channels, height, width)
        if array.shape != wanted:
            raise DataError(f"pair-classification: {name} has shape {array.shape}; this model takes {wanted} "
                            "(give a PIL image or a path to have it resized)")
        if array.dtype == np.uint8 or np.issubdtype(array.dtype, np.floating):
            return array  # the collator scales uint8 to [0, 1] as in training; floats are taken as they are
        raise DataError(f"pair-classification: {name} must be uint8 or float, got {array.dtype}")

    def postprocess(self, model_outputs):
        same = float(torch.sigmoid(model_outputs["logits"].reshape(-1)[0].float()))
        return {"label": "same", "score": same} if same > 0.5 else {"label": "different", "score": 1 - same}


class FeatureSequenceClassificationPipeline(_StagePipeline):
    """A (T, F) feature sequence -> its class (named as in training) and probability."""

    def preprocess(self, inputs):
        from hfstage.data.npz_sequences import SequenceCollator

        x = np.asarray(inputs, dtype=np.float32)
        features = int(self._settings("sequences").get("input_dim", self.model.config.input_dim))
        if x.ndim != 2 or x.shape[1] != features or len(x) == 0:
            raise DataError(f"feature-sequence-classification: expected a (T, {features}) array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DataError("feature-sequence-classification: the sequence holds NaN or Inf")
        batch = SequenceCollator()({"input_values": torch.from_numpy(x)[None], "lengths": torch.tensor([len(x)]),
                                    "labels": torch.zeros(1, dtype=torch.long)})
        return {"input_values": batch["input_values"], "attention_mask": batch["attention_mask"]}

    def postprocess(self, model_outputs):
        probs = torch.softmax(model_outputs["logits"][0].float(), dim=-1)
        best = int(probs.argmax())
        return {"label": str(self.model.config.id2label.get(best, best)), "score": float(probs[best])}


class PronunciationAssessmentPipeline(_StagePipeline):
    """A recording and the phonemes it should contain -> the phonemes heard, and for each canonical phoneme the
    probability that it was mispronounced."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        from transformers import Wav2Vec2Processor

        self.speech_processor = Wav2Vec2Processor.from_pretrained(self._stage_folder())

    def preprocess(self, inputs):
        from hfstage.data.audio import AudioCollator

        if not isinstance(inputs, dict) or not {"audio", "canonical"} <= set(inputs):
            raise DataError("pronunciation-assessment: give {'audio': path or waveform, 'canonical': 'k ae t'}")
        canonical = inputs["canonical"].split() if isinstance(inputs["canonical"], str) else list(inputs["canonical"])
        if not canonical:
            raise DataError("pronunciation-assessment: 'canonical' names no phoneme")
        vocab = self.speech_processor.tokenizer.get_vocab()
        unk = vocab[self.speech_processor.tokenizer.unk_token]
        # a phoneme the model never heard in training is <unk>, as in evaluation
        sample = {"wave": self._wave(inputs["audio"]), "canonical": [vocab.get(p, unk) for p in canonical],
                  "spoken": [], "error_labels": []}
        batch = AudioCollator(self.speech_processor.feature_extractor)([sample])
        inputs = {k: batch[k] for k in ("input_values", "attention_mask", "canonical_ids", "canonical_mask")}
        return {**inputs, "canonical": canonical}

    @staticmethod
    def _wave(audio) -> np.ndarray:
        from hfstage.data.audio import SAMPLING_RATE, read_wave, resample

        if isinstance(audio, (str, Path)):
            return read_wave(audio)
        if isinstance(audio, dict):
            return resample(np.asarray(audio["array"], dtype=np.float32), int(audio["sampling_rate"]))
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim != 1:
            raise DataError(f"pronunciation-assessment: a waveform is 1-D mono at {SAMPLING_RATE} Hz, got shape {wave.shape}")
        return wave

    def _forward(self, model_inputs):
        canonical = model_inputs.pop("canonical")
        out = super()._forward(model_inputs)
        return {"logits": out.logits, "error_logits": out.error_logits, "output_lengths": out.output_lengths,
                "acoustic_logits": out.get("acoustic_logits"), "canonical_ids": model_inputs["canonical_ids"],
                "canonical": canonical}

    def postprocess(self, model_outputs):
        """``recognized``: what the recogniser chosen on the eval split heard; per canonical phoneme its
        mispronunciation ``score`` and flag, and for a flagged one the ``diagnosis``: ``substitution`` with the
        phoneme ``heard``, or ``deletion`` (what the audio-only layer most likely heard instead); a phoneme outside
        the model's vocabulary (never heard in training) is not judged: ``assessed: False``, no score, never flagged;
        and the ``insertions`` in the sequence heard (``after``: how many canonical phonemes come before it)."""
        from hfstage.metrics.recognition import feedback
        from hfstage.metrics.speech import error_flags, error_probabilities
        from hfstage.tasks.speech import decisions, heard_names

        tokens = self.speech_processor.tokenizer.convert_ids_to_tokens
        length = int(model_outputs["output_lengths"][0])
        canonical = model_outputs["canonical"]
        acoustic = model_outputs["acoustic_logits"]
        threshold, recognizer, penalty = decisions(self.model.config)  # chosen on the eval split in training
        logits = model_outputs["error_logits"][0, : len(canonical)].float().cpu().numpy()
        flags, probs = error_flags(logits, threshold), error_probabilities(logits)
        ids = model_outputs["canonical_ids"][0, : len(canonical)].tolist()
        told = feedback([model_outputs["logits"][0, :length].float().cpu().numpy()],
                        None if acoustic is None else [acoustic[0, :length].float().cpu().numpy()],
                        [ids], [flags], recognizer, penalty)
        heard, diagnosis = told.heard[0], told.diagnosis(0)
        phonemes = []
        for p, i, f, q, (op, said) in zip(canonical, ids, flags, probs, diagnosis.phonemes):
            if i == self.model.config.unk_token_id:  # never heard in training: the model cannot judge it
                phonemes.append({"phoneme": p, "mispronounced": False, "score": None, "assessed": False})
                continue
            row = {"phoneme": p, "mispronounced": bool(f), "score": float(q)}
            if f:
                row["diagnosis"] = "substitution" if op == "sub" else "deletion"
                row["heard"] = tokens(int(said)) if op == "sub" else None
            phonemes.append(row)
        named = heard_names(tokens(heard), canonical, ids, self.model.config.unk_token_id)
        return {"recognized": named, "phonemes": phonemes,
                "insertions": [{"after": pos, "phoneme": tokens(int(p))} for pos, p in diagnosis.insertions]}


PIPELINES = {
    "pair-classification": PairClassificationPipeline,
    "feature-sequence-classification": FeatureSequenceClassificationPipeline,
    "pronunciation-assessment": PronunciationAssessmentPipeline,
}


def register_pipelines() -> None:
    """Make ``pipeline(task, model=stage_dir)`` know hfstage's tasks (called when hfstage is imported)."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    for task, cls in PIPELINES.items():
        if task not in PIPELINE_REGISTRY.get_supported_tasks():
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=cls, pt_model=AutoModel, type="multimodal")
