"""Train -> test domain shift of images: per-image statistics, how far two sets of images differ in each,
and the degradation (brightness/contrast, blur, noise) that moves training images toward a target's.

Statistics are computed on each image's luminance in [0, 1] (ITU-R 601 weights) at its own resolution
(images over ``MAX_SIDE`` pixels on their long side are shrunk first, so a 4k photo costs what a 512 one
does):

- ``brightness``: mean luminance; ``contrast``: its standard deviation;
- ``sharpness``: variance of the Laplacian (falls with blur, rises with noise);
- ``noise``: Immerkaer's estimate of the standard deviation of additive Gaussian noise (a 3x3 mask that
  cancels smooth image structure; J. Immerkaer, "Fast noise variance estimation", CVIU 1996);
- ``width``, ``height``, ``aspect`` (width / height);
- ``red_balance``, ``blue_balance``: mean red (blue) minus mean green, in [0, 1] units (0 for grey images).

Each statistic's shift is reported as the two-sample Kolmogorov-Smirnov statistic (0 = same distribution,
1 = disjoint; scale-free, so the statistics can be ranked) and as the difference of medians in units of
the training set's spread.

:func:`degrade` is the family of shifts hfstage can imitate: ``gain * blur(x, sigma) + offset``, then
Gaussian noise, clipped to [0, 1]. :func:`fit_degradation` finds its parameters for a target by
simulation on a sample of training images (the blur and noise levels on a grid, gain and offset solved to
match brightness and contrast, then corrected for clipping), so that the degraded training images have
the target's median brightness, contrast, sharpness and noise.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hfstage.errors import DataError

logger = logging.getLogger("hfstage")

MAX_SIDE = 512
STATISTICS = ("brightness", "contrast", "sharpness", "noise", "width", "height", "aspect", "red_balance",
              "blue_balance")
MATCHED = ("brightness", "contrast", "sharpness", "noise")  # what fit_degradation matches
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
BLUR_GRID = tuple(np.round(np.arange(0.0, 3.01, 0.25), 2))
NOISE_GRID = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3)


# the fixed shifts `hfstage prepare mnist-images --shift NAME` applies to the val and test images (degrade's
# parameters; the noise seeded per image), the target domains of bench/domain_shift.py
SHIFTS = {
    # another camera at dusk: darker, half the contrast, out of focus, sensor noise
    "dark-blur-noise": {"gain": 0.5, "offset": 0.05, "blur": 1.0, "noise": 0.08},
    # a washed-out scan: bright grey background, lower contrast, slightly soft, heavy noise
    "washed-noisy": {"gain": 0.6, "offset": 0.3, "blur": 0.6, "noise": 0.15},
}

# --------------------------------------------------------------------------------------------------
# reading images

def image_files(path: Path, where: str) -> list[str]:
    """Every image under a folder (class sub-folders included, sorted), or the paths of a ``path,label`` CSV."""
    from hfstage.data.images import IMAGE_EXTENSIONS, list_image_csv

    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return list_image_csv(path, where)[0]
    if not path.is_dir():
        raise DataError(f"{path}: no such folder of images ({where})")
    files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) ({where})")
    return files


def as_rgb(image) -> np.ndarray:
    """A PIL image as (H, W, 3) float32 in [0, 1]."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def read_rgb(path: str, where: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]; images larger than ``MAX_SIDE`` shrunk to it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if max(im.size) > MAX_SIDE:
                im.thumbnail((MAX_SIDE, MAX_SIDE))
            return as_rgb(im)
    except Exception as exc:  # PIL raises many kinds for broken files
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {exc}) ({where})") from None


def sample_files(files: list[str], limit: int | None, seed: int = 0) -> list[str]:
    if limit is None or len(files) <= limit:
        return files
    chosen = np.sort(np.random.default_rng(seed).permutation(len(files))[:limit])
    return [files[i] for i in chosen]


# --------------------------------------------------------------------------------------------------
# statistics

def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _LUMA


def noise_sigma(gray: np.ndarray) -> float:
    """Immerkaer's estimate of additive Gaussian noise's standard deviation (0 for images under 3x3)."""
    from scipy.signal import convolve2d

    h, w = gray.shape
    if h < 3 or w < 3:
        return 0.0
    response = np.abs(convolve2d(gray, _IMMERKAER, mode="valid")).sum()
    return float(response * np.sqrt(np.pi / 2) / (6 * (w - 2) * (h - 2)))


def sharpness(gray: np.ndarray) -> float:
    from scipy.ndimage import laplace

    return float(laplace(gray, mode="reflect").var())


def image_statistics(rgb: np.ndarray) -> dict[str, float]:
    gray = luminance(rgb)
    h, w = gray.shape
    means = rgb.reshape(-1, 3).mean(axis=0)
    return {"brightness": float(gray.mean()), "contrast": float(gray.std()), "sharpness": sharpness(gray),
            "noise": noise_sigma(gray), "width": float(w), "height": float(h), "aspect": w / h,
            "red_balance": float(means[0] - means[1]), "blue_balance": float(means[2] - means[1])}


def statistics_of(images) -> dict[str, np.ndarray]:
    """statistic -> (N,) values over an iterable of (H, W, 3) images."""
    rows = [image_statistics(im) for im in images]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in STATISTICS}


def folder_statistics(files: list[str], where: str) -> dict[str, np.ndarray]:
    return statistics_of(read_rgb(f, where) for f in files)


def summary(values: np.ndarray) -> dict[str, float]:
    q = np.percentile(values, [5, 50, 95])
    return {"mean": float(values.mean()), "std": float(values.std()), "p5": float(q[0]), "median": float(q[1]),
            "p95": float(q[2])}


def compare(source: dict[str, np.ndarray], target: dict[str, np.ndarray]) -> dict[str, dict]:
    """statistic -> {source, target (summaries), ks, ks_pvalue, shift}, most shifted (largest KS) first.

    ``shift`` is (target median - source median) / source spread (the standard deviation, or 1e-3 of the
    median when the source's values are all equal)."""
    from scipy.stats import ks_2samp

    out = {}
    for name in STATISTICS:
        a, b = source[name], target[name]
        same = np.ptp(np.concatenate([a, b])) == 0
        test = None if same else ks_2samp(a, b)
        spread = max(float(a.std()), 1e-3 * abs(float(np.median(a))), 1e-12)
        out[name] = {"source": summary(a), "target": summary(b),
                     "ks": 0.0 if same else float(test.statistic), "ks_pvalue": 1.0 if same else float(test.pvalue),
                     "shift": (float(np.median(b)) - float(np.median(a))) / spread}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ks"]))


# --------------------------------------------------------------------------------------------------
# the degradation family and its fit

def degrade(rgb: np.ndarray, gain: float = 1.0, offset: float = 0.0, blur: float = 0.0, noise: float = 0.0,
            rng: np.random.Generator | None = None) -> np.ndarray:
    """``clip(gain * blur(rgb, sigma=blur) + offset + N(0, noise^2), 0, 1)``; the noise is the same in every
    channel (luminance noise). (H, W, 3) float in [0, 1] -> same shape."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(rgb, sigma=(blur, blur, 0), mode="reflect") if blur > 0 else rgb
    out = out * gain + offset
    if noise > 0:
        rng = rng or np.random.default_rng()
        out = out + rng.normal(0.0, noise, out.shape[:2] + (1,)).astype(np.float32)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def scaled_degradation(params: dict[str, float], t: float) -> dict[str, float]:
    """The degradation ``t`` of the way from none (t = 0) to ``params`` (t = 1), or beyond (t > 1)."""
    return {"gain": max(0.0, 1.0 + t * (params["gain"] - 1.0)), "offset": t * params["offset"],
            "blur": max(0.0, t * params["blur"]), "noise": max(0.0, t * params["noise"])}


def _medians(stats: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([np.median(stats[k]) for k in MATCHED])


def fit_degradation(images: list[np.ndarray], target: dict[str, np.ndarray], seed: int = 0) -> dict:
    """The :func:`degrade` parameters that move ``images`` (a sample of training images) to the target's median
    brightness, contrast, sharpness and noise; with the medians reached, for the record."""
    source = statistics_of(images)
    goal = _medians(target)
    # each statistic's error in units of the two sets' spread (sharpness spans orders of magnitude: its log)
    scale = np.array([max(float(np.std(source[k]) + np.std(target[k])), 1e-4) for k in MATCHED[:2]] +
                     [max(float(np.std(np.log(source["sharpness"] + 1e-8)) + np.std(np.log(target["sharpness"] + 1e-8))), 0.05),
                      max(float(np.std(source["noise"]) + np.std(target["noise"])), 2e-3)])

    def distance(medians: np.ndarray) -> float:
        diff = medians - goal
        diff[2] = np.log(medians[2] + 1e-8) - np.log(goal[2] + 1e-8)
        return float(((diff / scale) ** 2).sum())

    def simulate(params: dict) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return _medians(statistics_of(degrade(im, rng=rng, **params) for im in images))

    def solve_affine(blur: float, noise: float) -> dict:
        blurred = [degrade(im, blur=blur) for im in images]
        gray = [luminance(b) for b in blurred]
        mean = float(np.median([g.mean() for g in gray]))
        std = float(np.median([g.std() for g in gray]))
        want_std = np.sqrt(max(goal[1] ** 2 - noise ** 2, 1e-6))
        gain = float(np.clip(want_std / max(std, 1e-4), 0.05, 5.0))
        return {"gain": gain, "offset": float(goal[0] - gain * mean), "blur": float(blur), "noise": float(noise)}

    best, best_distance = None, np.inf
    for blur in BLUR_GRID:
        for noise in NOISE_GRID:
            params = solve_affine(blur, noise)
            d = distance(simulate(params))
            if d < best_distance:
                best, best_distance = params, d
    for _ in range(3):  # clipping moves brightness and contrast: correct gain and offset on the simulation
        reached = simulate(best)
        gain = best["gain"] * goal[1] / max(reached[1], 1e-4)
        trial = {**best, "gain": float(np.clip(gain, 0.05, 5.0))}
        trial["offset"] = float(best["offset"] + goal[0] - simulate(trial)[0])
        d = distance(simulate(trial))
        if d >= best_distance:
            break
        best, best_distance = trial, d
    reached = simulate(best)
    return {**{k: round(v, 4) for k, v in best.items()},
            "source_medians": {k: float(v) for k, v in zip(MATCHED, _medians(source))},
            "target_medians": {k: float(v) for k, v in zip(MATCHED, goal)},
            "reached_medians": {k: float(v) for k, v in zip(MATCHED, reached)},
            "distance": round(best_distance, 4)}


class MatchTarget:
    """A training-time transform: with probability ``probability`` a PIL image is degraded toward the target,
    ``t ~ U(0.5, 1.5)`` of the way (so the training images span the target's spread around its median)."""

    def __init__(self, params: dict, probability: float = 1.0):
        self.params = {k: params[k] for k in ("gain", "offset", "blur", "noise")}
        self.probability = probability

    def __call__(self, image):
        from PIL import Image

        if np.random.random() >= self.probability:
            return image
        t = np.random.uniform(0.5, 1.5)
        out = degrade(as_rgb(image), rng=np.random.default_rng(np.random.randint(2**31)),
                      **scaled_degradation(self.params, t))
        return Image.fromarray(np.round(out * 255).astype(np.uint8), mode="RGB")


# --------------------------------------------------------------------------------------------------
# the report of `hfstage inspect-shift`

def inspect_shift(source: Path, target: Path, max_images: int | None = 2000, seed: int = 0):
    """(report, training statistics, target statistics) of two folders of images (at most ``max_images`` of
    each, a seeded random sample)."""
    source_files = sample_files(image_files(source, "--train-split"), max_images, seed)
    target_files = sample_files(image_files(target, "--target"), max_images, seed)
    logger.info("statistics of %d training and %d target images", len(source_files), len(target_files))
    a = folder_statistics(source_files, "--train-split")
    b = folder_statistics(target_files, "--target")
    return {"source": str(source), "target": str(target), "source_images": len(source_files),
            "target_images": len(target_files), "statistics": compare(a, b)}, a, b


def shift_table(report: dict) -> str:
    rows = [f"{'statistic':<13} {'train median':>13} {'target median':>14} {'shift (sd)':>11} {'KS':>6}"]
    for name, s in report["statistics"].items():
        rows.append(f"{name:<13} {s['source']['median']:>13.4g} {s['target']['median']:>14.4g} "
                    f"{s['shift']:>+11.2f} {s['ks']:>6.3f}")
    return "\n".join(rows)


def plot_shift(report: dict, source: dict[str, np.ndarray], target: dict[str, np.ndarray], path: Path,
               top: int = 4) -> None:
    """Histograms of the ``top`` most shifted statistics, training vs target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hfstage.checkpoint import atomic_write

    names = list(report["statistics"])[:top]
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        both = np.concatenate([source[name], target[name]])
        bins = np.linspace(both.min(), both.max() + 1e-12, 30)
        ax.hist(source[name], bins=bins, alpha=0.6, density=True, label="train")
        ax.hist(target[name], bins=bins, alpha=0.6, density=True, label="target")
        ax.set_title(f"{name} (KS {report['statistics'][name]['ks']:.2f})", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100), binary=True)
    plt.close(fig)
