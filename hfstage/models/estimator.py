"""Non-neural base models: LightGBM, a logistic regression or any scikit-learn classifier on features the task
defines.

``model: {type: estimator, estimator: lightgbm|logreg|IMPORT.PATH, params: {...}, features: auto}`` is a model like any
other: the curriculum runs it as one stage with no gradient steps (``StageTrainer`` fits it on the training
split's features, LightGBM early-stopping on the eval split), evaluation, keep/skip, ``folds`` (out-of-fold
files), ``hfstage stack``, ``evaluate`` and the Hub treat it like the neural models. So a stack can mix bases
that disagree with the CNNs.

Features (``features``; ``auto`` picks the task's):

- ``pair_stats`` (pairs): for each image, its pixels average-pooled by ``pool`` and simple statistics (ink
  mean/std/fraction, centroid, spread, bounding box, row and column profiles); for the pair, ``|a - b|`` and
  ``a * b`` of both, plus their cosine similarity and distance. Symmetric in the two images.
- ``pair_patches`` (pairs): learned patch features (Coates & Ng's single-layer k-means network): ``centroids``
  k-means centroids of the training images' whitened ``patch_size`` x ``patch_size`` patches; each image's
  patches (every other pixel) are encoded by how much nearer than average they lie to each centroid
  ("triangle" activation) and summed over the image's four quadrants; for the pair, ``|a - b|`` and ``a * b`` of
  those, plus their cosine similarity and distance. The centroids and the whitening are fitted on the training
  split and saved with the model. Stronger than ``pair_stats`` where digits or shapes must be told apart
  (digits-pairs: 0.961 vs 0.9385 test accuracy with LightGBM).
- ``sequence_stats`` (sequences): per channel over the valid frames, mean, std, min, max, first, last, slope
  and mean absolute step; plus the clip's length.
- ``minirocket`` (sequences; aeon, the ``data`` extra): aeon's MiniRocket features (~10k PPV features of
  random dilated convolutions, fitted on the training split) of each clip's valid frames resampled to one
  length (MiniRocket needs equal lengths), plus the ``sequence_stats``. With ``estimator: logreg`` this is
  the MiniRocket classifier, with probabilities for stacking.

``estimator: sklearn.ensemble.ExtraTreesClassifier`` (any import path of a scikit-learn-style classifier with
``predict_proba``; ``params`` are its constructor arguments, checked against its signature; ``random_state``
defaults to the run's seed) needs skops (``pip install 'hfstage[sklearn]'``).

The fitted estimator is saved in ``model.safetensors`` like any weights (LightGBM's own text model as bytes,
the logistic regression's standardisation and coefficients as tensors, a scikit-learn estimator in skops'
format as bytes), so ``from_pretrained``, the Hub and ``hfstage evaluate`` load it with no pickle; a skops
file holding a type outside scikit-learn, NumPy, SciPy and the estimator's own package is refused on loading.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from hfstage.models.base import MODELS

ESTIMATORS = ("lightgbm", "logreg")
FEATURES = ("pair_stats", "pair_patches", "sequence_stats", "minirocket")
PAIR_FEATURES = ("pair_stats", "pair_patches")
PATCH_PARAMETERS = ("patch_mean", "patch_whitening", "patch_centroids")
MINIROCKET_PARAMETERS = ("mr_channels_per_combination", "mr_channel_indices", "mr_dilations",
                         "mr_features_per_dilation", "mr_biases")
LIGHTGBM_DEFAULTS = {"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20, "feature_fraction": 0.5,
                     "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "num_boost_round": 1000,
                     "early_stopping_rounds": 50}
LOGREG_DEFAULTS = {"C": 1.0, "max_iter": 2000}
TRUSTED_MODULES = ("sklearn", "numpy", "scipy", "builtins")  # what a saved scikit-learn estimator may hold


def lightgbm_threads() -> int:
    """LightGBM's OpenMP threads: 2, or fewer where this process has fewer (OMP_NUM_THREADS, a Ray task's CPUs, a
    launch's share of the cores: torch's thread count). Two processes that each spin more OpenMP threads than
    their share of the cores make LightGBM crawl (a 200-sample fit took 50 s instead of under one beside another
    busy process)."""
    return max(1, min(2, torch.get_num_threads()))


def sklearn_class(path: str, params: dict):
    """The scikit-learn-style classifier class an import path names, its ``params`` checked against its
    constructor; raises ValueError naming what is wrong."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"estimator {path!r}: cannot import it ({exc}); give lightgbm, logreg or the import path "
                         "of a scikit-learn classifier (e.g. sklearn.ensemble.ExtraTreesClassifier)") from None
    if not isinstance(cls, type) or not callable(getattr(cls, "fit", None)) or not hasattr(cls, "get_params"):
        raise ValueError(f"estimator {path!r} is not a scikit-learn estimator class (fit, get_params)")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(f"params: {path} takes {', '.join(sorted(accepted))}; not {', '.join(unknown)}")
    try:
        probe = cls(**params)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"params: {path}({params}) fails: {exc}") from None
    if not hasattr(probe, "predict_proba"):
        raise ValueError(f"estimator {path}: it gives no class probabilities (predict_proba) with these params, and "
                         "the task's logits and stacking need them; choose a probabilistic classifier or wrap it "
                         "(sklearn.calibration.CalibratedClassifierCV)")
    try:
        import skops.io  # noqa: F401
    except ImportError:
        raise ValueError(f"estimator {path}: saving a scikit-learn estimator without pickle needs skops: "
                         "pip install 'hfstage[sklearn]'") from None
    return cls


def load_sklearn(data: bytes, path: str):
    """A skops-saved estimator, refusing any type outside scikit-learn, NumPy, SciPy and ``path``'s package."""
    import skops.io as sio

    from hfstage.errors import CheckpointError

    allowed = (*TRUSTED_MODULES, path.split(".")[0])
    found = sio.get_untrusted_types(data=data)
    foreign = sorted(t for t in found if t.split(".")[0] not in allowed)
    if foreign:
        raise CheckpointError(f"this {path} estimator's saved state holds types outside {', '.join(allowed)} "
                              f"({', '.join(foreign[:5])}); refusing to load it")
    return sio.loads(data, trusted=found)


def _lightgbm_parameters() -> set[str] | None:
    """Every LightGBM parameter name and alias, as LightGBM itself lists them (None: this LightGBM cannot say)."""
    try:
        from lightgbm.basic import _ConfigAliases

        aliases = _ConfigAliases._get_all_param_aliases()
    except (ImportError, AttributeError):
        return None
    return set(aliases) | {a for names in aliases.values() for a in names} | {"num_boost_round", "early_stopping_rounds"}


class EstimatorConfig(PretrainedConfig):
    model_type = "hfstage_estimator"

    def __init__(self, estimator: str = "lightgbm", params: dict | None = None, features: str = "auto", pool: int = 2,
                 centroids: int = 128, patch_size: int = 6, image_size: list[int] | None = None, in_channels: int = 1,
                 input_dim: int | None = None, num_labels: int | None = None, state_shapes: dict | None = None,
                 seed: int = 0, **kwargs):
        if estimator not in ESTIMATORS and "." not in str(estimator):
            raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)} or the import path of a scikit-learn "
                             f"classifier, got {estimator!r}")
        known = image_size is not None or input_dim is not None  # not when a plan builds it without data
        if features == "auto" and known:
            features = "pair_stats" if image_size is not None else "sequence_stats"
        if features not in (*FEATURES, "auto"):
            raise ValueError(f"features must be auto or one of {', '.join(FEATURES)}, got {features!r}")
        if known and features in PAIR_FEATURES and image_size is None:
            raise ValueError(f"features {features}: the data are not image pairs")
        if known and features in ("sequence_stats", "minirocket") and input_dim is None:
            raise ValueError(f"features {features}: the data are not feature sequences")
        if features == "minirocket":
            try:
                import aeon  # noqa: F401
            except ImportError:
                raise ValueError("features minirocket needs aeon: pip install 'hfstage[data]'") from None
        if not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool must be a positive integer, got {pool!r}")
        if not isinstance(centroids, int) or isinstance(centroids, bool) or centroids < 2:
            raise ValueError(f"centroids must be an integer >= 2, got {centroids!r}")
        if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 2:
            raise ValueError(f"patch_size must be an integer >= 2, got {patch_size!r}")
        if features == "pair_patches" and image_size is not None and min(image_size[-2:]) < patch_size + 2:
            raise ValueError(f"patch_size {patch_size} needs images of at least {patch_size + 2} pixels a side, "
                             f"these are {image_size[-2]}x{image_size[-1]}")
        params = dict(params or {})
        allowed = LIGHTGBM_DEFAULTS if estimator == "lightgbm" else LOGREG_DEFAULTS
        if estimator not in ESTIMATORS:
            sklearn_class(estimator, params)
        elif estimator == "logreg":
            unknown = sorted(set(params) - set(allowed) - {"tol", "solver", "l1_ratio"})
            if unknown:
                raise ValueError(f"params: logreg takes {', '.join(sorted(allowed))}, tol, solver, l1_ratio; not "
                                 f"{', '.join(unknown)}")
        else:
            known = _lightgbm_parameters()
            unknown = sorted(set(params) - known) if known is not None else []
            if unknown:  # LightGBM itself would only warn and ignore them
                raise ValueError(f"params: {', '.join(unknown)} is not a LightGBM parameter (see its Parameters page)")
        self.estimator = estimator
        self.params = params
        self.features = features
        self.pool = pool
        self.centroids = centroids
        self.patch_size = patch_size
        self.image_size = list(image_size) if image_size is not None else None
        self.in_channels = in_channels
        self.input_dim = input_dim
        self.state_shapes = dict(state_shapes or {})  # buffer name -> [shape, dtype], set when fitted
        self.series_length = kwargs.pop("series_length", None)  # minirocket: clips are resampled to it
        self.minirocket_meta = kwargs.pop("minirocket_meta", None)  # minirocket: aeon's metadata of the fit
        self.boosting_rounds = kwargs.pop("boosting_rounds", None)  # lightgbm: the rounds the fit kept
        self.seed = seed
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)

    @property
    def binary(self) -> bool:
        return self.features in PAIR_FEATURES


@dataclass
class EstimatorOutput(ModelOutput):
    logits: torch.Tensor | None = None


# -- features ------------------------------------------------------------------------------------------


def _image_stats(x: np.ndarray) -> np.ndarray:
    """(N, H, W) in [0, 1] -> (N, S) statistics of each image."""
    n, h, w = x.shape
    mass = x.sum(axis=(1, 2)) + 1e-6
    rows, cols = np.arange(h, dtype=np.float32) / h, np.arange(w, dtype=np.float32) / w
    row_profile, col_profile = x.mean(axis=2), x.mean(axis=1)
    cy = (row_profile * w * rows).sum(1) / mass
    cx = (col_profile * h * cols).sum(1) / mass
    sy = np.sqrt(np.maximum((row_profile * w * (rows - cy[:, None]) ** 2).sum(1) / mass, 0))
    sx = np.sqrt(np.maximum((col_profile * h * (cols - cx[:, None]) ** 2).sum(1) / mass, 0))
    on = x > 0.2
    any_row, any_col = on.any(axis=2), on.any(axis=1)
    top = np.where(any_row.any(1), any_row.argmax(1), 0) / h
    bottom = np.where(any_row.any(1), h - 1 - any_row[:, ::-1].argmax(1), 0) / h
    left = np.where(any_col.any(1), any_col.argmax(1), 0) / w
    right = np.where(any_col.any(1), w - 1 - any_col[:, ::-1].argmax(1), 0) / w
    grad = np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2))
    stats = [x.mean((1, 2)), x.std((1, 2)), (x > 0.5).mean((1, 2)), cy, cx, sy, sx, top, bottom, left, right,
             bottom - top, right - left, grad]
    return np.concatenate([np.stack(stats, axis=1), row_profile, col_profile], axis=1).astype(np.float32)


def _grey(pixel_values: np.ndarray) -> np.ndarray:
    """(B, 2, H, W) or (B, 2, C, H, W) -> (B, 2, H, W) float32."""
    x = pixel_values.astype(np.float32)
    return x.mean(axis=2) if x.ndim == 5 else x


def _similarity(a: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
    """The pair's cosine similarity and distance, as (B, 1) columns."""
    cosine = (a * c).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(c, axis=1) + 1e-6)
    return [cosine[:, None], np.linalg.norm(a - c, axis=1)[:, None]]


def pair_stats(pixel_values: np.ndarray, pool: int) -> np.ndarray:
    """(B, 2, H, W) or (B, 2, C, H, W) in [0, 1] -> (B, F), symmetric in the two images."""
    x = _grey(pixel_values)
    b, _, h, w = x.shape
    hp, wp = h // pool, w // pool
    pooled = x[:, :, : hp * pool, : wp * pool].reshape(b, 2, hp, pool, wp, pool).mean(axis=(3, 5)).reshape(b, 2, -1)
    a, c = pooled[:, 0], pooled[:, 1]
    sa, sc = _image_stats(x[:, 0]), _image_stats(x[:, 1])
    return np.concatenate([np.abs(a - c), a * c, np.abs(sa - sc), sa * sc, np.minimum(sa, sc), np.maximum(sa, sc),
                           *_similarity(a, c)], axis=1).astype(np.float32)


def _patches(images: np.ndarray, size: int, stride: int) -> np.ndarray:
    """(N, H, W) -> (N, Ly, Lx, size * size), each patch normalised to zero mean and unit contrast."""
    view = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(1, 2))[:, ::stride, ::stride]
    p = view.reshape(*view.shape[:3], size * size)
    p = p - p.mean(-1, keepdims=True)
    return p / np.sqrt(p.var(-1, keepdims=True) + 0.01)


def fit_patch_features(pixel_values: np.ndarray, centroids: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """The whitening and the k-means centroids of ``pair_patches``, from training pairs (B, 2, ...)."""
    from sklearn.cluster import MiniBatchKMeans

    x = _grey(pixel_values)
    images = np.unique(x.reshape(-1, *x.shape[2:]), axis=0)  # an image in many pairs counts once
    rng = np.random.default_rng(seed)
    images = images[np.sort(rng.choice(len(images), min(len(images), 2000), replace=False))]
    p = _patches(images, size, 1).reshape(-1, size * size)
    p = p[rng.choice(len(p), min(len(p), 100_000), replace=False)].astype(np.float64)
    mean = p.mean(0)
    values, vectors = np.linalg.eigh(np.cov(p - mean, rowvar=False))
    whitening = vectors @ np.diag(1 / np.sqrt(np.maximum(values, 0) + 0.1)) @ vectors.T  # ZCA
    k = min(centroids, len(p))
    kmeans = MiniBatchKMeans(k, random_state=seed, n_init=3, batch_size=4096).fit((p - mean) @ whitening)
    return {"patch_mean": mean.astype(np.float32), "patch_whitening": whitening.astype(np.float32),
            "patch_centroids": kmeans.cluster_centers_.astype(np.float32)}


def pair_patches(pixel_values: np.ndarray, state: dict[str, np.ndarray], size: int) -> np.ndarray:
    """(B, 2, H, W) or (B, 2, C, H, W) -> (B, 8K + 2) with the fitted ``state`` (K centroids x 4 quadrants per
    image; ``|a - b|``, ``a * b``, cosine, distance), symmetric in the two images."""
    x = _grey(pixel_values)
    b = len(x)
    mean, whitening, centres = state["patch_mean"], state["patch_whitening"], state["patch_centroids"]
    out = []
    for start in range(0, b, 256):  # (images, positions, centroids) distances stay ~40 MB a block
        block = x[start:start + 256]
        z = (_patches(block.reshape(-1, *x.shape[2:]), size, 2) - mean) @ whitening
        n, ly, lx, _ = z.shape
        d2 = (z ** 2).sum(-1, keepdims=True) - 2 * z @ centres.T + (centres ** 2).sum(-1)
        d = np.sqrt(np.maximum(d2, 0))
        f = np.maximum(d.mean(-1, keepdims=True) - d, 0)  # the "triangle" encoding
        hy, hx = ly // 2, lx // 2
        quads = [f[:, :hy, :hx], f[:, :hy, hx:], f[:, hy:, :hx], f[:, hy:, hx:]]
        out.append(np.concatenate([q.sum((1, 2)) for q in quads], axis=1).reshape(len(block), 2, -1))
    q = np.concatenate(out)
    a, c = q[:, 0], q[:, 1]
    return np.concatenate([np.abs(a - c), a * c, *_similarity(a, c)], axis=1).astype(np.float32)


def resample_valid(x: np.ndarray, mask: np.ndarray, length: int) -> np.ndarray:
    """(B, T, F) padded clips -> (B, F, length): each clip's valid frames linearly resampled to ``length``."""
    out = np.zeros((len(x), x.shape[2], length), dtype=np.float32)
    target = np.linspace(0.0, 1.0, length)
    for i, n in enumerate(np.maximum(mask.sum(1).astype(int), 1)):
        source = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
        for c in range(x.shape[2]):
            out[i, c] = np.interp(target, source, x[i, :n, c]) if n > 1 else x[i, 0, c]
    return out


def sequence_stats(input_values: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """(B, T, F) with a (B, T) mask -> (B, 8F + 1): statistics of the valid frames only."""
    x = input_values.astype(np.float64)
    m = attention_mask.astype(bool)
    n = np.maximum(m.sum(1), 1)
    w = m[..., None].astype(np.float64)
    mean = (x * w).sum(1) / n[:, None]
    std = np.sqrt(np.maximum(((x - mean[:, None]) ** 2 * w).sum(1) / n[:, None], 0))
    big = np.where(m[..., None], x, np.inf)
    low = big.min(1)
    high = np.where(m[..., None], x, -np.inf).max(1)
    last = x[np.arange(len(x)), n - 1]
    t = np.arange(x.shape[1], dtype=np.float64)[None, :, None]
    t_mean = ((t * w).sum(1) / n[:, None])
    slope = (((t - t_mean[:, None]) * (x - mean[:, None]) * w).sum(1)
             / np.maximum(((t - t_mean[:, None]) ** 2 * w).sum(1), 1e-9))
    steps = np.abs(np.diff(x, axis=1)) * (m[:, 1:] & m[:, :-1])[..., None]
    step = steps.sum(1) / np.maximum(n - 1, 1)[:, None]
    feats = [mean, std, low, high, x[:, 0], last, slope, step, n[:, None].astype(np.float64)]
    return np.nan_to_num(np.concatenate(feats, axis=1), posinf=0.0, neginf=0.0).astype(np.float32)


# -- the model ---------------------------------------------------------------------------------------


@MODELS.register("estimator")
class EstimatorModel(PreTrainedModel):
    """A fitted LightGBM or logistic regression behind the interface of a neural model (see the module doc)."""

    config_class = EstimatorConfig
    fits_without_gradients = True

    def __init__(self, config: EstimatorConfig):
        super().__init__(config)
        self.main_input_name = "pixel_values" if config.features in PAIR_FEATURES else "input_values"
        for name, (shape, dtype) in config.state_shapes.items():
            self.register_buffer(name, torch.zeros(shape, dtype=getattr(torch, dtype)))
        # the logits' temperature (1: the estimator's own probabilities); also gives the model the floating
        # parameter transformers reads its dtype from
        self.temperature = torch.nn.Parameter(torch.ones(1), requires_grad=False)
        self._cache: tuple | None = None
        self.post_init()

    def _init_weights(self, module) -> None:  # nothing to initialise: fitted, not trained
        pass

    @property
    def fitted(self) -> bool:
        return bool(self.config.state_shapes)

    def _array(self, name: str) -> np.ndarray:
        """A fitted buffer as a host array (the Trainer moves the model, buffers included, to the accelerator)."""
        return getattr(self, name).detach().cpu().numpy()

    def features(self, pixel_values=None, input_values=None, attention_mask=None, **_) -> np.ndarray:
        if self.config.features == "pair_stats":
            return pair_stats(pixel_values.detach().float().cpu().numpy(), self.config.pool)
        if self.config.features == "pair_patches":
            state = getattr(self, "_pending", None) or {name: self._array(name) for name in PATCH_PARAMETERS}
            return pair_patches(pixel_values.detach().float().cpu().numpy(), state, self.config.patch_size)
        x, mask = input_values.detach().float().cpu().numpy(), attention_mask.detach().cpu().numpy()
        stats = sequence_stats(x, mask)
        if self.config.features == "sequence_stats":
            return stats
        series = resample_valid(x, mask, self.config.series_length)
        return np.concatenate([self._minirocket().transform(series).astype(np.float32), stats], axis=1)

    def fit_features(self, batches: list[dict]) -> None:
        """Fit what the features learn from the training split (MiniRocket's biases, the patch centroids) before
        they are computed."""
        if self.config.features == "pair_patches":
            x = np.concatenate([b["pixel_values"].float().cpu().numpy() for b in batches])
            self._pending = fit_patch_features(x, self.config.centroids, self.config.patch_size, self.config.seed)
            return
        if self.config.features != "minirocket":
            return
        from aeon.transformations.collection.convolution_based import MiniRocket

        x = [b["input_values"].float().cpu().numpy() for b in batches]
        mask = [b["attention_mask"].cpu().numpy() for b in batches]
        length = max(int(m.sum(1).max()) for m in mask)
        self.config.series_length = max(length, 9)  # MiniRocket's kernels are 9 long
        series = np.concatenate([resample_valid(a, m, self.config.series_length) for a, m in zip(x, mask)])
        transform = MiniRocket(random_state=self.config.seed).fit(series)
        self.config.minirocket_meta = {k: v for k, v in transform.metadata_.items()
                                       if isinstance(v, (int, float, bool, str, type(None)))}
        self.config.minirocket_meta["n_kernels_"] = int(transform.n_kernels_)
        self._pending = dict(zip(MINIROCKET_PARAMETERS, transform.parameters))
        self._transform = transform

    def _minirocket(self):
        transform = getattr(self, "_transform", None)
        if transform is None:
            from aeon.transformations.collection.convolution_based import MiniRocket

            transform = MiniRocket(random_state=self.config.seed)
            transform.parameters = tuple(self._array(name) for name in MINIROCKET_PARAMETERS)
            meta = dict(self.config.minirocket_meta)
            transform.n_kernels_ = meta.pop("n_kernels_")
            transform.metadata_ = meta
            transform._n_jobs = 1  # what fit() sets besides the above
            transform.is_fitted = True
            self._transform = transform
        return transform

    def _set_state(self, **arrays: np.ndarray) -> None:
        shapes = {}
        arrays = {**getattr(self, "_pending", {}), **arrays}  # fitted feature state (MiniRocket) is saved too
        for name, value in arrays.items():
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            self.register_buffer(name, tensor)
            shapes[name] = [list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]
        self.config.state_shapes = shapes
        self._cache = None

    def fit_estimator(self, x: np.ndarray, y: np.ndarray, x_eval: np.ndarray | None, y_eval: np.ndarray | None) -> dict:
        """Fit on the training features; returns what to log (the rounds LightGBM kept)."""
        cfg = self.config
        classes = 2 if cfg.binary else cfg.num_labels
        if cfg.estimator == "lightgbm":
            import lightgbm as lgb

            params = {**LIGHTGBM_DEFAULTS, **cfg.params}
            if not {"min_data_in_leaf", "min_child_samples", "min_data", "min_data_per_leaf"} & set(cfg.params):
                # a leaf of 20 samples cannot split a training set of tens (small time-series sets)
                params["min_data_in_leaf"] = min(20, max(2, len(x) // 10))
            rounds, patience = int(params.pop("num_boost_round")), int(params.pop("early_stopping_rounds"))
            if x_eval is None and cfg.boosting_rounds:
                rounds = cfg.boosting_rounds  # a refit (train_on_eval): the rounds the fit it starts from kept
            params.update({"objective": "binary"} if cfg.binary else {"objective": "multiclass", "num_class": classes})
            params.update({"seed": cfg.seed, "deterministic": True, "force_row_wise": True,
                           "num_threads": lightgbm_threads(), "verbose": -1})
            train = lgb.Dataset(x, y)
            sets, callbacks = [], []
            if x_eval is not None and patience > 0:
                sets = [lgb.Dataset(x_eval, y_eval, reference=train)]
                callbacks = [lgb.early_stopping(patience, verbose=False)]
            booster = lgb.train(params, train, num_boost_round=rounds, valid_sets=sets, callbacks=callbacks)
            text = booster.model_to_string(num_iteration=booster.best_iteration or None)
            self._set_state(booster=np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy())
            cfg.boosting_rounds = int(booster.best_iteration or booster.current_iteration())
            return {"boosting_rounds": cfg.boosting_rounds}
        if cfg.estimator not in ESTIMATORS:  # a scikit-learn classifier by import path, saved in skops' format
            import skops.io as sio

            cls = sklearn_class(cfg.estimator, cfg.params)
            params = dict(cfg.params)
            if "random_state" in inspect.signature(cls.__init__).parameters:
                params.setdefault("random_state", cfg.seed)
            model = cls(**params).fit(x, y)
            self._set_state(sklearn_model=np.frombuffer(sio.dumps(model), dtype=np.uint8).copy(),
                            classes=np.asarray(model.classes_, dtype=np.int64))
            return {k: int(np.max(getattr(model, k))) for k in ("n_iter_", "n_estimators_") if hasattr(model, k)}
        from sklearn.linear_model import LogisticRegression

        mean, std = x.mean(0), x.std(0)
        std = np.where(std > 1e-6, std, 1.0)  # a constant feature stays 0, whatever it is at test time
        model = LogisticRegression(**{**LOGREG_DEFAULTS, **cfg.params}).fit((x - mean) / std, y)
        coef = np.full((1 if cfg.binary else classes, x.shape[1]), 0.0)
        bias = np.full(len(coef), -1e4)  # a class absent from the training split is never predicted
        if cfg.binary:
            coef, bias = model.coef_, model.intercept_
        elif len(model.classes_) == 2:  # scikit-learn keeps one row for two classes: the second's log-odds
            coef[model.classes_[1]], bias[model.classes_[1]] = model.coef_[0], model.intercept_[0]
            bias[model.classes_[0]] = 0.0
        else:
            coef[model.classes_], bias[model.classes_] = model.coef_, model.intercept_
        self._set_state(mean=mean.astype(np.float32), std=std.astype(np.float32), coef=coef.astype(np.float32),
                        bias=bias.astype(np.float32))
        return {"iterations": int(np.max(model.n_iter_))}

    def _predictor(self):
        """(features -> probabilities), parsed once per fitted state."""
        key = tuple((id(b), b._version) for b in self.buffers())
        if self._cache is None or self._cache[0] != key:
            if self.config.estimator == "lightgbm":
                import lightgbm as lgb

                booster = lgb.Booster(model_str=self._array("booster").tobytes().decode("utf-8"))
                fn = booster.predict
            elif self.config.estimator not in ESTIMATORS:
                fn = self._sklearn_predictor()
            else:
                mean, std = self._array("mean"), self._array("std")
                coef, bias = self._array("coef").astype(np.float64), self._array("bias").astype(np.float64)

                def fn(x):
                    z = ((x - mean) / std) @ coef.T + bias
                    if self.config.binary:
                        return 1 / (1 + np.exp(-z[:, 0]))
                    z = np.exp(z - z.max(1, keepdims=True))
                    return z / z.sum(1, keepdims=True)
            self._cache = (key, fn)
        return self._cache[1]

    def _sklearn_predictor(self):
        model = load_sklearn(self._array("sklearn_model").tobytes(), self.config.estimator)
        classes = self._array("classes")
        width = 2 if self.config.binary else self.config.num_labels

        def fn(x):
            p = np.zeros((len(x), width))
            p[:, classes] = model.predict_proba(x)  # a class absent from the training split stays at 0
            return p[:, 1] if self.config.binary else p
        return fn

    def forward(self, labels=None, **inputs) -> EstimatorOutput:
        """The task's logits: one log-odds per pair, or C log-probabilities per sequence."""
        if not self.fitted:
            raise RuntimeError("this estimator model has not been fitted; train its stage first")
        p = np.asarray(self._predictor()(self.features(**inputs)), dtype=np.float64)
        p = np.clip(p, 1e-7, 1 - 1e-7)
        logits = np.log(p / (1 - p)) if self.config.binary else np.log(p)
        device = next(iter(v for v in inputs.values() if torch.is_tensor(v))).device
        logits = torch.as_tensor(logits, dtype=torch.float32, device=device)
        return EstimatorOutput(logits=logits / self.temperature)


AutoConfig.register(EstimatorConfig.model_type, EstimatorConfig)
AutoModel.register(EstimatorConfig, EstimatorModel)
