"""Does stacking pay when data are scarce? The stacking recipe on low-data MNIST pairs, end to end.

The bases of ``configs/pairs_stack.yaml`` (two quickstart CNNs with other seeds, a ResNet-encoder variant, the
adaptive-fusion CNN, and two non-neural bases: LightGBM and a logistic regression on pair features) train on the first 2,000
training pairs; the meta-learner (``meta: auto``) trains on their predictions of the first 1,000 validation
pairs and everything is scored on the full 10k test split. One command, the one a user types::

    hfstage train --config configs/pairs_stack.yaml data.max_train_samples=2000 meta_train_samples=1000 \\
        output_dir=runs/stack_low_data

    python bench/stack_low_data.py            # ~10 min on 2 CPU cores the first time (bases are then reused)
    python bench/stack_low_data.py --quick    # smoke mode on a tiny subset (a test runs it)

The last line is ``stack_gain_points: X``: the saved (chosen) stack's test accuracy minus the best single
base's (the one best on the meta-train split, the table's "best single" row), in points. The table goes to
docs/benchmarks.md (section ``stack_low_data``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_line, update_benchmarks  # noqa: E402


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data", default="data/mnist_pairs")
    parser.add_argument("--out", default="runs/stack_low_data")
    parser.add_argument("--train-pairs", type=int, default=2000)
    parser.add_argument("--meta-train-pairs", type=int, default=1000)
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # the recipes' relative data paths are relative to the repository root
    tmp = tempfile.TemporaryDirectory()
    data, out, extra = Path(args.data), Path(args.out), []
    if args.quick:
        from hfstage.data.prepare import prepare_mnist_pairs

        data, out = Path(tmp.name) / "data", Path(tmp.name) / "stack"
        prepare_mnist_pairs(data, train_pairs=300, val_pairs=200, test_pairs=200)
        extra = ["quick_test=true", "report_to=[none]"]
        args.train_pairs, args.meta_train_pairs = 300, 100
    elif not (data / "test_public.npz").is_file():
        subprocess.run([sys.executable, "-m", "hfstage", "prepare", "mnist-pairs", "--out", str(data)], check=True)
    command = ["hfstage", "train", "--config", "configs/pairs_stack.yaml", f"data.path={data}",
               f"data.max_train_samples={args.train_pairs}", f"meta_train_samples={args.meta_train_pairs}",
               f"output_dir={out}", *extra]
    subprocess.run([sys.executable, "-m", "hfstage", *command[1:]], check=True, stdout=subprocess.DEVNULL)
    result = json.loads((out / "stack.json").read_text())
    rows = result["methods"]
    best = next(r for r in rows if r["method"].startswith("best single"))
    chosen = next(r for r in rows if r.get("chosen"))
    gain = 100 * (chosen["test_accuracy"] - best["test_accuracy"])
    from hfstage.stacking import format_stack

    table = format_stack(result)
    print(table)
    if not args.quick:
        body = (f"{machine_line()}\n\n```\n{' '.join(command)}\n```\n\n"
                f"Bases train on the first {args.train_pairs} training pairs, the meta-learner on their predictions "
                f"of the first {args.meta_train_pairs} validation pairs; test: the {result['samples']['test']} test "
                "pairs. Seeds: the recipes' (quickstart 1 and 2, ResNet 5, fusion 42, LightGBM/logreg 42), "
                "meta-learner CV seed 0.\n\n```\n" + table + "\n```\n\n"
                f"Saved stack ({result['meta_learner']}) minus the best single base on test: {gain:+.2f} points "
                "(target: +2.0).")
        update_benchmarks("stack_low_data", "Stacking with scarce data (`bench/stack_low_data.py`)", body)
    tmp.cleanup()
    print(f"stack_gain_points: {gain:.2f}")
    return gain


if __name__ == "__main__":
    main()
