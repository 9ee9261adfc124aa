"""Does the sequence stack pay? ``configs/sequences_stack.yaml`` on the UCR/UEA sets aeon bundles.

For each set (``hfstage prepare aeon --dataset NAME``, as ``bench/sequences_long.py`` makes it) the stacking
recipe trains its four bases (GRU curriculum, InceptionTime, MiniRocket, LightGBM on summary statistics) in
5 folds of the training split and stacks their out-of-fold predictions (``--meta auto``); the table shows
every base, the best single base (chosen on the out-of-fold predictions) and the saved stack, on test.

    python bench/sequences_stack.py                                   # the five sets, ~45 min on 2 CPU cores
    python bench/sequences_stack.py --sets ArrowHead GunPoint         # some of them
    python bench/sequences_stack.py --quick                           # smoke mode: ItalyPowerDemand, quick_test, 2 folds

The last line is ``sequences_stack_min_gain_vs_best_base: X``: over the sets, the smallest margin (in
accuracy) of the saved stack over its best single base. The table goes to docs/benchmarks.md.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402
from sequences_long import SETS  # noqa: E402


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--runs", default="runs/sequences_stack")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    tmp = tempfile.TemporaryDirectory()
    sets = ["ItalyPowerDemand"] if args.quick else args.sets
    # the smoke run trains each base in 2 folds instead of 5 (8 trainings instead of 20)
    quick = ["quick_test=true", *(f"bases.{b}.folds=2" for b in ("gru", "inception", "minirocket", "lightgbm"))]
    extra = [*(quick if args.quick else []), "report_to=[none]"]
    runs = Path(tmp.name) if args.quick else Path(args.runs)
    from hfstage.data.prepare import prepare_aeon
    from hfstage.reporting import format_table

    rows, gains = [("set", "method", "oof_accuracy", "test_accuracy", "saved")], []
    for name in sets:
        data, out = runs / "data" / name, runs / name  # a fixed data.path: a rerun resumes the finished runs
        if not (data / "test_public.npz").is_file():
            prepare_aeon(data, seed=0, dataset=name)
        began = time.time()
        subprocess.run([sys.executable, "-m", "hfstage", "train", "--config", "configs/sequences_stack.yaml",
                        f"data.path={data}", f"output_dir={out}", *extra], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        seconds = time.time() - began
        methods = json.loads((out / "stack.json").read_text())["methods"]
        best = next(r for r in methods if r["method"].startswith("best single"))
        chosen = next(r for r in methods if r.get("chosen"))
        gains.append(chosen["test_accuracy"] - best["test_accuracy"])
        for r in methods:
            if r["method"].startswith(("base:", "best single")) or r.get("chosen"):
                rows.append((name, r["method"].replace(f"{out}/", ""), f"{r['cv_accuracy']:.4f}",
                             f"{r['test_accuracy']:.4f}", "*" if r.get("chosen") else ""))
        print(f"{name}: stack {chosen['test_accuracy']:.4f} ({chosen['meta']}), best base {best['test_accuracy']:.4f}, "
              f"{seconds:.0f} s", flush=True)
    table = format_table(rows)
    print(table)
    if not args.quick:
        body = (f"{machine_line()}\n\n```\npython bench/sequences_stack.py --sets {' '.join(sets)}\n```\n\n"
                "`configs/sequences_stack.yaml` as shipped (seeds: the recipes' 42, meta-learner CV seed 0), each base "
                "in 5 folds of the training split; `oof_accuracy`: on the out-of-fold predictions the meta-learner "
                "trains on (for the stack: its cross-validated accuracy there); `*`: the saved stack.\n\n"
                f"```\n{table}\n```\n\nSmallest margin of the saved stack over its best single base: {min(gains):+.4f}.")
        update_benchmarks("sequences_stack", "Stacking sequence models (`bench/sequences_stack.py`)", body)
    tmp.cleanup()
    print(f"sequences_stack_min_gain_vs_best_base: {min(gains):.4f}")
    return min(gains)


if __name__ == "__main__":
    main()
