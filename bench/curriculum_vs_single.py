"""Curriculum quality: a multi-stage recipe vs ONE stage with the same total epochs, same data and seed.

Runs a recipe as written, and as a single stage whose epochs are the sum of the recipe's and whose lr
is the recipe's first, for several seeds; reports the test accuracy of each run's best stage as
mean +- std. Two recipes: ``sign_5stage`` (real JapaneseVowels clips, the default) and ``quickstart``
(the 5-stage recipe on real MNIST pairs; best on a GPU). ``--jobs N`` trains N runs at once in
separate processes (one GPU holds several of these small runs side by side). The last line is
``curriculum_minus_single_test_accuracy: <mean difference>``.

    python bench/curriculum_vs_single.py                                  # sign_5stage, 3 seeds, ~4 min on 2 CPU cores
    python bench/curriculum_vs_single.py --recipe quickstart --jobs 6     # MNIST pairs, 3 seeds (a GPU: ~2 min)
    python bench/curriculum_vs_single.py --quick                          # smoke mode: 1 seed, quick_test
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

RECIPES = {
    # name: (config, data folder, data description, docs/benchmarks.md section)
    "sign_5stage": ("configs/sign_5stage.yaml", "data/japanese_vowels", "JapaneseVowels (370 test clips)", "curriculum"),
    "quickstart": ("configs/quickstart.yaml", "data/mnist_pairs", "MNIST pairs (10,000 test pairs)", "curriculum_pairs"),
}
METHODS = ("5-stage curriculum", "single stage")


def best_test_accuracy(out: Path) -> float:
    from hfstage.run_dir import RunDir

    return RunDir(out).best().metric("test_accuracy")


def single_stage(cfg):
    """The recipe's first stage, trained for the recipe's total epochs."""
    total_epochs = sum(s.epochs for s in cfg.stages)
    cfg.stages = [cfg.stages[0]]
    cfg.stages[0].epochs = total_epochs
    cfg.stages[0].name = "single"
    return cfg


def train_one(recipe: str, overrides: list[str], method: str, out: str) -> float:
    """One run (in a worker process when --jobs > 1); returns its best stage's test accuracy."""
    os.chdir(ROOT)
    from hfstage.config import load_config
    from hfstage.curriculum import run

    cfg = load_config(recipe, [*overrides, f"output_dir={out}"])
    run(single_stage(cfg) if method == "single stage" else cfg)
    return best_test_accuracy(Path(out))


def prepare(recipe: str, data: Path, quick: bool) -> None:
    if recipe == "sign_5stage":
        from hfstage.data.prepare import prepare_japanese_vowels

        prepare_japanese_vowels(data)
    else:
        from hfstage.data.prepare import prepare_mnist_pairs

        prepare_mnist_pairs(data, **({"train_pairs": 2000, "val_pairs": 500, "test_pairs": 500} if quick else {}))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="sign_5stage")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    args = parser.parse_args(argv)

    from hfstage.config import load_config

    os.chdir(ROOT)
    config, data_dir, described, section = RECIPES[args.recipe]
    tmp = Path(tempfile.mkdtemp())
    data = tmp / "data" if args.quick else Path(data_dir)
    if not (data / "test_public.npz").is_file():
        prepare(args.recipe, data, args.quick)
    seeds = args.seeds[:1] if args.quick else args.seeds
    common = [f"data.path={data}", "report_to=[none]"] + (["quick_test=true"] if args.quick else [])
    recipe = load_config(config, common)
    total_epochs = sum(s.epochs for s in recipe.stages)
    first = recipe.stages[0]
    jobs = [(method, seed) for seed in seeds for method in METHODS]
    calls = [(config, [*common, f"seed={seed}"], method, str(tmp / f"{method.split()[0]}_{seed}"))
             for method, seed in jobs]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            accuracies = list(pool.map(train_one, *zip(*calls)))
    else:
        accuracies = [train_one(*call) for call in calls]
    results: dict[str, list[float]] = {m: [] for m in METHODS}
    for (method, _), accuracy in zip(jobs, accuracies):
        results[method].append(accuracy)

    def summary(values):
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    rows = ["| method | test accuracy (mean +- std) | per seed |", "|---|---|---|"]
    for name, values in results.items():
        mean, std = summary(values)
        rows.append(f"| {name} | {mean:.4f} +- {std:.4f} | {', '.join(f'{v:.4f}' for v in values)} |")
        print(f"{name}: {mean:.4f} +- {std:.4f} over seeds {seeds}")
    diff = statistics.mean(results["5-stage curriculum"]) - statistics.mean(results["single stage"])
    if not args.quick:
        body = (f"{machine_line()}; `{config}` on {described} vs one stage of "
                f"{total_epochs:g} epochs at lr {first.lr:g} (the recipe's first stage, same total epochs), seeds {seeds}; "
                "each run's best stage.\n\n" + "\n".join(rows)
                + f"\n\nCurriculum minus single stage: {diff:+.4f}.")
        title = "Curriculum vs one stage" + (" on MNIST pairs" if args.recipe == "quickstart" else "")
        update_benchmarks(section, f"{title} (`bench/curriculum_vs_single.py`)", body)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"curriculum_minus_single_test_accuracy: {diff:+.4f}")
    return diff


if __name__ == "__main__":
    main()
