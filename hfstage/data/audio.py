"""Speech data for pronunciation assessment: a folder of WAV/FLAC clips and ``metadata.jsonl`` (or
``metadata.csv``) with one row per clip:

    {"path": "audio/train/x.wav", "split": "train", "canonical": "T I N k", "spoken": "s I N k",
     "labels": [1, 0, 0, 0]}

``canonical`` and ``spoken`` are space-separated phonemes; ``labels`` has one 0/1 per canonical phoneme
(1 = mispronounced). ``data.train_file`` / ``eval_file`` / ``test_file`` name values of the ``split``
column. Rows go through ``datasets`` (an ``Audio`` column, not decoded: files are read with
``soundfile`` and resampled to 16 kHz with scipy, which needs no system library). Every file is checked
when a split is loaded: missing, unreadable or empty audio, or a label list whose length differs from
the canonical phonemes, stops the run with an error naming the file and the line.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hfstage.data import check_augmentation
from hfstage.errors import ConfigError, DataError
from hfstage.registry import Registry

logger = logging.getLogger("hfstage")

SAMPLING_RATE = 16000
PAD, UNK = "<pad>", "<unk>"

# Augmentations (training only), each a strength
AUDIO_AUGMENTATIONS: Registry = Registry("speech augmentation")
AUDIO_AUGMENTATIONS.register("noise")("Gaussian noise, this fraction of the clip's standard deviation.")
AUDIO_AUGMENTATIONS.register("speed")("Speed perturbation: each clip played at a random rate within 1 ± this "
                                      "(tempo and pitch together, as sox's speed; 0.1 = the usual 0.9-1.1).")
AUDIO_AUGMENTATIONS.register("time_mask")("SpecAugment (mel_conformer encoder): two time masks, each up to this "
                                          "fraction of the clip.")
AUDIO_AUGMENTATIONS.register("freq_mask")("SpecAugment (mel_conformer encoder): two frequency masks, each up to this "
                                          "fraction of the mel bands.")
AUDIO_AUGMENTATIONS.register("vtlp")("Vocal tract length perturbation (mel_conformer encoder): each clip's frequency "
                                     "axis warped by a random factor within 1 ± this, the highest frequencies held "
                                     "(formants move, tempo does not; 0.1 = the usual 0.9-1.1).")
_LIMITS = {"noise": (0.0, 1.0), "speed": (0.0, 0.5), "time_mask": (0.0, 0.5), "freq_mask": (0.0, 0.5),
           "vtlp": (0.0, 0.3)}
# what the mel_conformer encoder does to its features in training: the batch carries their strengths
FEATURE_AUGMENTATIONS = ("time_mask", "freq_mask", "vtlp")


def check_audio_augmentation(augmentation: dict[str, float], where: str) -> None:
    if "gain" in augmentation:  # once offered, and silently without effect
        raise ConfigError(f"{where}.augmentation.gain: a random gain changes nothing here: every clip is scaled to zero "
                          "mean and unit variance before the encoder (the processor's do_normalize, and the "
                          "mel_conformer's per-clip normalisation); remove it (noise and speed do change the audio)")
    check_augmentation(AUDIO_AUGMENTATIONS, _LIMITS, augmentation, where)


@dataclass
class Clip:
    path: str
    canonical: list[str]
    spoken: list[str]
    labels: list[int]
    line: int
    seconds: float = 0.0
    row: tuple | None = None  # (datasets.Dataset, audio column, row) when the audio lives in a data set's files


def clips_from_dataset(dataset, columns: dict[str, str], where: str) -> list[Clip]:
    """The clips of a ``datasets`` split: an ``audio`` column (an ``Audio`` feature, file paths, raw bytes or
    ``{array, sampling_rate}``), ``canonical`` and ``spoken`` phonemes and ``labels`` (0/1 per canonical phoneme),
    each decoded by ``hfstage.data.fields`` and checked row by row; audio that lives in the data set stays there and
    is read when a batch needs it."""
    import datasets

    from hfstage.data.fields import phoneme_labels, phonemes
    from hfstage.data.sources import column_of

    datasets.disable_progress_bars()
    names = {f: column_of(dataset, f, columns, where) for f in ("audio", "canonical", "spoken", "labels")}
    if isinstance(dataset.features[names["audio"]], datasets.Audio):
        dataset = dataset.cast_column(names["audio"], datasets.Audio(decode=False))
    clips = []
    for batch_start, batch in enumerate(dataset.select_columns(list(names.values())).iter(batch_size=64)):
        for i in range(len(batch[names["audio"]])):
            row = batch_start * 64 + i
            at = f"{where}: row {row}"
            canonical = phonemes(batch[names["canonical"]][i], at, "canonical", names["canonical"])
            spoken = phonemes(batch[names["spoken"]][i], at, "spoken", names["spoken"])
            labels = phoneme_labels(batch[names["labels"]][i], at, "labels", names["labels"])
            check_clip_labels(canonical, labels, at, names)
            path, seconds, stored = audio_info(batch[names["audio"]][i], at, names["audio"])
            clips.append(Clip(path or f"row_{row}", canonical, spoken, labels, row, seconds,
                              (dataset, names["audio"], row) if stored else None))
    if not clips:
        raise DataError(f"{where}: no clips")
    return clips


def check_clip_labels(canonical: list[str], labels: list[int], at: str, names: dict[str, str]) -> None:
    if not canonical:
        raise DataError(f"{at}: empty {names['canonical']!r}")
    if len(labels) != len(canonical):
        raise DataError(f"{at}: {len(labels)} labels for {len(canonical)} canonical phonemes ({' '.join(canonical)})")


def audio_info(item, at: str, column: str) -> tuple[str | None, float, bool]:
    """(path or None, seconds, whether the audio is stored in the data set) of one audio value: an ``Audio``
    feature's ``{bytes, path}``, a path, raw bytes or ``{array, sampling_rate}``; unreadable audio is refused."""
    import io

    import soundfile

    from hfstage.data.fields import accepted

    if isinstance(item, dict) and item.get("array") is not None:
        rate = item.get("sampling_rate")
        if not isinstance(rate, (int, np.integer)) or rate < 1000:
            raise DataError(f"{at}: field 'audio' (column {column!r}): sampling_rate {rate!r} must be an integer >= 1000")
        n = len(item["array"])
        if n == 0:
            raise DataError(f"{at} ({column!r}): empty audio (0 samples)")
        return None, n / int(rate), True
    data = item.get("bytes") if isinstance(item, dict) else item if isinstance(item, (bytes, bytearray)) else None
    path = item.get("path") if isinstance(item, dict) else item if isinstance(item, str) else None
    if data is None and path is None:
        raise DataError(f"{at}: field 'audio' (column {column!r}) holds {type(item).__name__}; it accepts "
                        f"{accepted('audio')}")
    try:
        info = soundfile.info(io.BytesIO(data) if data else path)
    except Exception as exc:  # libsndfile reports many kinds
        raise DataError(f"{at} ({column!r}): not readable audio ({type(exc).__name__})") from None
    if info.frames == 0:
        raise DataError(f"{at} ({column!r}): empty audio (0 samples)")
    return path, info.frames / info.samplerate, bool(data)


def clip_wave(clip: Clip) -> np.ndarray:
    """A clip's audio, mono float32 at 16 kHz, from its file or from its data set's row."""
    if clip.row is None:
        return read_wave(clip.path)
    import io

    dataset, column, row = clip.row
    item = dataset[row][column]
    if isinstance(item, dict) and item.get("array") is not None:
        wave = np.asarray(item["array"], dtype=np.float32)
        return resample(wave.mean(axis=0) if wave.ndim == 2 else wave, int(item["sampling_rate"]))
    return read_wave(io.BytesIO(item["bytes"] if isinstance(item, dict) else item))


def read_metadata(root: Path) -> tuple[Path, list[dict]]:
    """(metadata file, rows with their line numbers) from ``metadata.jsonl`` or ``metadata.csv`` in ``root``."""
    jsonl, table = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.is_file():
        rows = []
        for line, text in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{jsonl}: line {line}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{jsonl}: line {line}: expected an object per line")
            rows.append({**row, "_line": line})
        return jsonl, rows
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as fh:
            return table, [{**row, "_line": line} for line, row in enumerate(csv.DictReader(fh), start=2)]
    raise DataError(f"{root}: no metadata.jsonl or metadata.csv (data.path)")


def metadata_keys(columns: dict[str, str] | None) -> dict[str, str]:
    """Field -> key of hfstage's own metadata rows: ``path``, ``split``, ``canonical``, ``spoken``, ``labels``, or
    what ``data.columns`` maps them to."""
    columns = columns or {}
    return {"audio": columns.get("audio", "path"), "split": columns.get("split", "split"),
            **{f: columns.get(f, f) for f in ("canonical", "spoken", "labels")}}


def _clip(row: dict, file: Path, root: Path, keys: dict[str, str]) -> Clip:
    from hfstage.data.fields import phoneme_labels, phonemes

    line = row["_line"]
    at = f"{file}: line {line}"
    for field, key in keys.items():
        if key not in row or row[key] in (None, ""):
            how = f"data.columns.{field}" if key != (field if field != "audio" else "path") else \
                f"the default; map it with data.columns.{field}"
            raise DataError(f"{at}: missing {key!r} for {field} ({how}); the row has: "
                            f"{', '.join(k for k in row if k != '_line')}")
    canonical = phonemes(row[keys["canonical"]], at, "canonical", keys["canonical"])
    spoken = phonemes(row[keys["spoken"]], at, "spoken", keys["spoken"])
    labels = phoneme_labels(row[keys["labels"]], at, "labels", keys["labels"])
    check_clip_labels(canonical, labels, at, keys)
    path = root / str(row[keys["audio"]])
    return Clip(str(path), canonical, spoken, labels, line)


def check_audio(clip: Clip, file: Path) -> None:
    import soundfile

    where = f"{file}: line {clip.line}: {clip.path}"
    if not Path(clip.path).is_file():
        raise DataError(f"{where}: audio file not found")
    try:
        info = soundfile.info(clip.path)
    except Exception as exc:  # libsndfile reports many kinds
        raise DataError(f"{where}: not readable audio ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if info.frames == 0:
        raise DataError(f"{where}: empty audio (0 samples)")
    if info.samplerate < 1000:
        raise DataError(f"{where}: sample rate {info.samplerate} Hz cannot be resampled to {SAMPLING_RATE} Hz")
    clip.seconds = info.frames / info.samplerate


def load_clips(root: Path, split: str, field: str, columns: dict[str, str] | None = None) -> list[Clip]:
    """The clips of one split, checked; ``columns`` (data.columns) maps the fields to the metadata's keys."""
    import datasets

    file, rows = read_metadata(root)
    keys = metadata_keys(columns)
    chosen = [r for r in rows if str(r.get(keys["split"])) == split]
    if not chosen:
        found = sorted({str(r.get(keys["split"])) for r in rows})
        raise DataError(f"{file}: no clips with {keys['split']} {split!r} ({field}; values there: {', '.join(found)})")
    clips = [_clip(r, file, root, keys) for r in chosen]
    for clip in clips:
        check_audio(clip, file)
    # the rows as a datasets table with an Audio column (not decoded: soundfile reads, scipy resamples)
    table = datasets.Dataset.from_dict({"audio": [c.path for c in clips]}).cast_column("audio", datasets.Audio(decode=False))
    for clip, item in zip(clips, table["audio"]):
        clip.path = item["path"]
    return clips


def read_wave(path) -> np.ndarray:
    """Mono float32 at 16 kHz."""
    import soundfile

    try:
        wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # checked at load time; a file changed since
        raise DataError(f"{path}: not readable audio ({type(exc).__name__})") from None
    return resample(wave.mean(axis=1), rate)


def resample(wave: np.ndarray, rate: int) -> np.ndarray:
    """A mono waveform at ``rate`` Hz as float32 at 16 kHz."""
    from scipy.signal import resample_poly

    if rate != SAMPLING_RATE:
        g = gcd(SAMPLING_RATE, rate)
        wave = resample_poly(wave, SAMPLING_RATE // g, rate // g)
    return np.asarray(wave, dtype=np.float32)


def build_vocabulary(clips: list[Clip]) -> dict[str, int]:
    """``<pad>`` (also the CTC blank) = 0, ``<unk>`` = 1, then the training split's phonemes, sorted."""
    phonemes = sorted({p for c in clips for p in c.canonical + c.spoken})
    return {PAD: 0, UNK: 1, **{p: i + 2 for i, p in enumerate(phonemes)}}


def make_processor(vocab: dict[str, int], folder: Path):
    """A ``Wav2Vec2Processor`` (phoneme CTC tokenizer + feature extractor); saved next to every stage."""
    from transformers import (
        Wav2Vec2FeatureExtractor,
        Wav2Vec2PhonemeCTCTokenizer,
        Wav2Vec2Processor,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = Wav2Vec2PhonemeCTCTokenizer(str(folder / "vocab.json"), do_phonemize=False, unk_token=UNK,
                                            pad_token=PAD, word_delimiter_token=None, phone_delimiter_token=" ",
                                            bos_token=None, eos_token=None)  # ids = the model's CTC classes
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


class AudioDataset(Dataset):
    """Decoded clips with their phoneme ids and error labels."""

    def __init__(self, clips: list[Clip], vocab: dict[str, int], limit: int | None = None):
        self.clips = clips[:limit] if limit is not None else clips
        self.vocab = vocab
        unk = vocab[UNK]
        self.y = np.array([int(any(c.labels)) for c in self.clips])  # any mispronunciation (for stratifying)
        self._ids = lambda phonemes: [vocab.get(p, unk) for p in phonemes]

    @property
    def ids(self) -> list[str]:
        return [Path(c.path).stem for c in self.clips]

    @property
    def lengths(self) -> list[int]:
        """Samples at 16 kHz (for ``group_by_length``)."""
        return [round(c.seconds * SAMPLING_RATE) for c in self.clips]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.clips[i]
        return {"wave": clip_wave(clip), "spoken": self._ids(clip.spoken), "canonical": self._ids(clip.canonical),
                "error_labels": clip.labels}


def change_speed(wave: np.ndarray, rate: float) -> np.ndarray:
    """The clip played ``rate`` times faster (shorter and higher for rate > 1), by linear interpolation."""
    n = max(1, round(len(wave) / rate))
    return np.interp(np.arange(n) * (len(wave) / n), np.arange(len(wave)), wave).astype(np.float32)


class AudioCollator:
    """Pads waves (normalised by the feature extractor, with an attention mask), CTC targets (-100), canonical
    phoneme ids (``<pad>``) with their mask, and error labels (-100)."""

    def __init__(self, feature_extractor, noise: float = 0.0, time_mask: float = 0.0, freq_mask: float = 0.0,
                 speed: float = 0.0, vtlp: float = 0.0):
        self.extractor = feature_extractor
        self.noise, self.speed = noise, speed
        self.spec_augment = (time_mask, freq_mask, vtlp) if time_mask or freq_mask or vtlp else None

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        waves = [s["wave"] for s in samples]
        if self.speed:
            waves = [change_speed(w, np.random.uniform(1 - self.speed, 1 + self.speed)) for w in waves]
        if self.noise:
            waves = [w + np.random.normal(0, self.noise * (w.std() + 1e-8), w.shape).astype(np.float32) for w in waves]
        feats = self.extractor(waves, sampling_rate=SAMPLING_RATE, padding=True, return_attention_mask=True,
                               return_tensors="pt")

        def pad(seqs, value, dtype):
            out = torch.full((len(seqs), max(1, max(len(s) for s in seqs))), value, dtype=dtype)
            for row, seq in enumerate(seqs):
                out[row, : len(seq)] = torch.tensor(seq, dtype=dtype)
            return out

        canonical = pad([s["canonical"] for s in samples], 0, torch.long)
        return {
            "input_values": feats["input_values"],
            "attention_mask": feats["attention_mask"],
            "canonical_ids": canonical,
            "canonical_mask": pad([[1] * len(s["canonical"]) for s in samples], 0, torch.long),
            "labels": pad([s["spoken"] for s in samples], -100, torch.long),
            "error_labels": pad([s["error_labels"] for s in samples], -100, torch.float),
            **({"spec_augment": torch.tensor(self.spec_augment)} if self.spec_augment else {}),
        }
