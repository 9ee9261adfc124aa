"""Sequence recipes against the time-series references, on the UCR/UEA sets aeon bundles.

For each set (``hfstage prepare aeon --dataset NAME``: the official train split divided into train and val, the
official test split as test), side by side on the same splits:

- aeon's ``MiniRocketClassifier`` and 1-NN DTW (``KNeighborsTimeSeriesClassifier``), fitted on train + val (all
  the labelled data the recipes see), clips resampled to one length;
- ``configs/sign_5stage.yaml`` (the GRU curriculum), ``configs/sequences_long.yaml`` (the recommended recipe for
  long series) and ``configs/sequences_minirocket.yaml`` (MiniRocket as an hfstage base), each scored with
  ``hfstage evaluate RUN --split test --json`` (``metrics.accuracy``).

    python bench/sequences_long.py            # ~15 min on 2 CPU cores
    python bench/sequences_long.py --quick    # smoke mode: ItalyPowerDemand (the shortest), the references and the MiniRocket recipe

The last line is ``sequences_long_min_margin_vs_minirocket: X``: over the sets, the smallest margin (in
accuracy) of the best hfstage recipe over aeon's MiniRocket. The table goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

SETS = ("JapaneseVowels", "BasicMotions", "ArrowHead", "GunPoint", "ItalyPowerDemand")
RECIPES = {"sign_5stage (GRU curriculum)": "configs/sign_5stage.yaml",
           "sequences_long": "configs/sequences_long.yaml",
           "sequences_minirocket": "configs/sequences_minirocket.yaml"}


def load(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, L) clips resampled to the set's longest clip, and labels."""
    import torch  # noqa: F401  (the resampler lives with the estimator features)

    from hfstage.models.estimator import resample_valid

    data = np.load(folder / f"{split}.npz")
    mask = np.arange(data["x"].shape[1])[None, :] < data["lengths"][:, None]
    return resample_valid(data["x"], mask, data["x"].shape[1]).astype(np.float64), data["y"]


def references(folder: Path, seed: int) -> dict[str, float]:
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    x_tr, y_tr = (np.concatenate(a) for a in zip(load(folder, "train"), load(folder, "val")))
    x_te, y_te = load(folder, "test_public")
    out = {}
    for name, model in (("aeon MiniRocket", MiniRocketClassifier(random_state=seed)),
                        ("1-NN DTW", KNeighborsTimeSeriesClassifier(distance="dtw", n_neighbors=1))):
        began = time.time()
        model.fit(x_tr, y_tr)
        out[name] = (float((model.predict(x_te) == y_te).mean()), time.time() - began)
    return out


def recipe_accuracy(recipe: str, data: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    began = time.time()
    subprocess.run([sys.executable, "-m", "hfstage", "train", "--config", recipe, f"data.path={data}",
                    f"output_dir={out}", "report_to=[none]", *extra], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    seconds = time.time() - began
    shown = subprocess.run([sys.executable, "-m", "hfstage", "evaluate", str(out), "--split", "test", "--json"],
                           check=True, capture_output=True, text=True).stdout
    return json.loads(shown)["metrics"]["accuracy"], seconds


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", default="runs/sequences_long")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    tmp = tempfile.TemporaryDirectory()
    sets = ("ItalyPowerDemand",) if args.quick else SETS
    extra = ["quick_test=true"] if args.quick else []
    runs = Path(tmp.name) if args.quick else Path(args.runs)
    from hfstage.data.prepare import prepare_aeon

    rows, margins = [("set", "train/val/test", "method", "test_accuracy", "seconds")], []
    for name in sets:
        data = runs / "data" / name  # a fixed place: a rerun resumes the finished runs (same data.path)
        if not (data / "test_public.npz").is_file():
            prepare_aeon(data, seed=args.seed, dataset=name)
        sizes = "/".join(str(len(np.load(data / f"{s}.npz")["y"])) for s in ("train", "val", "test_public"))
        ref = references(data, args.seed)
        ours = {}
        for label, recipe in RECIPES.items() if not args.quick else list(RECIPES.items())[-1:]:
            ours[label] = recipe_accuracy(recipe, data, runs / name / Path(recipe).stem, extra)
        for label, (acc, seconds) in {**ref, **ours}.items():
            rows.append((name, sizes, label, f"{acc:.4f}", f"{seconds:.0f}"))
        margins.append(max(a for a, _ in ours.values()) - ref["aeon MiniRocket"][0])
        print(f"{name}: " + ", ".join(f"{k} {v[0]:.4f}" for k, v in {**ref, **ours}.items()), flush=True)
    from hfstage.reporting import format_table

    table = format_table(rows)
    print(table)
    if not args.quick:
        body = (f"{machine_line()}\n\n```\npython bench/sequences_long.py\n```\n\n"
                "Each set as `hfstage prepare aeon --dataset NAME` writes it (seed 0); the references are fitted on "
                "train + val, the recipes train on train, choose on val, and end with a stage on train + val "
                f"(`train_on_eval`; sign_5stage does not) (seeds: the recipes' 42, MiniRocket {args.seed}).\n\n```\n{table}\n```\n\nSmallest margin of the best hfstage recipe over aeon's "
                f"MiniRocket: {min(margins):+.4f}.")
        update_benchmarks("sequences_long", "Sequences against MiniRocket and 1-NN DTW (`bench/sequences_long.py`)",
                          body)
    tmp.cleanup()
    print(f"sequences_long_min_margin_vs_minirocket: {min(margins):.4f}")
    return min(margins)


if __name__ == "__main__":
    main()
