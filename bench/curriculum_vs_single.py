"""Curriculum quality: the 5-stage recipe vs ONE stage with the same total epochs, same data and seed.

Runs ``configs/sign_5stage.yaml`` (real JapaneseVowels clips) as written, and as a single stage
whose epochs are the sum of the five and whose lr is the recipe's first, for several seeds; reports
the test accuracy of each run's best stage as mean +- std. The last line is
``curriculum_minus_single_test_accuracy: <mean difference>``.

    python bench/curriculum_vs_single.py              # 3 seeds, ~4 min on 2 CPU cores
    python bench/curriculum_vs_single.py --quick      # smoke mode: 1 seed, quick_test
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402

RECIPE = ROOT / "configs/sign_5stage.yaml"


def best_test_accuracy(out: Path) -> float:
    from hfstage.experiments import load_run, metric_of

    run, records = load_run(out)
    best = next(r for r in records if r["stage_index"] == run["best_stage"])
    return metric_of(best, "test_accuracy")


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)

    from hfstage.config import load_config
    from hfstage.curriculum import run
    from hfstage.data.prepare import prepare_japanese_vowels

    os.chdir(ROOT)
    tmp = Path(tempfile.mkdtemp())
    data = Path("data/japanese_vowels")
    if args.quick:
        data = tmp / "data"
    if not (data / "test_public.npz").is_file():
        prepare_japanese_vowels(data)
    seeds = args.seeds[:1] if args.quick else args.seeds
    common = [f"data.path={data}", "report_to=[none]"] + (["quick_test=true"] if args.quick else [])
    recipe = load_config(RECIPE, common)
    total_epochs = sum(s.epochs for s in recipe.stages)
    first = recipe.stages[0]
    results: dict[str, list[float]] = {"5-stage curriculum": [], "single stage": []}
    for seed in seeds:
        out = tmp / f"curriculum_{seed}"
        run(load_config(RECIPE, [*common, f"seed={seed}", f"output_dir={out}"]))
        results["5-stage curriculum"].append(best_test_accuracy(out))
        single = tmp / f"single_{seed}"
        cfg = load_config(RECIPE, [*common, f"seed={seed}", f"output_dir={single}"])
        cfg.stages = [first]
        cfg.stages[0].epochs = total_epochs
        cfg.stages[0].name = "single"
        run(cfg)
        results["single stage"].append(best_test_accuracy(single))

    def summary(values):
        return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)

    rows = ["| method | test accuracy (mean +- std) | per seed |", "|---|---|---|"]
    for name, values in results.items():
        mean, std = summary(values)
        rows.append(f"| {name} | {mean:.4f} +- {std:.4f} | {', '.join(f'{v:.4f}' for v in values)} |")
        print(f"{name}: {mean:.4f} +- {std:.4f} over seeds {seeds}")
    diff = statistics.mean(results["5-stage curriculum"]) - statistics.mean(results["single stage"])
    if not args.quick:
        body = (f"{machine_line()}; `configs/sign_5stage.yaml` on JapaneseVowels (370 test clips) vs one stage of "
                f"{total_epochs:g} epochs at lr {first.lr:g} (the recipe's first stage, same total epochs), seeds {seeds}; "
                "each run's best stage.\n\n" + "\n".join(rows)
                + f"\n\nCurriculum minus single stage: {diff:+.4f}.")
        update_benchmarks("curriculum", "Curriculum vs one stage (`bench/curriculum_vs_single.py`)", body)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"curriculum_minus_single_test_accuracy: {diff:+.4f}")
    return diff


if __name__ == "__main__":
    main()
